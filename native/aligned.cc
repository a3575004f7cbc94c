// alignedBuffer: zero-filled Uint8Arrays whose memory starts on a chosen
// boundary. O_DIRECT (cache=none) needs buffer addresses aligned to the
// device's logical block size, and JS has no way to ask for that: ArrayBuffer
// memory is only malloc-aligned.
#include <cstddef>
#include <cstdint>

#include "common.h"
#include "init.h"

namespace vdisk {
namespace {

// Beyond this nobody needs alignment; it also bounds the slack per buffer.
constexpr int64_t kMaxAlignment = 1 << 20;

// Over-allocates an ordinary ArrayBuffer and returns a Uint8Array view that
// starts on the boundary. Keeping the memory a plain V8 allocation (rather
// than posix_memalign + an external ArrayBuffer) matters: V8 frees it during
// GC like any Buffer, whereas external-buffer finalizers only run on a later
// event-loop turn, so a burst of bounce buffers would pile up meanwhile.
// Off-heap ArrayBuffer backing stores never move, so the alignment holds for
// the buffer's lifetime.
Napi::Value AlignedBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t size, alignment;
  if (!ArgCount(info, 2) || !ArgUint(info, 0, "size", &size) ||
      !ArgUint(info, 1, "alignment", &alignment))
    return env.Undefined();
  if (alignment < 1 || alignment > kMaxAlignment ||
      (alignment & (alignment - 1)) != 0) {
    ThrowTypeError(env, "ERR_INVALID_ARG_VALUE",
                   "The \"alignment\" argument must be a power of two "
                   "between 1 and 1048576");
    return env.Undefined();
  }
  // Through the JS constructor rather than napi_create_arraybuffer: on a size
  // V8 cannot allocate, the constructor throws a RangeError while the N-API
  // call aborts the whole process. The memory arrives zero-filled.
  Napi::Value ctor = env.Global().Get("ArrayBuffer");
  if (env.IsExceptionPending()) return env.Undefined();
  Napi::Value created = ctor.As<Napi::Function>().New(
      {Napi::Number::New(env, static_cast<double>(size + alignment - 1))});
  if (env.IsExceptionPending() || !created.IsArrayBuffer())
    return env.Undefined();
  Napi::ArrayBuffer ab = created.As<Napi::ArrayBuffer>();
  // It exists, so size fits in size_t even on 32-bit targets.
  size_t align = static_cast<size_t>(alignment);
  uintptr_t addr = reinterpret_cast<uintptr_t>(ab.Data());
  size_t offset = static_cast<size_t>((align - addr % align) % align);
  return Napi::Uint8Array::New(env, static_cast<size_t>(size), ab, offset);
}

}  // namespace

void InitAligned(Napi::Env env, Napi::Object exports) {
  exports.Set("alignedBuffer",
              Napi::Function::New(env, AlignedBuffer, "alignedBuffer"));
}

}  // namespace vdisk
