// sync_file_range(2): start or wait for writeback of one range without a
// full fdatasync. Dirty pages cannot be dropped from the page cache, so
// evicting what a buffered copy wrote (cache=none where O_DIRECT is refused)
// starts writeback as each write lands and waits for it only once the range
// has fallen behind the copy window.
#include "common.h"
#include "init.h"

#ifdef __linux__
#include <fcntl.h>

// src/native/index.ts hard-codes these (SYNC_FILE_RANGE).
static_assert(SYNC_FILE_RANGE_WAIT_BEFORE == 1, "WAIT_BEFORE");
static_assert(SYNC_FILE_RANGE_WRITE == 2, "WRITE");
static_assert(SYNC_FILE_RANGE_WAIT_AFTER == 4, "WAIT_AFTER");
#endif

namespace vdisk {
namespace {

// syncFileRange(fd, offset, length, flags) on the thread pool: even a plain
// WRITE can block while the device queue is full. length 0 = to end of file.
Napi::Value SyncFileRange(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  int64_t offset, length;
  int32_t flags;
  if (!ArgCount(info, 4) || !ArgFd(info, 0, "fd", &fd) ||
      !ArgUint(info, 1, "offset", &offset) ||
      !ArgUint(info, 2, "length", &length) ||
      !ArgInt32(info, 3, "flags", &flags))
    return env.Undefined();
#ifdef __linux__
  return RunAsync(env, "sync_file_range", [=] {
    return RetryEintr([&] {
      return sync_file_range(fd, static_cast<off_t>(offset),
                             static_cast<off_t>(length),
                             static_cast<unsigned int>(flags));
    });
  });
#else
  ThrowNotSupported(env, "sync_file_range");
  return env.Undefined();
#endif
}

}  // namespace

void InitWriteback(Napi::Env env, Napi::Object exports) {
  exports.Set("syncFileRange",
              Napi::Function::New(env, SyncFileRange, "syncFileRange"));
}

}  // namespace vdisk
