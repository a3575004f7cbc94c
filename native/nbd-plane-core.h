// The NBD server's native data plane, without N-API: the threads that read
// requests, serve READ and WRITE on an image file, and send replies for one
// connection. nbd-plane.cc wraps it for JavaScript.
#ifndef VDISK_NATIVE_NBD_PLANE_CORE_H_
#define VDISK_NATIVE_NBD_PLANE_CORE_H_

#include <sys/uio.h>

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "nbd-cluster-map.h"
#include "nbd-wire.h"

namespace vdisk {
namespace nbd {

struct PlaneConfig {
  int sock = -1;  // owned by the plane from here on (non-blocking)
  int file = -1;  // owned too
  uint64_t size = 0;
  bool structured = false;
  bool writable = false;
  int max_threads = 1;
  size_t max_requests = 0;   // forwarded requests at once
  size_t max_buffered = 0;   // their bytes and their replies' bytes
  uint32_t max_native = 0;   // longest READ/WRITE the workers serve
  int64_t linger_ms = 0;
  // For a qcow2 export: where its clusters lie in `file`. READs of mapped
  // clusters, and WRITEs (without flags) of clusters it marks writable in
  // place, are served from it; other WRITEs are forwarded.
  std::shared_ptr<ClusterMap> map;
};

// What the plane tells JavaScript.
struct PlaneEvent {
  enum Kind { kRequest, kViolation, kClosed } kind = kRequest;
  Request req{};
  uint8_t* payload = nullptr;  // malloc'd WRITE payload; the taker frees it
  double charge = 0;           // bytes the request counts for until its reply
  std::string message;
};

struct PlaneStats {
  size_t in_flight;
  bool reading;
  size_t held;
  size_t peak;
  uint64_t mapped_reads;
  uint64_t mapped_writes;
};

class Plane {
 public:
  // `notify` runs on a plane thread whenever events become available.
  Plane(const PlaneConfig& cfg, const uint8_t* initial, size_t initial_length, std::function<void()> notify);
  ~Plane();
  Plane(const Plane&) = delete;
  Plane& operator=(const Plane&) = delete;
  // Starts the threads; 0 or the errno that kept them from starting.
  int Start();

  std::vector<PlaneEvent> TakeEvents();
  // A forwarded request's reply (malloc'd, taken over; nullptr when there was
  // no memory for it) and the charge that request came with.
  void Reply(uint8_t* data, size_t length, double charge);
  // Read no more requests; answer those in hand, then close.
  void Shutdown();
  // Close at once; replies not yet sent are dropped.
  void Destroy();
  // Destroy, stop waiting for JavaScript, and join every thread.
  void Stop();
  PlaneStats Stats();
  uint64_t Writes() const { return writes_.load(); }

 private:
  struct Slot {
    Request req;
    size_t at;  // where its headroom starts in the worker's buffer
    // Mapped (qcow2) requests: its host runs in WorkerState::hosts; the map
    // was entered for it and is left once its data is read or written.
    size_t host_at;
    size_t host_count;
  };
  struct Outgoing {
    uint8_t* data;
    size_t length;
  };
  struct Run {
    uint64_t offset;
    uint64_t length;
    bool data;
  };
  enum class Got { kOk, kEnd, kStopped };
  // What a worker keeps between batches.
  struct WorkerState {
    std::vector<uint8_t> buf;
    std::vector<Slot> batch;
    std::vector<struct iovec> iov;
    std::vector<uint8_t> headers;
    std::vector<ClusterMap::HostRun> hosts;
  };

  void Worker();
  bool TakeBatch(WorkerState* w);
  bool TakeOne(WorkerState* w, size_t* used);
  bool MoreBuffered(size_t count, size_t used);
  void ServeBatch(WorkerState* w);
  bool ServeRead(WorkerState* w, const Slot& s, bool alone);
  bool ReadMapped(WorkerState* w, const Slot& s, uint8_t* data);
  bool AddDataReply(WorkerState* w, const Request& r, uint8_t* data);
  bool MapRequest(WorkerState* w, const Request& r, size_t* host_at, size_t* host_count);
  bool ServeWrite(WorkerState* w, const Slot& s, const uint8_t* data);
  bool WriteAll(const uint8_t* data, uint64_t length, uint64_t offset);
  size_t FindRuns(const Request& r, Run* runs);
  void Demote(const Request& r, const uint8_t* data);
  void Forward(const Request& r, uint8_t* payload);
  bool ForwardCopy(const Request& r, const uint8_t* data);
  double Charge(const Request& r);
  bool Native(const Request& r) const;
  bool WaitForRoom();
  bool HasRoom() const;
  void NotePeak();
  size_t Held() const;

  Got Fill(size_t n);
  Got ReadExact(uint8_t* dst, size_t n);
  ssize_t RecvSome(uint8_t* dst, size_t n);
  bool WaitReadable();
  size_t Buffered() const { return in_tail_ - in_head_; }

  void Send(struct iovec* iov, size_t count);
  void Broke();
  void Sender();
  void Linger();
  bool Drained() const;

  void PushEvent(PlaneEvent&& e);
  void Violation(const std::string& message);
  void StopReading();
  void StopReadingLocked();
  void DestroyLocked();
  void WakeSenderIfEnding();

  const PlaneConfig cfg_;
  std::function<void()> notify_;
  int wake_read_ = -1;
  int wake_write_ = -1;

  // The reading side: whoever holds read_mu_ reads the next requests.
  std::mutex read_mu_;
  std::vector<uint8_t> in_;
  size_t in_head_ = 0;
  size_t in_tail_ = 0;
  std::atomic<size_t> input_{0};
  // Whoever holds write_mu_ sends whole replies.
  std::mutex write_mu_;
  std::atomic<bool> broken_{false};
  std::atomic<uint64_t> writes_{0};
  std::atomic<uint64_t> mapped_reads_{0};
  std::atomic<uint64_t> mapped_writes_{0};

  // Counts are atomics, so the hot path takes no lock; mu_ guards the waits
  // (for room, for the end), the outbox and the thread list.
  std::atomic<bool> stop_reading_{false};
  std::atomic<bool> destroyed_{false};
  std::atomic<int> alive_{0};
  std::atomic<int> busy_{0};
  std::atomic<size_t> in_flight_{0};
  std::atomic<size_t> forwarded_{0};
  std::atomic<size_t> held_{0};     // bytes of requests the workers serve
  std::atomic<size_t> pending_{0};  // bytes of forwarded requests and of replies not sent
  std::atomic<size_t> peak_{0};
  std::mutex mu_;
  std::condition_variable room_cv_;
  std::condition_variable sender_cv_;
  bool abandoned_ = false;
  bool sock_closed_ = false;
  std::deque<Outgoing> outbox_;
  std::vector<std::thread> workers_;
  std::thread sender_;
  bool started_ = false;
  bool joined_ = false;

  std::mutex ev_mu_;
  std::vector<PlaneEvent> events_;
};

}  // namespace nbd
}  // namespace vdisk

#endif  // VDISK_NATIVE_NBD_PLANE_CORE_H_
