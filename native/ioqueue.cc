// A submission/completion queue for positional reads and writes, served by
// threads of its own: io_uring's shape in user space. Node's fs.read pays a
// thread-pool hand-off and two wake-ups for every request, more than a 4 KiB
// copy from the page cache costs. Here a submission is a push under a mutex
// (a futex wake only when a thread is idle); each thread takes one request at
// a time (a slow request holds up no other) and wakes a sleeping one while
// work remains; completions gather until the event loop wakes once for all of
// them: one call into JS per wake-up, with the ids and results of every
// request finished since the last.
//
// Threads come and go as the work needs them, which is where we part from
// QEMU's pool (a thread per request in flight, up to 64). Requests that wait
// on a disk need as many threads as the disk can overlap; requests the page
// cache serves are copies, CPU work, and threads beyond the CPUs only take
// turns at them (2,048 cached 1 MiB reads: 0.22 s on 2-8 threads, 0.25 s on
// 64). So a thread first tries a read without waiting (RWF_NOWAIT); only one
// that must wait for the disk, or an O_DIRECT request, counts as blocked, and
// a new thread starts while requests queue and fewer threads than CPUs are
// running rather than blocked. On a cold cache that grows to the maximum as
// QEMU's does; on a warm one it stays at the CPU count. A thread idle for 10 s
// retires, down to the minimum.
//
// Large reads are split into pieces that threads take separately (see
// kPieceMin), so one read uses every CPU; and while requests queue behind
// busy threads, completions reach the event loop in batches (see Complete).
//
// Buffered writes are held back too. ext4 and XFS take the inode's
// lock exclusively for a buffered write, so writes to one file run one at a
// time in the kernel whatever the thread count; 64 threads queued on that lock
// only add sleeps, wake-ups and lock spinning (measured: 2.4 s of system time
// for 100,000 4 KiB writes with 64 threads, 1.5 s with 4). At most
// kBufferedWriters of them run at once; reads and writes that may overlap
// (O_DIRECT) are not held back.
#include <pthread.h>
#include <uv.h>

#ifdef __linux__
#include <sys/uio.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "common.h"
#include "init.h"

#ifndef _WIN32
#include <unistd.h>
#endif

