// Entry point of the vdisk addon (see DESIGN.md §10): the few syscalls Node
// lacks, plus zero scanning. The TypeScript loader is src/native/index.ts.
#include <napi.h>

#include "init.h"

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  vdisk::InitFileOps(env, exports);
  vdisk::InitLocks(env, exports);
  vdisk::InitBlockDev(env, exports);
  vdisk::InitZero(env, exports);
  vdisk::InitAligned(env, exports);
  vdisk::InitDataMap(env, exports);
  vdisk::InitIoQueue(env, exports);
  vdisk::InitDirectIo(env, exports);
  vdisk::InitWriteback(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(vdisk_native, Init)
