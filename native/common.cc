#include "common.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <utility>

namespace vdisk {
namespace {

// Our own table rather than libuv's uv_err_name: libuv calls 95 "ENOTSUP"
// while the kernel (and the fallocate/ioctl man pages callers read) call it
// EOPNOTSUPP, and the JS side checks for that name.
const char* ErrnoName(int err) {
  switch (err) {
#define VDISK_ERRNO(name) \
  case name:              \
    return #name;
    VDISK_ERRNO(EPERM)
    VDISK_ERRNO(ENOENT)
    VDISK_ERRNO(EINTR)
    VDISK_ERRNO(EIO)
    VDISK_ERRNO(ENXIO)
    VDISK_ERRNO(EBADF)
    VDISK_ERRNO(EAGAIN)
    VDISK_ERRNO(ENOMEM)
    VDISK_ERRNO(EACCES)
    VDISK_ERRNO(EFAULT)
    VDISK_ERRNO(EBUSY)
    VDISK_ERRNO(EEXIST)
    VDISK_ERRNO(EXDEV)
    VDISK_ERRNO(ENODEV)
    VDISK_ERRNO(ENOTDIR)
    VDISK_ERRNO(EISDIR)
    VDISK_ERRNO(EINVAL)
    VDISK_ERRNO(ENFILE)
    VDISK_ERRNO(EMFILE)
    VDISK_ERRNO(ENOTTY)
    VDISK_ERRNO(ETXTBSY)
    VDISK_ERRNO(EFBIG)
    VDISK_ERRNO(ENOSPC)
    VDISK_ERRNO(ESPIPE)
    VDISK_ERRNO(EROFS)
    VDISK_ERRNO(EDEADLK)
    VDISK_ERRNO(ENOLCK)
    VDISK_ERRNO(ENOSYS)
    VDISK_ERRNO(EOVERFLOW)
    VDISK_ERRNO(EOPNOTSUPP)
#if ENOTSUP != EOPNOTSUPP
    VDISK_ERRNO(ENOTSUP)
#endif
#if EWOULDBLOCK != EAGAIN
    VDISK_ERRNO(EWOULDBLOCK)
#endif
#ifdef EDQUOT
    VDISK_ERRNO(EDQUOT)
#endif
#undef VDISK_ERRNO
    default:
      break;
  }
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 32)
  if (const char* name = strerrorname_np(err)) return name;
#endif
  return "UNKNOWN";
}

// strerror_r comes in a GNU flavour (returns char*) and an XSI one (returns
// int); overloads pick whichever this libc declares. strerror itself is not
// thread-safe and the pool threads may be using it.
[[maybe_unused]] const char* StrerrorResult(int rc, const char* buf) {
  return rc == 0 ? buf : "Unknown error";
}
[[maybe_unused]] const char* StrerrorResult(const char* msg, const char*) {
  return msg;
}

std::string Describe(int err) {
  char buf[128] = {0};
#ifdef _WIN32
  strerror_s(buf, sizeof buf, err);
  return buf;
#else
  return StrerrorResult(strerror_r(err, buf, sizeof buf), buf);
#endif
}

void ThrowWithCode(Napi::Error err, const char* code) {
  err.Set("code", Napi::String::New(err.Env(), code));
  err.ThrowAsJavaScriptException();
}

void ThrowType(Napi::Env env, const char* name, const char* expected) {
  std::string msg = std::string("The \"") + name + "\" argument must be " +
                    expected;
  ThrowWithCode(Napi::TypeError::New(env, msg), "ERR_INVALID_ARG_TYPE");
}

}  // namespace

void ThrowRange(Napi::Env env, const char* name, const char* expected,
                double got) {
  char shown[64];
  std::snprintf(shown, sizeof shown, "%.17g", got);
  std::string msg = std::string("The value of \"") + name +
                    "\" is out of range. It must be " + expected +
                    ". Received " + shown;
  ThrowWithCode(Napi::RangeError::New(env, msg), "ERR_OUT_OF_RANGE");
}