namespace vdisk {
namespace {

// What a request does: the bits of submit()'s `kinds` array.
enum Kind : uint8_t {
  kRead = 0,
  kWrite = 1,
  // O_DIRECT: every request waits for the device (RWF_NOWAIT does not refuse
  // it), and writes run in parallel there; without it, buffered writes are
  // serialised by the file system, so few run at a time.
  kDirect = 2,
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
  // A piece of a large read (see Split): the request it belongs to.
  Request* whole = nullptr;
  // On a request split into pieces: its pieces in file order, and how many
  // are still running.
  std::vector<Request*> pieces;
  std::atomic<size_t> pieces_left{0};
};

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

// preadNowait(fd, buffer, offset): a read served from the page cache on the
// calling thread, or -1 when it would have to wait for the disk (or the file
// system cannot say): the caller then queues it. A read that the page cache
// can serve costs less than handing it to a thread and back.
Napi::Value PreadNowait(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  int64_t offset;
  if (!ArgCount(info, 3) || !ArgFd(info, 0, "fd", &fd) ||
      !ArgUint(info, 2, "offset", &offset))
    return env.Undefined();
  napi_typedarray_type type;
  size_t length = 0;
  void* data = nullptr;
  if (napi_get_typedarray_info(env, info[1], &type, &length, &data, nullptr, nullptr) != napi_ok ||
      type != napi_uint8_array) {
    if (env.IsExceptionPending()) env.GetAndClearPendingException();
    ThrowTypeError(env, "ERR_INVALID_ARG_TYPE", "The \"buffer\" argument must be a Uint8Array");
    return env.Undefined();
  }
#if defined(__linux__) && defined(RWF_NOWAIT)
  struct iovec iov = {data, length};
  ssize_t n;
  do {
    n = preadv2(fd, &iov, 1, static_cast<off_t>(offset), RWF_NOWAIT);
  } while (n < 0 && errno == EINTR);
  // Short: part of it is not cached, or the file ends; the queue tells which.
  if (n < 0 || static_cast<size_t>(n) != length) return Napi::Number::New(env, -1);
  return Napi::Number::New(env, static_cast<double>(n));
#else
  (void)fd;
  (void)offset;
  (void)data;
  return Napi::Number::New(env, -1);
#endif
}

class IoQueue : public Napi::ObjectWrap<IoQueue> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "IoQueue",
                       {InstanceMethod<&IoQueue::Submit>("submit"),
                        InstanceMethod<&IoQueue::Close>("close")});
  }

  // new IoQueue(maxThreads, onComplete(ids: Uint32Array, results: Float64Array))
  explicit IoQueue(const Napi::CallbackInfo& info)
      : Napi::ObjectWrap<IoQueue>(info) {
    Napi::Env env = info.Env();
    int32_t threads;
    if (!ArgCount(info, 2) || !ArgInt32(info, 0, "maxThreads", &threads)) return;
    if (threads < 1 || threads > 256) {
      ThrowRange(env, "maxThreads", ">= 1 and <= 256", threads);
      return;
    }
    max_threads_ = threads;
    if (!info[1].IsFunction()) {
      ThrowTypeError(env, "ERR_INVALID_ARG_TYPE",
                     "The \"onComplete\" argument must be a function");
      return;
    }
    on_complete_ = Napi::Persistent(info[1].As<Napi::Function>());
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok) {
      Napi::Error::New(env, "IoQueue: no event loop").ThrowAsJavaScriptException();
      return;
    }
    async_ = new uv_async_t;
    async_->data = this;
    uv_async_init(loop, async_, [](uv_async_t* a) {
      static_cast<IoQueue*>(a->data)->Deliver();
    });
    // Only requests in flight keep the process alive.
    uv_unref(reinterpret_cast<uv_handle_t*>(async_));
    env_ = env;
    hooked_ = napi_add_env_cleanup_hook(env, CleanupHook, this) == napi_ok;
    started_ = true;
  }

  // The hook goes whenever the queue stops or dies, whichever comes first: a
  // hook left behind by a closed queue would name freed memory at exit, and a
  // later queue allocated at the same address would register the same
  // (function, pointer) pair again, which Node rejects with an abort.
  ~IoQueue() override {
    Unhook();
    Stop();
  }

  static void CleanupHook(void* self) {
    auto* q = static_cast<IoQueue*>(self);
    q->hooked_ = false;  // Node is running (and dropping) it now
    q->Stop();
  }

  void Unhook() {
    if (hooked_) napi_remove_env_cleanup_hook(env_, CleanupHook, this);
    hooked_ = false;
  }

 private:
  // submit(count, ids: Uint32Array, fds: Int32Array, offsets: Float64Array,
  //        kinds: Uint8Array, buffers: Uint8Array[]): queues requests
  // [0, count). The arrays are read now and may be reused at once; each buffer
  // must stay referenced (and untouched) by the caller until its completion is
  // delivered. One call per event-loop turn: one lock, and no more wake-ups
  // than there are requests or idle threads.
  Napi::Value Submit(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!started_ || stopped_) {
      Napi::Error::New(env, "IoQueue is closed").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    int64_t count;
    if (!ArgCount(info, 6) || !ArgUint(info, 0, "count", &count)) return env.Undefined();
    if (!info[1].IsTypedArray() || !info[2].IsTypedArray() ||
        !info[3].IsTypedArray() || !info[4].IsTypedArray() ||
        !info[5].IsArray()) {
      ThrowTypeError(env, "ERR_INVALID_ARG_TYPE",
                     "submit(count, ids: Uint32Array, fds: Int32Array, offsets: "
                     "Float64Array, kinds: Uint8Array, buffers: Uint8Array[])");
      return env.Undefined();
    }
    auto ids = info[1].As<Napi::TypedArrayOf<uint32_t>>();
    auto fds = info[2].As<Napi::TypedArrayOf<int32_t>>();
    auto offsets = info[3].As<Napi::TypedArrayOf<double>>();
    auto kinds = info[4].As<Napi::TypedArrayOf<uint8_t>>();
    auto buffers = info[5].As<Napi::Array>();
    size_t n = static_cast<size_t>(count);
    if (ids.ElementLength() < n || fds.ElementLength() < n ||
        offsets.ElementLength() < n || kinds.ElementLength() < n ||
        buffers.Length() < n) {
      ThrowRange(env, "count", "at most the length of every array",
                 static_cast<double>(count));
      return env.Undefined();
    }
    std::vector<Request*> batch;
    batch.reserve(n);
    for (size_t i = 0; i < n; i++) {
      // Raw N-API here: one call per buffer for its address and length.
      napi_value b;
      napi_typedarray_type type;
      size_t length = 0;
      void* data = nullptr;
      double offset = offsets[i];
      const char* bad = nullptr;
      if (napi_get_element(env, buffers, static_cast<uint32_t>(i), &b) != napi_ok ||
          napi_get_typedarray_info(env, b, &type, &length, &data, nullptr, nullptr) != napi_ok ||
          type != napi_uint8_array) {
        bad = "buffer";
      } else if (!(offset >= 0 && offset <= 9007199254740991.0 &&
                   offset == static_cast<double>(static_cast<int64_t>(offset)))) {
        bad = "offset";
      } else if (fds[i] < 0) {
        bad = "fd";
      } else if (kinds[i] > (kWrite | kDirect)) {
        bad = "kind";
      }
      if (bad) {
        for (Request* r : batch) delete r;
        if (env.IsExceptionPending()) env.GetAndClearPendingException();
        if (bad[0] == 'b') {
          ThrowTypeError(env, "ERR_INVALID_ARG_TYPE", "IoQueue: every buffer must be a Uint8Array");
        } else if (bad[0] == 'k') {
          ThrowRange(env, bad, "0 to 3 (1: write, 2: O_DIRECT)", kinds[i]);
        } else {
          ThrowRange(env, bad, bad[0] == 'o' ? "a safe non-negative integer" : ">= 0",
                     bad[0] == 'o' ? offset : fds[i]);
        }
        return env.Undefined();
      }
      batch.push_back(new Request(ids[i], fds[i], static_cast<Kind>(kinds[i]),
                                  static_cast<uint8_t*>(data), length,
                                  static_cast<int64_t>(offset)));
    }
    if (n == 0) return env.Undefined();
    if (in_flight_ == 0) uv_ref(reinterpret_cast<uv_handle_t*>(async_));
    in_flight_ += n;
    size_t bytes = 0;
    for (Request* r : batch) bytes += r->length;
    std::vector<Request*> items;
    items.reserve(n);
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
    return env.Undefined();
  }

  // Appends what the threads take for `r` to `items`: `r` itself, or for a
  // large read, pieces of it (one per CPU at most, each at least kPieceMin and
  // a multiple of 4 KiB, which keeps O_DIRECT alignment).
  void Split(Request* r, std::vector<Request*>* items) const {
    size_t count = std::min<size_t>(cpus_, r->length / kPieceMin);
    if ((r->kind & kWrite) || count < 2) {
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
  void Spawn() {
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    // A thread here makes one syscall at a time; it needs no 8 MiB stack.
    pthread_attr_setstacksize(&attr, 256 * 1024);
    pthread_t thread;
    int err = pthread_create(&thread, &attr, [](void* self) -> void* {
      static_cast<IoQueue*>(self)->Serve();
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

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Unhook();
    Stop();
    return info.Env().Undefined();
  }

  void Serve() {
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
      if (Request* finished = Finish(r)) Complete(finished);
      lock.lock();
      writers_ -= held;
    }
    if (--alive_ == 0) gone_.notify_all();
  }

  // The request that `r`, just run, completes: `r` itself; for a piece, its
  // read once this is the last piece to finish (the pieces' results joined,
  // and the pieces, `r` among them, freed); else none yet.
  static Request* Finish(Request* r) {
    Request* whole = r->whole;
    if (!whole) return r;
    if (whole->pieces_left.fetch_sub(1, std::memory_order_acq_rel) != 1) return nullptr;
    whole->result = Joined(*whole);
    for (Request* p : whole->pieces) delete p;
    whole->pieces.clear();
    return whole;
  }

  // Frees a request no thread will run (the queue is stopping and its threads
  // are gone); a piece takes its read along once it is the last one left.
  static void Discard(Request* r) {
    Request* whole = r->whole;
    if (!whole) {
      delete r;
      return;
    }
    if (whole->pieces_left.fetch_sub(1, std::memory_order_relaxed) != 1) return;
    for (Request* p : whole->pieces) delete p;
    delete whole;
  }

  // Hands a finished request to the event loop. Each wake-up of the loop
  // costs its thread a return from epoll, an eventfd read and a call into JS:
  // while many requests still queue for threads that are all running (page
  // cache copies, finishing every few microseconds), completions gather until
  // kDeliverBatch are ready; the JS can add nothing the queue lacks meanwhile.
  // A short queue, or a thread waiting for a device, delivers at once.
  void Complete(Request* r) {
    bool wake;
    {
      std::lock_guard<std::mutex> done_lock(done_mu_);
      done_.push_back(r);
      wake = !wake_due_ && (done_.size() >= kDeliverBatch ||
                            queued_.load(std::memory_order_relaxed) < kDeliverBatch ||
                            blocked_.load(std::memory_order_relaxed) > 0);
      wake_due_ |= wake;
    }
    if (wake) uv_async_send(async_);
  }

  // On the event loop: hand every finished request to JS in one call.
  void Deliver() {
    std::vector<Request*> batch;
    {
      std::lock_guard<std::mutex> lock(done_mu_);
      batch.swap(done_);
      wake_due_ = false;
    }
    if (batch.empty() || stopped_) return;
    in_flight_ -= batch.size();
    if (in_flight_ == 0) uv_unref(reinterpret_cast<uv_handle_t*>(async_));
    Napi::Env env = env_;
    Napi::HandleScope scope(env);
    auto ids = Napi::Uint32Array::New(env, batch.size());
    auto results = Napi::Float64Array::New(env, batch.size());
    for (size_t i = 0; i < batch.size(); i++) {
      ids[i] = batch[i]->id;
      results[i] = batch[i]->result;
      delete batch[i];
    }
    // MakeCallback: microtasks (the promises this resolves) run before the
    // loop goes on, as after any other I/O callback.
    on_complete_.MakeCallback(Value(), {ids, results});
    // Nothing up the stack can catch it: report it as Node reports a throw
    // from any other I/O callback.
    if (env.IsExceptionPending()) {
      Napi::Error err = env.GetAndClearPendingException();
      napi_fatal_exception(env, err.Value());
    }
  }

  void Stop() {
    if (!started_ || stopped_) return;
    {
      std::unique_lock<std::mutex> lock(mu_);
      stopping_ = true;
      cv_.notify_all();
      // Threads finish the request in hand; none touches this object after.
      gone_.wait(lock, [this] { return alive_ == 0; });
      for (Request* r : todo_) Discard(r);
      for (Request* r : held_) Discard(r);
      todo_.clear();
      held_.clear();
    }
    stopped_ = true;
    for (Request* r : done_) delete r;
    done_.clear();
    uv_close(reinterpret_cast<uv_handle_t*>(async_),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_async_t*>(h); });
    async_ = nullptr;
  }

  // Whether to start a thread now (mu_ held): work waits, no thread is idle,
  // and fewer threads are running than there are CPUs.
  bool WantThread() const {
    return idle_ == 0 && alive_ < max_threads_ && alive_ - blocked_ < cpus_ && Runnable();
  }

  // Whether a thread could start a request now (mu_ held).
  bool Runnable() const {
    return !todo_.empty() || (!held_.empty() && writers_ < kBufferedWriters);
  }

  // Threads kept when idle (the rest retire after 10 s without work).
  static constexpr int kMinThreads = 2;
  // Submissions of at least this many bytes wake a thread per request.
  static constexpr size_t kWakeEachBytes = 256 * 1024;
  // Completions gathered per wake-up of the loop while the queue is long.
  static constexpr size_t kDeliverBatch = 8;
  // Buffered writes running at once: one in the kernel, one ready behind it.
  static constexpr int kBufferedWriters = 2;

  // Guards the submission side and the thread counts.
  std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable gone_;
  std::deque<Request*> todo_;
  // Buffered writes waiting for one of the kBufferedWriters places.
  std::deque<Request*> held_;
  int writers_ = 0;
  int idle_ = 0;
  int alive_ = 0;
  // Threads waiting for a device (written under mu_; Complete reads it).
  std::atomic<int> blocked_{0};
  // Requests and pieces waiting for a thread (todo_ and held_; written under
  // mu_, read by Complete).
  std::atomic<size_t> queued_{0};
  // Threads that may run (not blocked) at once: the CPUs.
  const int cpus_ = std::max(2, static_cast<int>(std::thread::hardware_concurrency()));
  int max_threads_ = 1;
  bool stopping_ = false;
  // Guards the completion side, so finishing threads and the event loop do
  // not contend with submissions.
  std::mutex done_mu_;
  std::vector<Request*> done_;
  // An event-loop wake-up is due for done_ (uv_async_send was called).
  bool wake_due_ = false;
  // Main-thread state.
  bool started_ = false;
  bool stopped_ = false;
  bool hooked_ = false;
  size_t in_flight_ = 0;
  uv_async_t* async_ = nullptr;
  napi_env env_ = nullptr;
  Napi::FunctionReference on_complete_;
};

}  // namespace

void InitIoQueue(Napi::Env env, Napi::Object exports) {
  exports.Set("IoQueue", IoQueue::Define(env));
  exports.Set("preadNowait", Napi::Function::New(env, PreadNowait, "preadNowait"));
}

}  // namespace vdisk
