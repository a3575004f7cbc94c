// Sparse-file and cache syscalls Node's fs lacks: lseek(SEEK_DATA/SEEK_HOLE),
// fallocate, posix_fadvise, fdatasync, the reflink ioctls and copy_file_range.
#include "common.h"
#include "init.h"

#ifdef __linux__
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <unistd.h>

// node-gyp builds with _FILE_OFFSET_BITS=64; if that ever changed, offsets
// past 2 GiB would be truncated silently on 32-bit targets.
static_assert(sizeof(off_t) >= 8, "vdisk needs a 64-bit off_t");

// src/native/index.ts hard-codes these so it can export them without the
// addon; fail the build rather than let the two drift.
static_assert(FALLOC_FL_KEEP_SIZE == 0x01, "FALLOC.KEEP_SIZE");
static_assert(FALLOC_FL_PUNCH_HOLE == 0x02, "FALLOC.PUNCH_HOLE");
static_assert(FALLOC_FL_COLLAPSE_RANGE == 0x08, "FALLOC.COLLAPSE_RANGE");
static_assert(FALLOC_FL_ZERO_RANGE == 0x10, "FALLOC.ZERO_RANGE");
static_assert(FALLOC_FL_INSERT_RANGE == 0x20, "FALLOC.INSERT_RANGE");
#endif

namespace vdisk {
namespace {

#ifdef __linux__
// Shared body of seekData/seekHole. ENXIO means "no data (or hole) at or
// after offset", an ordinary answer when walking a file, so it maps to -1
// instead of an exception.
Napi::Value Seek(const Napi::CallbackInfo& info, int whence) {
  Napi::Env env = info.Env();
  int fd;
  int64_t offset;
  if (!ArgCount(info, 2) || !ArgFd(info, 0, "fd", &fd) ||
      !ArgUint(info, 1, "offset", &offset))
    return env.Undefined();
  off_t pos = lseek(fd, static_cast<off_t>(offset), whence);
  if (pos == -1) {
    if (errno == ENXIO) return Napi::Number::New(env, -1);
    ThrowErrno(env, "lseek", errno);
    return env.Undefined();
  }
  return Napi::Number::New(env, static_cast<double>(pos));
}

Napi::Value SeekData(const Napi::CallbackInfo& info) {
  return Seek(info, SEEK_DATA);
}

Napi::Value SeekHole(const Napi::CallbackInfo& info) {
  return Seek(info, SEEK_HOLE);
}

Napi::Value Fallocate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  int32_t mode;
  int64_t offset, length;
  if (!ArgCount(info, 4) || !ArgFd(info, 0, "fd", &fd) ||
      !ArgInt32(info, 1, "mode", &mode) ||
      !ArgUint(info, 2, "offset", &offset) ||
      !ArgUint(info, 3, "length", &length))
    return env.Undefined();
  // Allocation can mean zeroing or journalling many extents: thread pool.
  return RunAsync(env, "fallocate", [=] {
    return RetryEintr([&] {
      return fallocate(fd, mode, static_cast<off_t>(offset),
                       static_cast<off_t>(length));
    });
  });
}

// The JS side passes the generic Linux numbering (FADV in index.ts). A few
// architectures (s390x) number DONTNEED/NOREUSE differently, so translate
// instead of passing the number through.
bool AdviceFromJs(int32_t advice, int* out) {
  static const int kAdvice[] = {
      POSIX_FADV_NORMAL,   POSIX_FADV_RANDOM,   POSIX_FADV_SEQUENTIAL,
      POSIX_FADV_WILLNEED, POSIX_FADV_DONTNEED, POSIX_FADV_NOREUSE,
  };
  constexpr int32_t kCount = sizeof kAdvice / sizeof kAdvice[0];
  if (advice < 0 || advice >= kCount) return false;
  *out = kAdvice[advice];
  return true;
}

Napi::Value Fadvise(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  int64_t offset, length;
  int32_t advice;
  if (!ArgCount(info, 4) || !ArgFd(info, 0, "fd", &fd) ||
      !ArgUint(info, 1, "offset", &offset) ||
      !ArgUint(info, 2, "length", &length) ||
      !ArgInt32(info, 3, "advice", &advice))
    return env.Undefined();
  int native_advice;
  if (!AdviceFromJs(advice, &native_advice)) {
    ThrowErrno(env, "posix_fadvise", EINVAL);
    return env.Undefined();
  }
  // posix_fadvise returns the error number rather than setting errno.
  int err = posix_fadvise(fd, static_cast<off_t>(offset),
                          static_cast<off_t>(length), native_advice);
  if (err != 0) ThrowErrno(env, "posix_fadvise", err);
  return env.Undefined();
}

Napi::Value Fdatasync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ArgCount(info, 1) || !ArgFd(info, 0, "fd", &fd)) return env.Undefined();
  return RunAsync(env, "fdatasync",
                  [=] { return RetryEintr([&] { return fdatasync(fd); }); });
}