namespace {

// Reads argument i as a number that is an integer within [lo, hi]. JS numbers
// are doubles, so a plain Int64Value() would silently truncate 1.5 or map NaN
// to 0 and hand the kernel a different offset than the caller meant.
bool ArgInteger(const Napi::CallbackInfo& info, size_t i, const char* name,
                double lo, double hi, const char* expected, int64_t* out) {
  Napi::Value v = info[i];
  if (!v.IsNumber()) {
    ThrowType(info.Env(), name, "of type number");
    return false;
  }
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || std::trunc(d) != d || d < lo || d > hi) {
    ThrowRange(info.Env(), name, expected, d);
    return false;
  }
  *out = v.As<Napi::Number>().Int64Value();
  return true;
}

constexpr double kMaxSafeInteger = 9007199254740991.0;  // 2^53 - 1

class PromiseWorker : public Napi::AsyncWorker {
 public:
  PromiseWorker(Napi::Env env, const char* syscall, std::function<int()> op)
      : Napi::AsyncWorker(env, syscall),
        deferred_(Napi::Promise::Deferred::New(env)),
        syscall_(syscall),
        op_(std::move(op)) {}

  Napi::Promise Promise() const { return deferred_.Promise(); }

  void Execute() override { err_ = op_(); }

  // Settle from OnOK rather than SetError/OnError: SetError only carries a
  // message string, and the rejection needs .code/.errno.
  void OnOK() override {
    if (err_ == 0) {
      deferred_.Resolve(Env().Undefined());
    } else {
      deferred_.Reject(ErrnoError(Env(), syscall_, err_).Value());
    }
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  const char* syscall_;  // always a string literal
  std::function<int()> op_;
  int err_ = 0;
};

}  // namespace

Napi::Error ErrnoError(Napi::Env env, const char* syscall, int err) {
  std::string msg = std::string(syscall) + ": " + Describe(err);
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, ErrnoName(err)));
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("syscall", Napi::String::New(env, syscall));
  return e;
}

void ThrowErrno(Napi::Env env, const char* syscall, int err) {
  ErrnoError(env, syscall, err).ThrowAsJavaScriptException();
}

void ThrowNotSupported(Napi::Env env, const char* syscall) {
  ThrowErrno(env, syscall, ENOTSUP);
}

void ThrowTypeError(Napi::Env env, const char* code, const std::string& msg) {
  ThrowWithCode(Napi::TypeError::New(env, msg), code);
}

bool ArgCount(const Napi::CallbackInfo& info, size_t n) {
  if (info.Length() >= n) return true;
  std::string msg = "Expected " + std::to_string(n) + " argument" +
                    (n == 1 ? "" : "s") + ", got " +
                    std::to_string(info.Length());
  ThrowWithCode(Napi::TypeError::New(info.Env(), msg), "ERR_MISSING_ARGS");
  return false;
}

bool ArgFd(const Napi::CallbackInfo& info, size_t i, const char* name,
           int* out) {
  int64_t v;
  if (!ArgInteger(info, i, name, 0, 2147483647.0, ">= 0 && <= 2147483647", &v))
    return false;
  *out = static_cast<int>(v);
  return true;
}

bool ArgUint(const Napi::CallbackInfo& info, size_t i, const char* name,
             int64_t* out) {
  return ArgInteger(info, i, name, 0, kMaxSafeInteger,
                    ">= 0 && <= 9007199254740991", out);
}

bool ArgInt32(const Napi::CallbackInfo& info, size_t i, const char* name,
              int32_t* out) {
  int64_t v;
  if (!ArgInteger(info, i, name, -2147483648.0, 2147483647.0,
                  ">= -2147483648 && <= 2147483647", &v))
    return false;
  *out = static_cast<int32_t>(v);
  return true;
}

Napi::Value RunAsync(Napi::Env env, const char* syscall,
                     std::function<int()> op) {
  // The worker deletes itself after OnOK/OnError (AsyncWorker::Destroy).
  auto* worker = new PromiseWorker(env, syscall, std::move(op));
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

}  // namespace vdisk
