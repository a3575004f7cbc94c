// Block-device geometry. fs.fstat reports size 0 for a block device, so raw
// images on /dev/... need the ioctls to learn their capacity and the sector
// size O_DIRECT I/O must be aligned to.
#include "common.h"
#include "init.h"

#ifdef __linux__
#include <linux/fs.h>
#include <sys/ioctl.h>

#include <cstdint>
#endif

namespace vdisk {
namespace {

#ifdef __linux__

Napi::Value BlockDeviceSize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ArgCount(info, 1) || !ArgFd(info, 0, "fd", &fd)) return env.Undefined();
  uint64_t bytes = 0;
  int err = RetryEintr([&] { return ioctl(fd, BLKGETSIZE64, &bytes); });
  if (err != 0) {
    ThrowErrno(env, "ioctl(BLKGETSIZE64)", err);
    return env.Undefined();
  }
  // Exact for any device below 8 PiB, which is every device there is.
  return Napi::Number::New(env, static_cast<double>(bytes));
}

Napi::Value BlockSectorSize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ArgCount(info, 1) || !ArgFd(info, 0, "fd", &fd)) return env.Undefined();
  int sector = 0;
  int err = RetryEintr([&] { return ioctl(fd, BLKSSZGET, &sector); });
  if (err != 0) {
    ThrowErrno(env, "ioctl(BLKSSZGET)", err);
    return env.Undefined();
  }
  return Napi::Number::New(env, sector);
}

#else

Napi::Value BlockDeviceSize(const Napi::CallbackInfo& info) {
  ThrowNotSupported(info.Env(), "ioctl(BLKGETSIZE64)");
  return info.Env().Undefined();
}

Napi::Value BlockSectorSize(const Napi::CallbackInfo& info) {
  ThrowNotSupported(info.Env(), "ioctl(BLKSSZGET)");
  return info.Env().Undefined();
}

#endif

}  // namespace

void InitBlockDev(Napi::Env env, Napi::Object exports) {
  exports.Set("blockDeviceSize",
              Napi::Function::New(env, BlockDeviceSize, "blockDeviceSize"));
  exports.Set("blockSectorSize",
              Napi::Function::New(env, BlockSectorSize, "blockSectorSize"));
}

}  // namespace vdisk
