// The NBD server's native data plane (see nbd-plane.cc for why it exists).
//
// Worker threads take turns at the socket: whoever holds the read lock waits
// for input, then takes every whole request already buffered (up to a batch),
// releases the lock for the next worker, serves its batch with pread/pwrite
// on the image's descriptor and sends all the replies in one sendmsg. On a
// warm page cache that is a recv, a pread per request and a sendmsg per
// batch; nbdkit's threads do a recv and a send per request.
//
// Requests the workers do not serve are forwarded to JavaScript (events) and
// its replies come back through Reply(); a sender thread sends them. The
// write lock keeps each reply whole on the wire.
//
// Flow control: a worker holds one batch; forwarded requests and their
// replies count against the connection's limits, and no request is read while
// they are over them, so a client that never reads its replies stalls itself.
// Ending: DISC, the client's FIN, a protocol violation or Shutdown() stop the
// reading; once every request is answered the sender sends FIN, drops input
// until the client closes (or the linger time passes) and closes the socket.
#include "nbd-plane-core.h"

#ifndef _WIN32

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>

namespace vdisk {
namespace nbd {
namespace {

// Socket input buffered at once: a recv brings every header a client has
// pipelined (at depth 32, 32 x 28 bytes) and the payloads of small writes.
constexpr size_t kInputBuffer = 256 * 1024;
// Room in front of read data for the longest single header (structured: 20 + 8).
constexpr size_t kHeadroom = 32;
// As in commands.ts: shorter reads are not worth a look for holes.
constexpr uint32_t kSparseReadMin = 64 * 1024;
// Chunks one sparse read is cut into; the rest of the range goes as data.
constexpr size_t kMaxRuns = 64;
// Requests one worker takes at once, and their bytes: enough to answer a
// queue of small requests in one sendmsg, few enough that other workers still
// get requests to overlap with (a read that misses the page cache waits).
constexpr size_t kMaxBatch = 16;
constexpr size_t kBatchBytes = 128 * 1024;
// JavaScript's replies the sender gathers into one sendmsg.
constexpr size_t kMaxSenderBatch = 64;

}  // namespace

Plane::Plane(const PlaneConfig& cfg, const uint8_t* initial, size_t initial_length, std::function<void()> notify)
    : cfg_(cfg), notify_(std::move(notify)) {
  in_.resize(kInputBuffer);
  initial_length = std::min(initial_length, kInputBuffer);
  memcpy(in_.data(), initial, initial_length);
  in_tail_ = initial_length;
  input_ = initial_length;
}

int Plane::Start() {
  int pipefd[2];
  if (pipe(pipefd) != 0) return errno;
  fcntl(pipefd[0], F_SETFD, FD_CLOEXEC);
  fcntl(pipefd[1], F_SETFD, FD_CLOEXEC);
  wake_read_ = pipefd[0];
  wake_write_ = pipefd[1];
  alive_ = 1;
  {
    // The first worker may start another (under mu_) before this emplace is done.
    std::lock_guard<std::mutex> lock(mu_);
    workers_.emplace_back([this] { Worker(); });
  }
  sender_ = std::thread([this] { Sender(); });
  started_ = true;
  return 0;
}

Plane::~Plane() {
  Stop();
  for (auto& o : outbox_) free(o.data);
  for (auto& e : events_) free(e.payload);
  // Without Start() the socket is still ours to close; after it, the sender closed it.
  if (!started_) close(cfg_.sock);
  for (int fd : {cfg_.file, wake_read_, wake_write_}) {
    if (fd >= 0) close(fd);
  }
}

// ---- the JavaScript side's calls ------------------------------------------------------------

std::vector<PlaneEvent> Plane::TakeEvents() {
  std::vector<PlaneEvent> out;
  std::lock_guard<std::mutex> lock(ev_mu_);
  out.swap(events_);
  return out;
}

void Plane::Reply(uint8_t* data, size_t length, double charge) {
  std::lock_guard<std::mutex> lock(mu_);
  in_flight_--;
  forwarded_--;
  pending_ -= static_cast<size_t>(charge);
  if (!data) {
    // No memory for the copy: the client would wait for ever on this reply.
    broken_ = true;
    DestroyLocked();
  } else if (destroyed_ || broken_) {
    free(data);
  } else {
    pending_ += length;
    NotePeak();
    outbox_.push_back({data, length});
  }
  room_cv_.notify_all();
  sender_cv_.notify_all();
}

void Plane::Shutdown() { StopReading(); }

void Plane::Destroy() {
  std::lock_guard<std::mutex> lock(mu_);
  DestroyLocked();
}

void Plane::Stop() {
  if (!started_ || joined_) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    DestroyLocked();
    // Nobody will answer the forwarded requests any more.
    abandoned_ = true;
    sender_cv_.notify_all();
  }
  sender_.join();
  std::vector<std::thread> workers;
  {
    std::lock_guard<std::mutex> lock(mu_);
    workers.swap(workers_);
  }
  for (auto& t : workers) t.join();
  joined_ = true;
}

PlaneStats Plane::Stats() {
  bool can_read = busy_ < alive_ || alive_ < cfg_.max_threads;
  return {in_flight_, !stop_reading_ && HasRoom() && can_read, Held(), peak_, mapped_reads_, mapped_writes_};
}

// ---- counts -------------------------------------------------------------------------------------

bool Plane::HasRoom() const { return forwarded_ < cfg_.max_requests && pending_ < cfg_.max_buffered; }

size_t Plane::Held() const { return held_ + pending_ + input_.load(std::memory_order_relaxed); }

void Plane::NotePeak() {
  size_t now = Held();
  size_t seen = peak_.load(std::memory_order_relaxed);
  while (now > seen && !peak_.compare_exchange_weak(seen, now)) {
  }
}

bool Plane::WaitForRoom() {
  if (stop_reading_) return false;
  if (HasRoom()) return true;
  std::unique_lock<std::mutex> lock(mu_);
  room_cv_.wait(lock, [this] { return stop_reading_ || HasRoom(); });
  return !stop_reading_;
}

// After a count the end waits for went down: the sender looks again once
// reading has stopped (before that, nobody waits for it).
void Plane::WakeSenderIfEnding() {
  if (!stop_reading_) return;
  std::lock_guard<std::mutex> lock(mu_);
  sender_cv_.notify_all();
}

void Plane::StopReading() {
  std::lock_guard<std::mutex> lock(mu_);
  StopReadingLocked();
}

void Plane::StopReadingLocked() {
  if (!stop_reading_.exchange(true) && wake_write_ >= 0) {
    // Wakes the reader out of its poll; never drained, so every later poll
    // returns at once too.
    ssize_t n;
    do n = write(wake_write_, "x", 1);
    while (n < 0 && errno == EINTR);
  }
  room_cv_.notify_all();
  sender_cv_.notify_all();
}

void Plane::DestroyLocked() {
  destroyed_ = true;
  StopReadingLocked();
  // Wakes whatever waits on the socket, in either direction.
  if (!sock_closed_) shutdown(cfg_.sock, SHUT_RDWR);
}

void Plane::PushEvent(PlaneEvent&& e) {
  bool first;
  {
    std::lock_guard<std::mutex> lock(ev_mu_);
    first = events_.empty();
    events_.push_back(std::move(e));
  }
  if (first) notify_();
}

void Plane::Violation(const std::string& message) {
  PlaneEvent e;
  e.kind = PlaneEvent::kViolation;
  e.message = message;
  PushEvent(std::move(e));
  StopReading();
}

// ---- socket input (read_mu_ held) ---------------------------------------------------------

// False when reading must stop (shutdown, destroy).
bool Plane::WaitReadable() {
  struct pollfd p[2] = {{cfg_.sock, POLLIN, 0}, {wake_read_, POLLIN, 0}};
  for (;;) {
    int n = poll(p, 2, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return false;
    return (p[1].revents & POLLIN) == 0;
  }
}

// One recv into `dst`: bytes, 0 at end of input, -1 when reading must stop.
ssize_t Plane::RecvSome(uint8_t* dst, size_t n) {
  for (;;) {
    if (stop_reading_.load(std::memory_order_relaxed)) return -1;
    ssize_t k = recv(cfg_.sock, dst, n, 0);
    if (k >= 0) return k;
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return 0;
    if (!WaitReadable()) return -1;
  }
}

Plane::Got Plane::Fill(size_t n) {
  while (Buffered() < n) {
    if (in_tail_ + (n - Buffered()) > in_.size()) {
      memmove(in_.data(), in_.data() + in_head_, Buffered());
      in_tail_ -= in_head_;
      in_head_ = 0;
    }
    ssize_t k = RecvSome(in_.data() + in_tail_, in_.size() - in_tail_);
    if (k <= 0) return k == 0 ? Got::kEnd : Got::kStopped;
    in_tail_ += static_cast<size_t>(k);
    input_.store(Buffered(), std::memory_order_relaxed);
  }
  return Got::kOk;
}

// `n` bytes of payload: what is buffered, then straight from the socket.
Plane::Got Plane::ReadExact(uint8_t* dst, size_t n) {
  size_t have = std::min(n, Buffered());
  memcpy(dst, in_.data() + in_head_, have);
  in_head_ += have;
  input_.store(Buffered(), std::memory_order_relaxed);
  while (have < n) {
    ssize_t k = RecvSome(dst + have, n - have);
    if (k <= 0) return k == 0 ? Got::kEnd : Got::kStopped;
    have += static_cast<size_t>(k);
  }
  return Got::kOk;
}

// ---- socket output ------------------------------------------------------------------------

// Sends every byte of the iovecs (consumed on the way), or marks the connection broken.
void Plane::Send(struct iovec* iov, size_t count) {
  std::lock_guard<std::mutex> wl(write_mu_);
  while (count > 0 && !broken_) {
    struct msghdr m = {};
    m.msg_iov = iov;
    m.msg_iovlen = std::min<size_t>(count, IOV_MAX);
    ssize_t k = sendmsg(cfg_.sock, &m, MSG_NOSIGNAL);
    if (k < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        // A client that does not read: this worker waits, and with it its
        // batch's memory; the others stop when they get here too.
        struct pollfd p = {cfg_.sock, POLLOUT, 0};
        if (poll(&p, 1, -1) < 0 && errno != EINTR) Broke();
        continue;
      }
      Broke();
      return;
    }
    size_t sent = static_cast<size_t>(k);
    while (count > 0 && sent >= iov->iov_len) {
      sent -= iov->iov_len;
      iov++;
      count--;
    }
    if (count > 0) {
      iov->iov_base = static_cast<uint8_t*>(iov->iov_base) + sent;
      iov->iov_len -= sent;
    }
  }
}

void Plane::Broke() {
  broken_ = true;
  StopReading();
}

// ---- workers ------------------------------------------------------------------------------

// Whether the workers serve the request themselves; the rest goes to JavaScript.
bool Plane::Native(const Request& r) const {
  if (r.length == 0 || r.length > cfg_.max_native) return false;
  if (r.offset > cfg_.size || r.length > cfg_.size - r.offset) return false;
  if (r.type == kCmdRead) {
    uint16_t valid = kFlagFua | (cfg_.structured ? kFlagDf : 0);
    return (r.flags & ~valid) == 0;
  }
  // FUA writes are rare; JavaScript knows what each cache mode makes of them.
  // A probed raw image checks writes to sector 0, so those go there too.
  // With a cluster map (qcow2), only writes into clusters it marks writable in
  // place stay here (MapRequest); the rest may allocate: JavaScript does them.
  if (r.type != kCmdWrite || !cfg_.writable || r.flags != 0) return false;
  return cfg_.map || r.offset >= 512;
}

void Plane::Worker() {
  WorkerState w;
  for (;;) {
    w.batch.clear();
    bool go_on;
    {
      std::unique_lock<std::mutex> rl(read_mu_);
      go_on = TakeBatch(&w);
      if (!w.batch.empty()) {
        // Nobody is left to read the next requests: one more worker, up to the limit.
        int busy = ++busy_;
        if (go_on && busy == alive_ && alive_ < cfg_.max_threads) {
          std::lock_guard<std::mutex> lock(mu_);
          if (!stop_reading_) {
            alive_++;
            workers_.emplace_back([this] { Worker(); });
          }
        }
      }
    }
    if (!w.batch.empty()) {
      ServeBatch(&w);
      busy_--;
      WakeSenderIfEnding();
    }
    if (!go_on) break;
  }
  alive_--;
  std::lock_guard<std::mutex> lock(mu_);
  sender_cv_.notify_all();
}

// Under the read lock: the next request (waiting for it), then every whole one
// already buffered, up to a batch. Forwarded ones go to JavaScript at once.
// False when reading has stopped; the batch taken so far is still served.
bool Plane::TakeBatch(WorkerState* w) {
  w->hosts.clear();
  if (!WaitForRoom()) return false;
  size_t used = 0;
  size_t taken = 0;
  do {
    if (!TakeOne(w, &used)) return false;
    taken++;
  } while (MoreBuffered(taken, used));
  return true;
}

// Whether the next request is whole in the buffer and may join the batch.
bool Plane::MoreBuffered(size_t count, size_t used) {
  if (count >= kMaxBatch || Buffered() < kRequestSize || stop_reading_ || !HasRoom()) return false;
  Request r;
  if (!DecodeRequest(in_.data() + in_head_, &r)) return true;  // TakeOne reports it
  if (r.type == kCmdWrite && Buffered() < kRequestSize + r.length) return false;
  // Only small requests join a batch: each then has one reply header, in its headroom.
  return !Native(r) || (r.length < kSparseReadMin && used + kHeadroom + r.length <= kBatchBytes);
}

bool Plane::TakeOne(WorkerState* w, size_t* used) {
  Got got = Fill(kRequestSize);
  if (got != Got::kOk) {
    if (got == Got::kEnd) StopReading();
    return false;
  }
  Request r;
  if (!DecodeRequest(in_.data() + in_head_, &r)) {
    Violation("bad request magic");
    return false;
  }
  in_head_ += kRequestSize;
  input_.store(Buffered(), std::memory_order_relaxed);
  if (r.type == kCmdDisc) {
    StopReading();
    return false;
  }
  if (r.type == kCmdWrite && r.length > kMaxPayload) {
    Violation("write payload of " + std::to_string(r.length) + " bytes");
    return false;
  }
  size_t host_at = 0, host_count = 0;
  // A mapped read looks its clusters up now; a mapped write once its payload
  // is here, so a client slow to send it never holds the map (and with it
  // every request that must wait for the map to be idle).
  if (Native(r) && (!cfg_.map || r.type == kCmdWrite || MapRequest(w, r, &host_at, &host_count))) {
    size_t at = *used;
    *used += kHeadroom + r.length;
    if (w->buf.size() < *used) w->buf.resize(*used);
    uint8_t* data = w->buf.data() + at + kHeadroom;
    if (r.type == kCmdWrite) {
      got = ReadExact(data, r.length);
      if (got != Got::kOk) {
        if (got == Got::kEnd) StopReading();
        *used = at;
        return false;
      }
    }
    if (cfg_.map && r.type == kCmdWrite && !MapRequest(w, r, &host_at, &host_count)) {
      *used = at;
      return ForwardCopy(r, data);
    }
    w->batch.push_back({r, at, host_at, host_count});
    in_flight_++;
    held_ += r.length;
    NotePeak();
    return true;
  }
  uint8_t* payload = nullptr;
  if (r.type == kCmdWrite) {
    payload = static_cast<uint8_t*>(malloc(r.length > 0 ? r.length : 1));
    if (!payload) {
      Violation("no memory for a write payload of " + std::to_string(r.length) + " bytes");
      return false;
    }
    got = ReadExact(payload, r.length);
    if (got != Got::kOk) {
      free(payload);
      if (got == Got::kEnd) StopReading();
      return false;
    }
  }
  in_flight_++;
  Charge(r);
  NotePeak();
  Forward(r, payload);
  return true;
}

// A forwarded request holds its payload and, for a read, the data to come.
double Plane::Charge(const Request& r) {
  double charge = r.type == kCmdRead || r.type == kCmdWrite ? r.length : 0;
  forwarded_++;
  pending_ += static_cast<size_t>(charge);
  return charge;
}

// A write whose payload is in the worker's buffer, for JavaScript after all.
bool Plane::ForwardCopy(const Request& r, const uint8_t* data) {
  auto* payload = static_cast<uint8_t*>(malloc(r.length));
  if (!payload) {
    Violation("no memory for a write payload of " + std::to_string(r.length) + " bytes");
    return false;
  }
  memcpy(payload, data, r.length);
  in_flight_++;
  Charge(r);
  NotePeak();
  Forward(r, payload);
  return true;
}

void Plane::Forward(const Request& r, uint8_t* payload) {
  PlaneEvent e;
  e.kind = PlaneEvent::kRequest;
  e.req = r;
  e.payload = payload;
  e.charge = r.type == kCmdRead || r.type == kCmdWrite ? r.length : 0;
  PushEvent(std::move(e));
}

// A request that failed here goes to JavaScript, which runs it again through
// the block layer and reports its error in its own words.
void Plane::Demote(const Request& r, const uint8_t* data) {
  uint8_t* payload = nullptr;
  if (r.type == kCmdWrite) {
    payload = static_cast<uint8_t*>(malloc(r.length));
    if (payload) memcpy(payload, data, r.length);
  }
  held_ -= r.length;
  if (r.type == kCmdWrite && !payload) {
    // Without its payload the write cannot be retried: end the connection
    // rather than answer it wrongly.
    in_flight_--;
    broken_ = true;
    std::lock_guard<std::mutex> lock(mu_);
    DestroyLocked();
    return;
  }
  Charge(r);
  Forward(r, payload);
}

void Plane::ServeBatch(WorkerState* w) {
  w->iov.clear();
  const bool alone = w->batch.size() == 1;
  for (const Slot& s : w->batch) {
    const Request& r = s.req;
    uint8_t* data = w->buf.data() + s.at + kHeadroom;
    if (r.type == kCmdRead) {
      if (!ServeRead(w, s, alone)) continue;
    } else {
      if (!ServeWrite(w, s, data)) {
        Demote(r, data);
        continue;
      }
      // Counted before the reply leaves: a request the client sends after
      // seeing it finds the count moved.
      writes_.fetch_add(1);
      EncodeSimpleReply(data - kSimpleReplySize, r, 0);
      w->iov.push_back({data - kSimpleReplySize, kSimpleReplySize});
    }
    // Done; its reply is the socket's to take now.
    in_flight_--;
    held_ -= r.length;
  }
  if (!w->iov.empty()) Send(w->iov.data(), w->iov.size());
}

// Reads the request's data and adds its reply to the batch's iovecs; false
// when the read failed (the request was demoted).
bool Plane::ServeRead(WorkerState* w, const Slot& s, bool alone) {
  const Request& r = s.req;
  uint8_t* data = w->buf.data() + s.at + kHeadroom;
  if (s.host_count > 0) {
    if (!ReadMapped(w, s, data)) return false;
    return AddDataReply(w, r, data);
  }
  Run runs[kMaxRuns];
  size_t count = 1;
  runs[0] = {r.offset, r.length, true};
  if (alone && cfg_.structured && !(r.flags & kFlagDf) && r.length >= kSparseReadMin) count = FindRuns(r, runs);
  for (size_t i = 0; i < count; i++) {
    if (!runs[i].data) continue;
    uint8_t* dst = data + (runs[i].offset - r.offset);
    uint64_t done = 0;
    while (done < runs[i].length) {
      ssize_t k = pread(cfg_.file, dst + done, runs[i].length - done, static_cast<off_t>(runs[i].offset + done));
      if (k < 0 && errno == EINTR) continue;
      if (k < 0) {
        Demote(r, nullptr);
        return false;
      }
      if (k == 0) {
        // Past the end of the file (the tail of its last sector): zeros, as a hole.
        memset(dst + done, 0, runs[i].length - done);
        break;
      }
      done += static_cast<uint64_t>(k);
    }
  }
  if (!cfg_.structured || (count == 1 && runs[0].data)) return AddDataReply(w, r, data);
  // One chunk per run (a hole may be all of it), DONE on the last; a sparse
  // read is alone in its batch, so the headers have the worker's array to themselves.
  constexpr size_t kHeader = kChunkHeaderSize + 12;
  w->headers.resize(count * kHeader);
  for (size_t i = 0; i < count; i++) {
    const Run& run = runs[i];
    uint16_t flags = i + 1 == count ? kReplyFlagDone : 0;
    uint8_t* h = w->headers.data() + i * kHeader;
    if (run.data) {
      EncodeChunk(h, r, flags, kReplyOffsetData, static_cast<uint32_t>(8 + run.length));
      Put64(h + kChunkHeaderSize, run.offset);
      w->iov.push_back({h, kChunkHeaderSize + 8});
      w->iov.push_back({data + (run.offset - r.offset), run.length});
    } else {
      EncodeChunk(h, r, flags, kReplyOffsetHole, 12);
      Put64(h + kChunkHeaderSize, run.offset);
      Put32(h + kChunkHeaderSize + 8, static_cast<uint32_t>(run.length));
      w->iov.push_back({h, kChunkHeaderSize + 12});
    }
  }
  return true;
}

// A read's reply with all its data: a simple reply, or one OFFSET_DATA chunk,
// its header in the headroom before the data.
bool Plane::AddDataReply(WorkerState* w, const Request& r, uint8_t* data) {
  if (!cfg_.structured) {
    EncodeSimpleReply(data - kSimpleReplySize, r, 0);
    w->iov.push_back({data - kSimpleReplySize, kSimpleReplySize + r.length});
    return true;
  }
  uint8_t* h = data - kChunkHeaderSize - 8;
  EncodeChunk(h, r, kReplyFlagDone, kReplyOffsetData, 8 + r.length);
  Put64(h + kChunkHeaderSize, r.offset);
  w->iov.push_back({h, kChunkHeaderSize + 8 + r.length});
  return true;
}

// Writes the request's data: at its offset (raw), or at the host runs the
// cluster map gave, leaving the map after. False when a pwrite failed.
bool Plane::ServeWrite(WorkerState* w, const Slot& s, const uint8_t* data) {
  const Request& r = s.req;
  if (!cfg_.map) return WriteAll(data, r.length, r.offset);
  bool ok = true;
  for (size_t i = 0; i < s.host_count && ok; i++) {
    const ClusterMap::HostRun& run = w->hosts[s.host_at + i];
    ok = WriteAll(data + (run.guest - r.offset), run.length, run.host);
  }
  cfg_.map->Leave();
  if (ok) mapped_writes_++;
  return ok;
}

bool Plane::WriteAll(const uint8_t* data, uint64_t length, uint64_t offset) {
  uint64_t done = 0;
  while (done < length) {
    ssize_t k = pwrite(cfg_.file, data + done, length - done, static_cast<off_t>(offset + done));
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    done += static_cast<uint64_t>(k);
  }
  return true;
}

// Under the read lock: enters the cluster map and finds the request's host
// runs; false (map left) when any cluster of it is unmapped (for a write: not
// writable in place) or a barrier is up.
bool Plane::MapRequest(WorkerState* w, const Request& r, size_t* host_at, size_t* host_count) {
  ClusterMap& map = *cfg_.map;
  if (!map.Enter()) return false;
  size_t at = w->hosts.size();
  w->hosts.resize(at + kMaxRuns);
  size_t n = map.Lookup(r.offset, r.length, r.type == kCmdWrite, w->hosts.data() + at, kMaxRuns);
  w->hosts.resize(at + n);
  if (n == 0) {
    map.Leave();
    return false;
  }
  *host_at = at;
  *host_count = n;
  return true;
}

// A mapped read's data from the image file, then out of the map; false (the
// request demoted) when a pread failed.
bool Plane::ReadMapped(WorkerState* w, const Slot& s, uint8_t* data) {
  const Request& r = s.req;
  int err = 0;
  for (size_t i = 0; i < s.host_count && err == 0; i++) {
    const ClusterMap::HostRun& run = w->hosts[s.host_at + i];
    uint8_t* dst = data + (run.guest - r.offset);
    uint64_t done = 0;
    while (done < run.length) {
      ssize_t k = pread(cfg_.file, dst + done, run.length - done, static_cast<off_t>(run.host + done));
      if (k < 0 && errno == EINTR) continue;
      if (k < 0) {
        err = errno;
        break;
      }
      if (k == 0) {
        // A cluster past the end of the file reads as zeros (preallocated metadata).
        memset(dst + done, 0, run.length - done);
        break;
      }
      done += static_cast<uint64_t>(k);
    }
  }
  cfg_.map->Leave();
  if (err != 0) {
    Demote(r, nullptr);
    return false;
  }
  mapped_reads_++;
  return true;
}

// The read range as data runs and holes (SEEK_DATA/SEEK_HOLE), as the
// JavaScript path cuts it from block status: holes go out as OFFSET_HOLE
// chunks. Anything the walk cannot tell is data, which is never wrong.
size_t Plane::FindRuns(const Request& r, Run* runs) {
  const uint64_t end = r.offset + r.length;
  uint64_t pos = r.offset;
  size_t n = 0;
  auto add = [&](uint64_t to, bool data) {
    if (to <= pos) to = end;  // a walk that does not move on: the rest is data
    if (n > 0 && runs[n - 1].data == data) runs[n - 1].length += to - pos;
    else runs[n++] = {pos, to - pos, data};
    pos = to;
  };
  while (pos < end && n + 2 < kMaxRuns) {
    off_t d = lseek(cfg_.file, static_cast<off_t>(pos), SEEK_DATA);
    if (d < 0 && errno != ENXIO) break;
    uint64_t data_at = d < 0 ? end : std::min<uint64_t>(static_cast<uint64_t>(d), end);
    if (data_at > pos) {
      add(data_at, false);
      continue;
    }
    off_t h = lseek(cfg_.file, static_cast<off_t>(pos), SEEK_HOLE);
    add(h < 0 ? end : std::min<uint64_t>(static_cast<uint64_t>(h), end), true);
  }
  if (pos < end) add(end, true);
  return n;
}

// ---- the sender and the end ---------------------------------------------------------------

// Sends JavaScript's replies, and ends the connection once reading has
// stopped and every request is answered.
void Plane::Sender() {
  std::vector<Outgoing> batch;
  std::vector<struct iovec> iov;
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    sender_cv_.wait(lock, [this] { return !outbox_.empty() || Drained(); });
    if (outbox_.empty()) break;
    // Every reply waiting goes in one sendmsg, as the JavaScript path corks a turn's replies.
    while (!outbox_.empty() && batch.size() < kMaxSenderBatch) {
      batch.push_back(outbox_.front());
      outbox_.pop_front();
    }
    lock.unlock();
    size_t bytes = 0;
    for (const Outgoing& o : batch) {
      iov.push_back({o.data, o.length});
      bytes += o.length;
    }
    Send(iov.data(), iov.size());
    for (const Outgoing& o : batch) free(o.data);
    batch.clear();
    iov.clear();
    lock.lock();
    pending_ -= bytes;
    room_cv_.notify_all();
  }
  bool linger = !destroyed_ && !broken_;
  lock.unlock();
  if (linger) Linger();
  lock.lock();
  sock_closed_ = true;
  close(cfg_.sock);
  lock.unlock();
  PlaneEvent e;
  e.kind = PlaneEvent::kClosed;
  PushEvent(std::move(e));
}

// mu_ held: nothing is read, executing or waiting for JavaScript any more.
bool Plane::Drained() const { return stop_reading_ && alive_ == 0 && (in_flight_ == 0 || abandoned_); }

// FIN once every reply is out, then input is dropped until the client closes
// too: closing with unread input would reset the connection, and the client
// could lose replies still in transit.
void Plane::Linger() {
  shutdown(cfg_.sock, SHUT_WR);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(cfg_.linger_ms);
  uint8_t scratch[16384];
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0 || destroyed_) return;
    struct pollfd p = {cfg_.sock, POLLIN, 0};
    int n = poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 1000)));
    if (n < 0 && errno != EINTR) return;
    if (n <= 0) continue;
    ssize_t k = recv(cfg_.sock, scratch, sizeof scratch, 0);
    if (k == 0 || (k < 0 && errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)) return;
  }
}

}  // namespace nbd
}  // namespace vdisk

#endif  // _WIN32
