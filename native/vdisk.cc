// Entry point of the vdisk addon (see DESIGN.md §10): the few syscalls Node
// lacks, plus zero scanning. The TypeScript loader is src/native/index.ts.
#include <napi.h>

#include "init.h"

namespace {

// The interface version the TypeScript loader checks (NATIVE_ABI in
// src/native/index.ts). Bump both whenever a function keeps its name but
// changes what its arguments mean: a stale build then counts as absent instead
// of misreading them (an IoQueue from before kinds became bits read an O_DIRECT
// read as a write, and wrote the read buffer over the image).
constexpr int kAbi = 5;

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("abi", Napi::Number::New(env, kAbi));
  vdisk::InitFileOps(env, exports);
  vdisk::InitLocks(env, exports);
  vdisk::InitBlockDev(env, exports);
  vdisk::InitZero(env, exports);
  vdisk::InitAligned(env, exports);
  vdisk::InitDataMap(env, exports);
  vdisk::InitIoQueue(env, exports);
  vdisk::InitDirectIo(env, exports);
  vdisk::InitWriteback(env, exports);
  vdisk::InitNbdPlane(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(vdisk_native, Init)
