// IoPool: threads that run queued reads and writes, and the queues between
// them and the event loop (see ioqueue.cc for the design).
#include "ioqueue-pool.h"

#include "datamap.h"

#include <pthread.h>

#ifdef __linux__
#include <sys/uio.h>
#endif

#ifndef _WIN32
#include <unistd.h>
#endif

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>
#include <vector>

namespace vdisk {
namespace {

// Reads of at least twice this are split into pieces (of at least this) that
// threads take separately. One thread copying a large read from the page cache
// leaves the other CPUs idle at low queue depths; at high depths, two threads
// copying whole reads into the same memory (a caller reusing one buffer, as
// qemu-img bench does) fight over its cache lines, where the pieces of one
// read go to disjoint parts of it (2,048 1 MiB reads on 2 CPUs: 0.171 s whole,
// 0.160 s in halves, measured with plain preads).
constexpr size_t kPieceMin = 128 * 1024;

// The result of a split read from its pieces': the first error, else the
// bytes up to the first short piece (the end of the file).
double Joined(const Request& whole) {
  double total = 0;
  for (const Request* p : whole.pieces) {
    if (p->result < 0) return p->result;
  }
  for (const Request* p : whole.pieces) {
    total += p->result;
    if (static_cast<size_t>(p->result) < p->length) break;
  }
  return total;
}

// Bytes a buffered read got from the page cache without waiting for the disk
// (all of them, short only at end of file), or -1 when it must wait: the
// caller goes on with Transfer from `*done`. Errors other than "would block"
// are left for Transfer to report.
#if defined(__linux__) && defined(RWF_NOWAIT)
constexpr bool kHaveNowait = true;
double TryCached(const Request& r, size_t* done) {
  while (*done < r.length) {
    struct iovec iov = {r.data + *done, r.length - *done};
    ssize_t n = preadv2(r.fd, &iov, 1, static_cast<off_t>(r.offset + *done), RWF_NOWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -1;
    if (n == 0) break;  // end of file
    *done += static_cast<size_t>(n);
  }
  return static_cast<double>(*done);
}
#else
constexpr bool kHaveNowait = false;
double TryCached(const Request&, size_t*) { return -1; }
#endif

// Bytes transferred from `done` on (a read stops short only at end of file),
// or -errno.
double Transfer(const Request& r, size_t done) {
  if (r.kind == kMap) {
    double end;
    std::memcpy(&end, r.data, sizeof end);
    // The caller's buffer need not be aligned for doubles: walk into our own.
    std::vector<double> out(r.length / sizeof(double));
    int64_t n = WalkData(r.fd, r.offset, static_cast<int64_t>(end), out.data(), out.size());
    if (n > 0) std::memcpy(r.data, out.data(), static_cast<size_t>(n) * sizeof(double));
    return static_cast<double>(n);
  }
#ifdef _WIN32
  return -static_cast<double>(ENOSYS);
#else
  while (done < r.length) {
    ssize_t n = (r.kind & kWrite)
        ? pwrite(r.fd, r.data + done, r.length - done, r.offset + done)
        : pread(r.fd, r.data + done, r.length - done, r.offset + done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -static_cast<double>(errno);
    }
    if (n == 0) {
      if (r.kind & kWrite) return -static_cast<double>(EIO);
      break;
    }
    done += static_cast<size_t>(n);
  }
  return static_cast<double>(done);
#endif
}

}  // namespace

IoPool::IoPool(int max_threads, uv_async_t* wake)
    : cpus_(std::max(2, static_cast<int>(std::thread::hardware_concurrency()))),
      max_threads_(max_threads),
      wake_(wake) {}

void IoPool::Submit(const std::vector<Request*>& batch) {
  size_t bytes = 0;
  for (Request* r : batch) bytes += r->length;
  std::vector<Request*> items;
  items.reserve(batch.size());
  for (Request* r : batch) Split(r, &items);
  size_t wake;
  int spawn = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (Request* r : items) (r->kind == kWrite ? held_ : todo_).push_back(r);
    queued_.fetch_add(items.size(), std::memory_order_relaxed);
    // A futex wake costs the event loop more than a page-cache read of a
    // few KiB, and on a busy machine the woken thread may take this very
    // core: small requests wake one thread, which wakes the next while work
    // remains (Serve). Large ones are worth a wake-up each, as QEMU's pool
    // gives them, rather than waiting on that chain one hop at a time.
    wake = Runnable() ? std::min<size_t>(idle_, bytes >= kWakeEachBytes ? items.size() : 1) : 0;
    // One more thread when none is idle and fewer than the CPUs are running
    // rather than blocked (see the top); threads that block start more.
    spawn = WantThread();
    alive_ += spawn;
  }
  for (size_t i = 0; i < wake; i++) cv_.notify_one();
  if (spawn) Spawn();
}

std::vector<Request*> IoPool::TakeDone() {
  std::vector<Request*> batch;
  std::lock_guard<std::mutex> lock(done_mu_);
  batch.swap(done_);
  wake_due_ = false;
  return batch;
}

void IoPool::Abandon(uint32_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  for (Request* r : running_) r->abandoned |= r->id == id;
  for (Request* r : todo_) r->abandoned |= r->id == id;
  for (Request* r : held_) r->abandoned |= r->id == id;
}

void IoPool::Stop() {
  std::vector<Request*> finished;
  {
    std::lock_guard<std::mutex> lock(done_mu_);
    closed_ = true;
    finished.swap(done_);
  }
  for (Request* r : finished) delete r;
  bool orphan;
  {
    std::unique_lock<std::mutex> lock(mu_);
    stopping_ = true;
    cv_.notify_all();
    // Threads finish the request in hand (its caller's memory is still
    // there); one stuck in a request its caller gave up on may never return.
    gone_.wait(lock, [this] { return alive_ == 0 || OnlyAbandonedLeft(); });
    for (Request* r : todo_) Discard(r);
    for (Request* r : held_) Discard(r);
    todo_.clear();
    held_.clear();
    orphan = alive_ > 0;
    orphaned_ = orphan;
  }
  if (!orphan) delete this;
}

// Every thread still alive is in an abandoned request (mu_ held).
bool IoPool::OnlyAbandonedLeft() const {
  if (static_cast<size_t>(alive_) != running_.size()) return false;
  for (const Request* r : running_) {
    if (!r->abandoned) return false;
  }
  return true;
}

// Appends what the threads take for `r` to `items`: `r` itself, or for a
// large read, pieces of it (one per CPU at most, each at least kPieceMin and
// a multiple of 4 KiB, which keeps O_DIRECT alignment).
void IoPool::Split(Request* r, std::vector<Request*>* items) const {
  size_t count = std::min<size_t>(cpus_, r->length / kPieceMin);
  if ((r->kind & (kWrite | kMap)) || count < 2) {
    items->push_back(r);
    return;
  }
  size_t step = (r->length / count + 4095) & ~static_cast<size_t>(4095);
  for (size_t at = 0; at < r->length; at += step) {
    size_t length = std::min(step, r->length - at);
    auto* piece = new Request(r->id, r->fd, r->kind, r->data + at, length,
                              r->offset + static_cast<int64_t>(at));
    piece->whole = r;
    r->pieces.push_back(piece);
  }
  r->pieces_left.store(r->pieces.size(), std::memory_order_relaxed);
  items->insert(items->end(), r->pieces.begin(), r->pieces.end());
}

// Starts one more serving thread (alive_ already counts it). pthreads, not
// std::thread: without C++ exceptions a failed std::thread aborts the
// process, where a failed pthread_create only means one thread fewer.
void IoPool::Spawn() {
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  // A thread here makes one syscall at a time; it needs no 8 MiB stack.
  pthread_attr_setstacksize(&attr, 256 * 1024);
  pthread_t thread;
  int err = pthread_create(&thread, &attr, [](void* self) -> void* {
    static_cast<IoPool*>(self)->Serve();
    return nullptr;
  }, this);
  pthread_attr_destroy(&attr);
  if (err == 0) return;
  std::vector<Request*> orphans;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (--alive_ > 0) return;  // the others will take the work
    gone_.notify_all();
    orphans.assign(todo_.begin(), todo_.end());
    orphans.insert(orphans.end(), held_.begin(), held_.end());
    todo_.clear();
    held_.clear();
    queued_.store(0, std::memory_order_relaxed);
  }
  // No thread at all: the requests fail (EAGAIN) rather than wait forever.
  for (Request* r : orphans) {
    r->result = -static_cast<double>(err);
    if (Request* finished = Finish(r)) Complete(finished);
  }
}

