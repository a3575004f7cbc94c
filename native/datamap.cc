// mapData: many SEEK_DATA/SEEK_HOLE steps in one call. Walking a large sparse
// file one run per JS call pays the N-API crossing and the async layers above
// it twice per run; batching lets the file driver answer most block-status
// queries from memory.
#include "common.h"
#include "init.h"

#ifdef __linux__
#include <unistd.h>

#include <vector>
#endif

namespace vdisk {
namespace {

// mapData(fd, offset, end, maxRuns) -> Float64Array [scannedTo, s0, e0, s1, e1, ...]
// Every byte of [offset, scannedTo) is described: the listed [s, e) runs are
// data, the rest are holes. scannedTo < end only when maxRuns was reached.
Napi::Value MapData(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  int64_t offset, end, max_runs;
  if (!ArgCount(info, 4) || !ArgFd(info, 0, "fd", &fd) ||
      !ArgUint(info, 1, "offset", &offset) || !ArgUint(info, 2, "end", &end) ||
      !ArgUint(info, 3, "maxRuns", &max_runs))
    return env.Undefined();
#ifdef __linux__
  std::vector<double> out;
  out.push_back(0);
  int64_t pos = offset;
  int64_t runs = 0;
  while (pos < end && runs < max_runs) {
    off_t data = lseek(fd, static_cast<off_t>(pos), SEEK_DATA);
    if (data == -1) {
      if (errno == ENXIO) {  // only holes from here to EOF
        pos = end;
        break;
      }
      ThrowErrno(env, "lseek", errno);
      return env.Undefined();
    }
    if (data >= end) {
      pos = end;
      break;
    }
    off_t hole = lseek(fd, data, SEEK_HOLE);
    if (hole == -1) {
      // The file shrank between the two calls: what is left reads as a hole.
      if (errno == ENXIO) {
        pos = end;
        break;
      }
      ThrowErrno(env, "lseek", errno);
      return env.Undefined();
    }
    int64_t stop = hole < end ? static_cast<int64_t>(hole) : end;
    out.push_back(static_cast<double>(data));
    out.push_back(static_cast<double>(stop));
    runs++;
    pos = stop;
  }
  out[0] = static_cast<double>(pos);
  Napi::Float64Array result = Napi::Float64Array::New(env, out.size());
  for (size_t i = 0; i < out.size(); i++) result[i] = out[i];
  return result;
#else
  ThrowNotSupported(env, "lseek");
  return env.Undefined();
#endif
}

}  // namespace

void InitDataMap(Napi::Env env, Napi::Object exports) {
  exports.Set("mapData", Napi::Function::New(env, MapData, "mapData"));
}

}  // namespace vdisk
