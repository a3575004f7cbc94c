// Positional reads and writes in batches: one thread-pool job runs many
// pread/pwrite calls. Node's fs.read costs a queue hand-off, a worker wake-up
// and a completion wake-up per request, more than a 4 KiB read from the page
// cache itself; the file driver gathers the requests of one event-loop turn
// and sends them down here a few jobs at a time (src/drivers/protocol/file/
// io-batch.ts).
#include <unistd.h>

#include <vector>

#include "common.h"
#include "init.h"

namespace vdisk {
namespace {

struct Op {
  int fd;
  bool write;
  uint8_t* data;
  size_t length;
  int64_t offset;
};

class BatchWorker : public Napi::AsyncWorker {
 public:
  BatchWorker(Napi::Function callback, std::vector<Op> ops,
              Napi::Object keep_alive, double* results)
      : Napi::AsyncWorker(callback, "vdisk:ioBatch"),
        ops_(std::move(ops)),
        results_(results) {
    // The buffers (and the results array) must outlive the job.
    keep_alive_ = Napi::Persistent(keep_alive);
  }

  void Execute() override {
    for (size_t i = 0; i < ops_.size(); i++) results_[i] = Run(ops_[i]);
  }

  void OnOK() override { Callback().Call({}); }

 private:
  // Bytes transferred (a read stops short only at end of file), or -errno.
  static double Run(const Op& op) {
    size_t done = 0;
    while (done < op.length) {
      ssize_t n = op.write
          ? pwrite(op.fd, op.data + done, op.length - done, op.offset + done)
          : pread(op.fd, op.data + done, op.length - done, op.offset + done);
      if (n < 0) {
        if (errno == EINTR) continue;
        return -static_cast<double>(errno);
      }
      if (n == 0) {
        if (op.write) return -static_cast<double>(EIO);
        break;
      }
      done += static_cast<size_t>(n);
    }
    return static_cast<double>(done);
  }

  std::vector<Op> ops_;
  double* results_;
  Napi::ObjectReference keep_alive_;
};

// ioBatch(fds: Int32Array, offsets: Float64Array, writes: Uint8Array,
//         buffers: Uint8Array[], results: Float64Array, count, callback)
// Runs ops [0, count) in order on one pool thread, stores each op's result in
// results[i] (bytes, or -errno), then calls callback(). The arrays are read
// here, on the calling thread; only raw memory crosses to the worker.
Napi::Value IoBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!ArgCount(info, 7)) return env.Undefined();
  if (!info[0].IsTypedArray() || !info[1].IsTypedArray() ||
      !info[2].IsTypedArray() || !info[3].IsArray() ||
      !info[4].IsTypedArray() || !info[6].IsFunction()) {
    ThrowTypeError(env, "ERR_INVALID_ARG_TYPE",
                   "ioBatch(fds: Int32Array, offsets: Float64Array, writes: "
                   "Uint8Array, buffers: Uint8Array[], results: Float64Array, "
                   "count: number, callback: function)");
    return env.Undefined();
  }
  auto fds = info[0].As<Napi::TypedArrayOf<int32_t>>();
  auto offsets = info[1].As<Napi::TypedArrayOf<double>>();
  auto writes = info[2].As<Napi::TypedArrayOf<uint8_t>>();
  auto buffers = info[3].As<Napi::Array>();
  auto results = info[4].As<Napi::TypedArrayOf<double>>();
  int64_t count;
  if (!ArgUint(info, 5, "count", &count)) return env.Undefined();
  size_t n = static_cast<size_t>(count);
  if (fds.ElementLength() < n || offsets.ElementLength() < n ||
      writes.ElementLength() < n || buffers.Length() < n ||
      results.ElementLength() < n) {
    ThrowRange(env, "count", "at most the length of every array",
               static_cast<double>(count));
    return env.Undefined();
  }
  std::vector<Op> ops(n);
  for (size_t i = 0; i < n; i++) {
    Napi::Value b = buffers.Get(static_cast<uint32_t>(i));
    if (!b.IsTypedArray()) {
      ThrowTypeError(env, "ERR_INVALID_ARG_TYPE",
                     "ioBatch: every buffer must be a Uint8Array");
      return env.Undefined();
    }
    auto view = b.As<Napi::TypedArray>();
    double offset = offsets[i];
    if (!(offset >= 0 && offset <= 9007199254740991.0)) {
      ThrowRange(env, "offset", "a safe non-negative integer", offset);
      return env.Undefined();
    }
    ops[i] = Op{fds[i], writes[i] != 0,
                static_cast<uint8_t*>(view.ArrayBuffer().Data()) +
                    view.ByteOffset(),
                view.ByteLength(), static_cast<int64_t>(offset)};
  }
  Napi::Object keep = Napi::Object::New(env);
  keep.Set("buffers", buffers);
  keep.Set("results", results);
  auto* worker = new BatchWorker(info[6].As<Napi::Function>(), std::move(ops),
                                 keep, results.Data());
  worker->Queue();
  return env.Undefined();
}

}  // namespace

void InitBatchIo(Napi::Env env, Napi::Object exports) {
  exports.Set("ioBatch", Napi::Function::New(env, IoBatch, "ioBatch"));
}

}  // namespace vdisk
