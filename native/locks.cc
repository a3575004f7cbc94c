// Open-file-description byte-range locks (F_OFD_SETLK / F_OFD_GETLK).
// vdisk uses them instead of classic POSIX locks because those belong to the
// process: any close() of the same file anywhere in Node would drop them, and
// two handles in one process would never conflict. OFD locks belong to the
// open file, so separate fs.open() handles do exclude each other, and closing
// the last fd of a description releases its locks.
#include "common.h"
#include "init.h"

#ifdef __linux__
#include <fcntl.h>
#endif

namespace vdisk {
namespace {

#if defined(__linux__) && defined(F_OFD_SETLK)

bool ArgLockType(const Napi::CallbackInfo& info, size_t i, bool allow_unlock,
                 short* out) {
  const char* expected = allow_unlock ? "'read', 'write' or 'unlock'"
                                      : "'read' or 'write'";
  Napi::Value v = info[i];
  if (!v.IsString()) {
    ThrowTypeError(info.Env(), "ERR_INVALID_ARG_TYPE",
                   std::string("The \"type\" argument must be ") + expected);
    return false;
  }
  std::string s = v.As<Napi::String>().Utf8Value();
  if (s == "read") {
    *out = F_RDLCK;
  } else if (s == "write") {
    *out = F_WRLCK;
  } else if (allow_unlock && s == "unlock") {
    *out = F_UNLCK;
  } else {
    ThrowTypeError(info.Env(), "ERR_INVALID_ARG_VALUE",
                   std::string("The \"type\" argument must be ") + expected +
                       ". Received '" + s + "'");
    return false;
  }
  return true;
}

// Reads (fd, type, start, length) into a flock. length 0 means "to the end of
// the file, however far it grows", as in fcntl(2).
bool ArgLock(const Napi::CallbackInfo& info, bool allow_unlock, int* fd,
             struct flock* fl) {
  short type;
  int64_t start, length;
  if (!ArgCount(info, 4) || !ArgFd(info, 0, "fd", fd) ||
      !ArgLockType(info, 1, allow_unlock, &type) ||
      !ArgUint(info, 2, "start", &start) ||
      !ArgUint(info, 3, "length", &length))
    return false;
  *fl = {};
  fl->l_type = type;
  fl->l_whence = SEEK_SET;
  fl->l_start = static_cast<off_t>(start);
  fl->l_len = static_cast<off_t>(length);
  fl->l_pid = 0;  // the kernel rejects OFD requests with a non-zero l_pid
  return true;
}

Napi::Value OfdSetLock(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  struct flock fl;
  if (!ArgLock(info, true, &fd, &fl)) return env.Undefined();
  int err = RetryEintr([&] { return fcntl(fd, F_OFD_SETLK, &fl); });
  // Both spellings of "someone else holds a conflicting lock" exist in the
  // wild (POSIX allows either); the caller only needs a yes/no.
  if (err == EAGAIN || err == EACCES) return Napi::Boolean::New(env, false);
  if (err != 0) {
    ThrowErrno(env, "fcntl(F_OFD_SETLK)", err);
    return env.Undefined();
  }
  return Napi::Boolean::New(env, true);
}

Napi::Value OfdGetLock(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  struct flock fl;
  if (!ArgLock(info, false, &fd, &fl)) return env.Undefined();
  int err = RetryEintr([&] { return fcntl(fd, F_OFD_GETLK, &fl); });
  if (err != 0) {
    ThrowErrno(env, "fcntl(F_OFD_GETLK)", err);
    return env.Undefined();
  }
  if (fl.l_type == F_UNLCK) return env.Null();
  Napi::Object holder = Napi::Object::New(env);
  holder.Set("type", fl.l_type == F_WRLCK ? "write" : "read");
  holder.Set("start", Napi::Number::New(env, static_cast<double>(fl.l_start)));
  holder.Set("length", Napi::Number::New(env, static_cast<double>(fl.l_len)));
  // -1 when the holder is an OFD lock (it has no owning process).
  holder.Set("pid", Napi::Number::New(env, fl.l_pid));
  return holder;
}

#else  // no OFD locks on this platform

Napi::Value OfdSetLock(const Napi::CallbackInfo& info) {
  ThrowNotSupported(info.Env(), "fcntl(F_OFD_SETLK)");
  return info.Env().Undefined();
}

Napi::Value OfdGetLock(const Napi::CallbackInfo& info) {
  ThrowNotSupported(info.Env(), "fcntl(F_OFD_GETLK)");
  return info.Env().Undefined();
}

#endif

}  // namespace

void InitLocks(Napi::Env env, Napi::Object exports) {
  exports.Set("ofdSetLock", Napi::Function::New(env, OfdSetLock, "ofdSetLock"));
  exports.Set("ofdGetLock", Napi::Function::New(env, OfdGetLock, "ofdGetLock"));
}

}  // namespace vdisk
