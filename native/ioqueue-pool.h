// The threads behind IoQueue (ioqueue.cc) and the queues between them: no
// N-API here. ioqueue.cc's top comment says why the pool has the shape it has.
#ifndef VDISK_NATIVE_IOQUEUE_POOL_H_
#define VDISK_NATIVE_IOQUEUE_POOL_H_

#include <uv.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <vector>

namespace vdisk {

// What a request does: the bits of submit()'s `kinds` array.
enum Kind : uint8_t {
  kRead = 0,
  kWrite = 1,
  // O_DIRECT: every request waits for the device (RWF_NOWAIT does not refuse
  // it), and writes run in parallel there; without it, buffered writes are
  // serialised by the file system, so few run at a time.
  kDirect = 2,
  // A SEEK_DATA/SEEK_HOLE walk (datamap.h), alone, never with the bits above:
  // `data` holds doubles, the first one the walk's end on entry and the
  // answer on return; `offset` is where it starts; the result is the doubles
  // written. On the pool rather than the caller's thread for the same reason
  // reads are: on a dead mount it never returns.
  kMap = 4,
};

struct Request {
  Request(uint32_t id, int fd, Kind kind, uint8_t* data, size_t length, int64_t offset)
      : id(id), fd(fd), kind(kind), data(data), length(length), offset(offset) {}
  uint32_t id;
  int fd;
  Kind kind;
  uint8_t* data;
  size_t length;
  int64_t offset;
  double result = 0;  // bytes moved, or -errno
  // The caller gave up waiting for it (IoPool::Abandon).
  bool abandoned = false;
  // A piece of a large read (see IoPool::Split): the request it belongs to.
  Request* whole = nullptr;
  // On a request split into pieces: its pieces in file order, and how many
  // are still running.
  std::vector<Request*> pieces;
  std::atomic<size_t> pieces_left{0};
};

class IoPool {
 public:
  // Up to `max_threads` threads; `wake` is sent when finished requests are
  // ready for TakeDone.
  IoPool(int max_threads, uv_async_t* wake);

  // Queues `batch` (the pool owns the requests from here on), waking or
  // starting threads for it.
  void Submit(const std::vector<Request*>& batch);

  // The requests finished since the last call; the caller frees them.
  std::vector<Request*> TakeDone();

  // The caller stopped waiting for the requests with this id (its storage
  // did not answer in time): Stop will not wait for them.
  void Abandon(uint32_t id);

  // Ends the pool, which frees itself: queued requests are dropped, threads
  // finish the request in hand and exit, and `wake` is never sent again once
  // this returns. A thread stuck in an abandoned request (a dead NFS or FUSE
  // mount) is not waited for: it frees the pool when it exits, if ever.
  void Stop();

 private:
  ~IoPool() = default;
  void Split(Request* r, std::vector<Request*>* items) const;
  void Spawn();
  void Serve();
  void Complete(Request* r);
  static Request* Finish(Request* r);
  static void Discard(Request* r);
  bool WantThread() const;
  bool Runnable() const;
  bool OnlyAbandonedLeft() const;

  // Threads kept when idle (the rest retire after 10 s without work).
  static constexpr int kMinThreads = 2;
  // Submissions of at least this many bytes wake a thread per request.
  static constexpr size_t kWakeEachBytes = 256 * 1024;
  // Completions gathered per wake-up of the loop while the queue is long.
  static constexpr size_t kDeliverBatch = 8;
  // Buffered writes running at once: one in the kernel, one ready behind it.
  static constexpr int kBufferedWriters = 2;

  // Guards the submission side, the thread counts and `running_`.
  std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable gone_;
  std::deque<Request*> todo_;
  // Buffered writes waiting for one of the kBufferedWriters places.
  std::deque<Request*> held_;
  // Requests (or pieces) in a thread's hands.
  std::vector<Request*> running_;
  int writers_ = 0;
  int idle_ = 0;
  int alive_ = 0;
  // Threads waiting for a device (written under mu_; Complete reads it).
  std::atomic<int> blocked_{0};
  // Requests and pieces waiting for a thread (todo_ and held_; written under
  // mu_, read by Complete).
  std::atomic<size_t> queued_{0};
  // Threads that may run (not blocked) at once: the CPUs.
  const int cpus_;
  const int max_threads_;
  bool stopping_ = false;
  // Stop left threads behind: the last one to exit frees the pool.
  bool orphaned_ = false;
  // Guards the completion side, so finishing threads and the event loop do
  // not contend with submissions.
  std::mutex done_mu_;
  std::vector<Request*> done_;
  // An event-loop wake-up is due for done_ (uv_async_send was called).
  bool wake_due_ = false;
  // Stop has begun: completions are dropped, and `wake_` is not sent.
  bool closed_ = false;
  uv_async_t* const wake_;
};

}  // namespace vdisk

#endif  // VDISK_NATIVE_IOQUEUE_POOL_H_