Napi::Value Ficlone(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int dest_fd, src_fd;
  if (!ArgCount(info, 2) || !ArgFd(info, 0, "destFd", &dest_fd) ||
      !ArgFd(info, 1, "srcFd", &src_fd))
    return env.Undefined();
#ifdef FICLONE
  return RunAsync(env, "ioctl(FICLONE)", [=] {
    return RetryEintr([&] { return ioctl(dest_fd, FICLONE, src_fd); });
  });
#else
  ThrowNotSupported(env, "ioctl(FICLONE)");
  return env.Undefined();
#endif
}

Napi::Value FicloneRange(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int src_fd, dest_fd;
  int64_t src_offset, length, dest_offset;
  if (!ArgCount(info, 5) || !ArgFd(info, 0, "srcFd", &src_fd) ||
      !ArgUint(info, 1, "srcOffset", &src_offset) ||
      !ArgUint(info, 2, "length", &length) ||
      !ArgFd(info, 3, "destFd", &dest_fd) ||
      !ArgUint(info, 4, "destOffset", &dest_offset))
    return env.Undefined();
#ifdef FICLONERANGE
  return RunAsync(env, "ioctl(FICLONERANGE)", [=] {
    struct file_clone_range range = {};
    range.src_fd = src_fd;
    range.src_offset = static_cast<__u64>(src_offset);
    range.src_length = static_cast<__u64>(length);  // 0 = to end of source
    range.dest_offset = static_cast<__u64>(dest_offset);
    return RetryEintr([&] { return ioctl(dest_fd, FICLONERANGE, &range); });
  });
#else
  ThrowNotSupported(env, "ioctl(FICLONERANGE)");
  return env.Undefined();
#endif
}

// copy_file_range(2) until all `length` bytes are copied: the kernel moves
// them from page cache to page cache (or shares the extents, on XFS and btrfs)
// without the two copies through a user buffer that read + write make. A
// source that ends first fails with ENODATA. EXDEV, EINVAL, EOPNOTSUPP and
// ENOSYS mean these two files cannot be copied this way: the caller copies.
Napi::Value CopyFileRange(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int src_fd, dest_fd;
  int64_t src_offset, dest_offset, length;
  if (!ArgCount(info, 5) || !ArgFd(info, 0, "srcFd", &src_fd) ||
      !ArgUint(info, 1, "srcOffset", &src_offset) ||
      !ArgFd(info, 2, "destFd", &dest_fd) ||
      !ArgUint(info, 3, "destOffset", &dest_offset) ||
      !ArgUint(info, 4, "length", &length))
    return env.Undefined();
  return RunAsync(env, "copy_file_range", [=] {
    loff_t in = static_cast<loff_t>(src_offset);
    loff_t out = static_cast<loff_t>(dest_offset);
    int64_t left = length;
    while (left > 0) {
      ssize_t n = copy_file_range(src_fd, &in, dest_fd, &out,
                                  static_cast<size_t>(left), 0);
      if (n < 0) {
        if (errno == EINTR) continue;
        return errno;
      }
      if (n == 0) return ENODATA;
      left -= n;
    }
    return 0;
  });
}

#else  // !__linux__

// Same names and arity elsewhere so the JS side sees one shape; every call
// reports ENOTSUP and vdisk falls back to its portable paths.
#define VDISK_UNSUPPORTED(fn, syscall)                     \
  Napi::Value fn(const Napi::CallbackInfo& info) {         \
    ThrowNotSupported(info.Env(), syscall);                \
    return info.Env().Undefined();                         \
  }
VDISK_UNSUPPORTED(SeekData, "lseek")
VDISK_UNSUPPORTED(SeekHole, "lseek")
VDISK_UNSUPPORTED(Fallocate, "fallocate")
VDISK_UNSUPPORTED(Fadvise, "posix_fadvise")
VDISK_UNSUPPORTED(Fdatasync, "fdatasync")
VDISK_UNSUPPORTED(Ficlone, "ioctl(FICLONE)")
VDISK_UNSUPPORTED(FicloneRange, "ioctl(FICLONERANGE)")
VDISK_UNSUPPORTED(CopyFileRange, "copy_file_range")
#undef VDISK_UNSUPPORTED

#endif  // __linux__

}  // namespace

void InitFileOps(Napi::Env env, Napi::Object exports) {
  exports.Set("seekData", Napi::Function::New(env, SeekData, "seekData"));
  exports.Set("seekHole", Napi::Function::New(env, SeekHole, "seekHole"));
  exports.Set("fallocate", Napi::Function::New(env, Fallocate, "fallocate"));
  exports.Set("fadvise", Napi::Function::New(env, Fadvise, "fadvise"));
  exports.Set("fdatasync", Napi::Function::New(env, Fdatasync, "fdatasync"));
  exports.Set("ficlone", Napi::Function::New(env, Ficlone, "ficlone"));
  exports.Set("ficloneRange",
              Napi::Function::New(env, FicloneRange, "ficloneRange"));
  exports.Set("copyFileRange",
              Napi::Function::New(env, CopyFileRange, "copyFileRange"));
}

}  // namespace vdisk
