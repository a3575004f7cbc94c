// What O_DIRECT (cache=none) needs to know: how the file's direct I/O must be
// aligned, and whether a buffer's memory already is. JS sees neither a file
// system's alignment rules nor a buffer's address.
#include <cstdint>

#include "common.h"
#include "init.h"

#ifdef __linux__
#include <fcntl.h>
#include <sys/stat.h>
#endif

namespace vdisk {
namespace {

// dioAlignment(fd) -> [memoryAlignment, offsetAlignment] from
// statx(STATX_DIOALIGN) (Linux 6.1+; [0, 0] when the file takes no direct I/O
// at all), or null when the kernel or file system does not say, in which case
// the caller assumes the largest common logical block size.
Napi::Value DioAlignment(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ArgCount(info, 1) || !ArgFd(info, 0, "fd", &fd)) return env.Undefined();
#if defined(__linux__) && defined(STATX_DIOALIGN)
  struct statx stx = {};
  if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) != 0) {
    // ENOSYS: a kernel (or seccomp filter) without statx is "unknown".
    if (errno == ENOSYS) return env.Null();
    ThrowErrno(env, "statx", errno);
    return env.Undefined();
  }
  if ((stx.stx_mask & STATX_DIOALIGN) == 0) return env.Null();
  Napi::Array out = Napi::Array::New(env, 2);
  out.Set(0u, Napi::Number::New(env, stx.stx_dio_mem_align));
  out.Set(1u, Napi::Number::New(env, stx.stx_dio_offset_align));
  return out;
#else
  return env.Null();
#endif
}

// isAlignedBuffer(view, alignment): whether the view's first byte sits on an
// `alignment`-byte boundary, so O_DIRECT can use it without a bounce copy.
Napi::Value IsAlignedBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t alignment;
  if (!ArgCount(info, 2)) return env.Undefined();
  if (!info[0].IsTypedArray()) {
    ThrowTypeError(env, "ERR_INVALID_ARG_TYPE",
                   "The \"buffer\" argument must be a TypedArray");
    return env.Undefined();
  }
  if (!ArgUint(info, 1, "alignment", &alignment)) return env.Undefined();
  if (alignment < 1 || (alignment & (alignment - 1)) != 0) {
    ThrowTypeError(env, "ERR_INVALID_ARG_VALUE",
                   "The \"alignment\" argument must be a power of two");
    return env.Undefined();
  }
  Napi::TypedArray view = info[0].As<Napi::TypedArray>();
  uintptr_t addr = reinterpret_cast<uintptr_t>(view.ArrayBuffer().Data()) +
                   view.ByteOffset();
  return Napi::Boolean::New(
      env, addr % static_cast<uintptr_t>(alignment) == 0);
}

}  // namespace

void InitDirectIo(Napi::Env env, Napi::Object exports) {
  exports.Set("dioAlignment",
              Napi::Function::New(env, DioAlignment, "dioAlignment"));
  exports.Set("isAlignedBuffer",
              Napi::Function::New(env, IsAlignedBuffer, "isAlignedBuffer"));
}

}  // namespace vdisk