void IoPool::Serve() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    bool timed_out = false;
    while (!Runnable() && !stopping_ && !timed_out) {
      idle_++;
      timed_out = cv_.wait_for(lock, std::chrono::seconds(10)) == std::cv_status::timeout;
      idle_--;
    }
    if (stopping_) break;
    if (!Runnable()) {
      if (alive_ > kMinThreads) break;  // idle for 10 s: retire
      continue;
    }
    // Held writes first while a writer's place is free: they are the
    // serialised resource, so keep it busy; reads fill the other threads.
    bool held = !held_.empty() && writers_ < kBufferedWriters;
    std::deque<Request*>& from = held ? held_ : todo_;
    Request* r = from.front();
    from.pop_front();
    queued_.fetch_sub(1, std::memory_order_relaxed);
    running_.push_back(r);
    writers_ += held;
    bool more = Runnable() && idle_ > 0;
    lock.unlock();
    if (more) cv_.notify_one();
    size_t done = 0;
    double result = -1;
    if (r->kind == kRead && kHaveNowait) result = TryCached(*r, &done);
    if (result < 0 && r->kind == kWrite) {
      // A buffered write: a copy into the page cache, CPU work like a
      // cached read (and held to kBufferedWriters at once).
      result = Transfer(*r, 0);
    } else if (result < 0) {
      // This thread waits for the device: if requests queue behind it and
      // no thread is free for them, start one (which does the same if it
      // blocks too, so a cold cache grows the pool to what the disk needs).
      bool spawn;
      {
        std::lock_guard<std::mutex> relock(mu_);
        blocked_++;
        spawn = WantThread();
        alive_ += spawn;
      }
      if (spawn) Spawn();
      result = Transfer(*r, done);
      std::lock_guard<std::mutex> relock(mu_);
      blocked_--;
    }
    r->result = result;
    lock.lock();
    running_.erase(std::find(running_.begin(), running_.end(), r));
    writers_ -= held;
    lock.unlock();
    if (Request* finished = Finish(r)) Complete(finished);
    lock.lock();
  }
  bool last = --alive_ == 0;
  if (!orphaned_) {
    // Stop waits for the last thread, or for only stuck ones to be left.
    if (last || stopping_) gone_.notify_all();
    return;
  }
  if (!last) return;
  // The last of the threads Stop left behind: nobody else holds the pool.
  lock.unlock();
  delete this;
}

