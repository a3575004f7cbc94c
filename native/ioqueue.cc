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
// A request the caller gave up on (abandon(id): its storage did not answer
// within the caller's deadline) no longer keeps the event loop alive, and
// closing the queue does not wait for it: a thread stuck in a dead NFS or
// FUSE mount's system call cannot be stopped, only left behind.
//
// A map request (kMap) walks SEEK_DATA/SEEK_HOLE on a pool thread, for the
// same reason: a caller with a deadline must not make that call itself.
//
// Buffered writes are held back too. ext4 and XFS take the inode's
// lock exclusively for a buffered write, so writes to one file run one at a
// time in the kernel whatever the thread count; 64 threads queued on that lock
// only add sleeps, wake-ups and lock spinning (measured: 2.4 s of system time
// for 100,000 4 KiB writes with 64 threads, 1.5 s with 4). At most
// kBufferedWriters of them run at once; reads and writes that may overlap
// (O_DIRECT) are not held back.
#include <uv.h>

#ifdef __linux__
#include <sys/uio.h>
#endif

#include <unordered_set>
#include <vector>

#include "common.h"
#include "init.h"
#include "ioqueue-pool.h"

namespace vdisk {
namespace {

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
                        InstanceMethod<&IoQueue::Abandon>("abandon"),
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
    pool_ = new IoPool(threads, async_);
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
    if (!started_ || !pool_) {
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
      } else if (kinds[i] > (kWrite | kDirect) && kinds[i] != kMap) {
        bad = "kind";
      } else if (kinds[i] == kMap && length < 3 * sizeof(double)) {
        bad = "map buffer";  // the walk's end on entry; the answer and one run on return
      }
      if (bad) {
        for (Request* r : batch) delete r;
        if (env.IsExceptionPending()) env.GetAndClearPendingException();
        if (bad[0] == 'b') {
          ThrowTypeError(env, "ERR_INVALID_ARG_TYPE", "IoQueue: every buffer must be a Uint8Array");
        } else if (bad[0] == 'k') {
          ThrowRange(env, bad, "0 to 3 (1: write, 2: O_DIRECT) or 4 (map)", kinds[i]);
        } else if (bad[0] == 'm') {
          ThrowRange(env, bad, "at least 24 bytes", static_cast<double>(length));
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
    in_flight_ += n;
    KeepLoop();
    pool_->Submit(batch);
    return env.Undefined();
  }

  // abandon(id): the caller stopped waiting for request `id` (still in
  // flight): it no longer keeps the process alive, and close() does not wait
  // for it. Its completion is still delivered, once, if it ever comes.
  Napi::Value Abandon(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int64_t id;
    if (!ArgCount(info, 1) || !ArgUint(info, 0, "id", &id)) return env.Undefined();
    if (!pool_ || id > UINT32_MAX) return env.Undefined();
    if (abandoned_.insert(static_cast<uint32_t>(id)).second) pool_->Abandon(static_cast<uint32_t>(id));
    KeepLoop();
    return env.Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Unhook();
    Stop();
    return info.Env().Undefined();
  }

  // The event loop stays alive while requests nobody gave up on are in flight.
  void KeepLoop() {
    bool want = in_flight_ > abandoned_.size();
    if (want == reffed_) return;
    reffed_ = want;
    if (want) uv_ref(reinterpret_cast<uv_handle_t*>(async_));
    else uv_unref(reinterpret_cast<uv_handle_t*>(async_));
  }

  // On the event loop: hand every finished request to JS in one call.
  void Deliver() {
    if (!pool_) return;
    std::vector<Request*> batch = pool_->TakeDone();
    if (batch.empty()) return;
    in_flight_ -= batch.size();
    for (Request* r : batch) abandoned_.erase(r->id);
    KeepLoop();
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
    // loop goes on, as after any other I/O callback. Raw N-API, because the
    // wrapper turns a failed call into a fatal error: at process exit Node
    // runs the loop once more to close handles (a request stuck on a dead
    // mount may finish just then), and JS can no longer run; those
    // completions have nobody left to tell and are dropped.
    napi_value argv[2] = {ids, results};
    napi_value out;
    napi_status status = napi_make_callback(env, nullptr, Value(), on_complete_.Value(), 2, argv, &out);
    // Nothing up the stack can catch it: report it as Node reports a throw
    // from any other I/O callback.
    if (status == napi_pending_exception || (status == napi_ok && env.IsExceptionPending())) {
      Napi::Error err = env.GetAndClearPendingException();
      napi_fatal_exception(env, err.Value());
    }
  }

  void Stop() {
    if (!started_ || !pool_) return;
    pool_->Stop();
    pool_ = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(async_),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_async_t*>(h); });
    async_ = nullptr;
  }

  IoPool* pool_ = nullptr;
  bool started_ = false;
  bool hooked_ = false;
  bool reffed_ = false;
  size_t in_flight_ = 0;
  // Ids of requests in flight that the caller gave up on.
  std::unordered_set<uint32_t> abandoned_;
  uv_async_t* async_ = nullptr;
  napi_env env_ = nullptr;
  Napi::FunctionReference on_complete_;
};

}  // namespace

void InitIoQueue(Napi::Env env, Napi::Object exports) {
  exports.Set("IoQueue", IoQueue::Define(env));
  exports.Set("preadNowait", Napi::Function::New(env, PreadNowait, "preadNowait"));
  // The queue takes map requests (kMap): a SEEK_DATA/SEEK_HOLE walk on its threads.
  exports.Set("ioQueueMap", Napi::Boolean::New(env, true));
}

}  // namespace vdisk
