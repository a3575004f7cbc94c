// Each source file registers its own group of exports; vdisk.cc calls these
// from the module initialiser.
#ifndef VDISK_NATIVE_INIT_H_
#define VDISK_NATIVE_INIT_H_

#include <napi.h>

namespace vdisk {

void InitFileOps(Napi::Env env, Napi::Object exports);  // fileops.cc
void InitLocks(Napi::Env env, Napi::Object exports);    // locks.cc
void InitBlockDev(Napi::Env env, Napi::Object exports); // blockdev.cc
void InitZero(Napi::Env env, Napi::Object exports);     // zero.cc
void InitAligned(Napi::Env env, Napi::Object exports);  // aligned.cc
void InitDataMap(Napi::Env env, Napi::Object exports);  // datamap.cc
void InitIoQueue(Napi::Env env, Napi::Object exports);  // ioqueue.cc
void InitDirectIo(Napi::Env env, Napi::Object exports);  // direct-io.cc
void InitWriteback(Napi::Env env, Napi::Object exports);  // writeback.cc
void InitNbdPlane(Napi::Env env, Napi::Object exports);  // nbd-plane.cc

}  // namespace vdisk

#endif  // VDISK_NATIVE_INIT_H_