// The request that `r`, just run, completes: `r` itself; for a piece, its
// read once this is the last piece to finish (the pieces' results joined,
// and the pieces, `r` among them, freed); else none yet.
Request* IoPool::Finish(Request* r) {
  Request* whole = r->whole;
  if (!whole) return r;
  if (whole->pieces_left.fetch_sub(1, std::memory_order_acq_rel) != 1) return nullptr;
  whole->result = Joined(*whole);
  for (Request* p : whole->pieces) delete p;
  whole->pieces.clear();
  return whole;
}

// Frees a request no thread will run (the pool is stopping); a piece takes its
// read along once it is the last one left.
void IoPool::Discard(Request* r) {
  Request* whole = r->whole;
  if (!whole) {
    delete r;
    return;
  }
  if (whole->pieces_left.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  for (Request* p : whole->pieces) delete p;
  delete whole;
}

// Hands a finished request to the event loop. Each wake-up of the loop
// costs its thread a return from epoll, an eventfd read and a call into JS:
// while many requests still queue for threads that are all running (page
// cache copies, finishing every few microseconds), completions gather until
// kDeliverBatch are ready; the JS can add nothing the queue lacks meanwhile.
// A short queue, or a thread waiting for a device, delivers at once. The
// send happens under done_mu_, so Stop cannot close `wake_` in between.
void IoPool::Complete(Request* r) {
  std::lock_guard<std::mutex> done_lock(done_mu_);
  if (closed_) {
    delete r;
    return;
  }
  done_.push_back(r);
  bool wake = !wake_due_ && (done_.size() >= kDeliverBatch ||
                             queued_.load(std::memory_order_relaxed) < kDeliverBatch ||
                             blocked_.load(std::memory_order_relaxed) > 0);
  wake_due_ |= wake;
  if (wake) uv_async_send(wake_);
}

// Whether to start a thread now (mu_ held): work waits, no thread is idle,
// and fewer threads are running than there are CPUs.
bool IoPool::WantThread() const {
  return idle_ == 0 && alive_ < max_threads_ && alive_ - blocked_ < cpus_ && Runnable();
}

// Whether a thread could start a request now (mu_ held).
bool IoPool::Runnable() const {
  return !todo_.empty() || (!held_.empty() && writers_ < kBufferedWriters);
}

}  // namespace vdisk
