// Shared plumbing for the vdisk addon: errno errors, argument checks and the
// promise-returning thread-pool worker. Every exported function reports
// failure by leaving a pending JS exception and returning; nothing here throws
// C++ exceptions (the addon is built with -fno-exceptions).
#ifndef VDISK_NATIVE_COMMON_H_
#define VDISK_NATIVE_COMMON_H_

#include <napi.h>

#include <cerrno>
#include <cstdint>
#include <functional>
#include <string>

namespace vdisk {

// Builds `Error("<syscall>: <strerror>")` with .code (errno name), .errno
// (positive number) and .syscall, the same shape Node's own fs errors have, so
// callers can branch on .code without parsing messages.
Napi::Error ErrnoError(Napi::Env env, const char* syscall, int err);
void ThrowErrno(Napi::Env env, const char* syscall, int err);

// What non-Linux builds throw for every syscall wrapper: the JS side treats it
// like a file system that lacks the feature.
void ThrowNotSupported(Napi::Env env, const char* syscall);

// Throws a RangeError ("The value of \"name\" is out of range. It must be
// <expected>. Received <got>"), code ERR_OUT_OF_RANGE.
void ThrowRange(Napi::Env env, const char* name, const char* expected,
                double got);

// Throws a TypeError carrying a Node-style .code (ERR_INVALID_ARG_VALUE ...).
void ThrowTypeError(Napi::Env env, const char* code, const std::string& msg);

// Argument readers. On a bad argument they leave a TypeError (wrong type) or
// RangeError (right type, unusable value) pending and return false; the caller
// must then return at once.
bool ArgCount(const Napi::CallbackInfo& info, size_t n);
bool ArgFd(const Napi::CallbackInfo& info, size_t i, const char* name, int* out);
// A non-negative safe integer (offsets and lengths).
bool ArgUint(const Napi::CallbackInfo& info, size_t i, const char* name,
             int64_t* out);
// Any int32 (flag words such as fallocate modes and fadvise advice).
bool ArgInt32(const Napi::CallbackInfo& info, size_t i, const char* name,
              int32_t* out);

// Runs a syscall with EINTR retry; returns 0 or the errno it failed with.
// Signals hitting a libuv worker thread must not surface as JS errors.
template <typename F>
int RetryEintr(F&& call) {
  for (;;) {
    if (call() != -1) return 0;
    if (errno != EINTR) return errno;
  }
}

// Runs `op` on the libuv thread pool and returns a promise for it: resolved
// with undefined when op returns 0, rejected with ErrnoError(syscall, op())
// otherwise. `op` must not touch JS values; capture plain numbers only.
Napi::Value RunAsync(Napi::Env env, const char* syscall,
                     std::function<int()> op);

}  // namespace vdisk

#endif  // VDISK_NATIVE_COMMON_H_
