// mapData: many SEEK_DATA/SEEK_HOLE steps in one call. Walking a large sparse
// file one run per JS call pays the N-API crossing and the async layers above
// it twice per run; batching lets the file driver answer most block-status
// queries from memory.
#include "datamap.h"

#include <algorithm>
#include <cerrno>
#include <vector>

#include "common.h"
#include "init.h"

#ifdef __linux__
#include <unistd.h>
#endif

namespace vdisk {

int64_t WalkData(int fd, int64_t offset, int64_t end, double* out, size_t capacity) {
#ifdef __linux__
  size_t n = 1;
  int64_t pos = offset;
  while (pos < end && n + 2 <= capacity) {
    off_t data = lseek(fd, static_cast<off_t>(pos), SEEK_DATA);
    if (data == -1) {
      if (errno != ENXIO) return -errno;
      pos = end;  // only holes from here to EOF
      break;
    }
    if (data >= end) {
      pos = end;
      break;
    }
    off_t hole = lseek(fd, data, SEEK_HOLE);
    if (hole == -1) {
      // The file shrank between the two calls: what is left reads as a hole.
      if (errno != ENXIO) return -errno;
      pos = end;
      break;
    }
    int64_t stop = hole < end ? static_cast<int64_t>(hole) : end;
    out[n++] = static_cast<double>(data);
    out[n++] = static_cast<double>(stop);
    pos = stop;
  }
  out[0] = static_cast<double>(pos);
  return static_cast<int64_t>(n);
#else
  (void)fd, (void)offset, (void)end, (void)out, (void)capacity;
  return -ENOSYS;
#endif
}

namespace {

// mapData(fd, offset, end, maxRuns) -> Float64Array [scannedTo, s0, e0, s1, e1, ...]
// (WalkData's answer, at most maxRuns runs).
Napi::Value MapData(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  int64_t offset, end, max_runs;
  if (!ArgCount(info, 4) || !ArgFd(info, 0, "fd", &fd) ||
      !ArgUint(info, 1, "offset", &offset) || !ArgUint(info, 2, "end", &end) ||
      !ArgUint(info, 3, "maxRuns", &max_runs))
    return env.Undefined();
  // Room for the runs asked for, up to a million (16 MiB); more only shortens the answer.
  std::vector<double> out(1 + 2 * static_cast<size_t>(std::min<int64_t>(max_runs, 1 << 20)));
  int64_t n = WalkData(fd, offset, end, out.data(), out.size());
  if (n == -ENOSYS) {
    ThrowNotSupported(env, "lseek");
    return env.Undefined();
  }
  if (n < 0) {
    ThrowErrno(env, "lseek", static_cast<int>(-n));
    return env.Undefined();
  }
  Napi::Float64Array result = Napi::Float64Array::New(env, static_cast<size_t>(n));
  std::copy(out.begin(), out.begin() + n, result.Data());
  return result;
}

}  // namespace

void InitDataMap(Napi::Env env, Napi::Object exports) {
  exports.Set("mapData", Napi::Function::New(env, MapData, "mapData"));
}

}  // namespace vdisk
