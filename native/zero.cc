// isZero: is every byte of a buffer zero? Called for every cluster vdisk
// writes (to turn all-zero writes into holes or zero clusters), so it has to
// run at memory speed: a JS loop manages a fraction of that.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "common.h"
#include "init.h"

namespace vdisk {
namespace {

// Comparing against a zero block lets libc's memcmp (SIMD, alignment handled)
// do the scanning; 4 KiB keeps the reference block resident in L1 while the
// data streams past, and returns early on the first non-zero chunk.
constexpr size_t kChunk = 4096;
alignas(64) const unsigned char kZeroBlock[kChunk] = {};

bool AllZero(const unsigned char* p, size_t n) {
  while (n >= kChunk) {
    if (std::memcmp(p, kZeroBlock, kChunk) != 0) return false;
    p += kChunk;
    n -= kChunk;
  }
  return n == 0 || std::memcmp(p, kZeroBlock, n) == 0;
}

Napi::Value IsZero(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!ArgCount(info, 1)) return env.Undefined();
  Napi::Value v = info[0];
  void* data = nullptr;
  size_t bytes = 0;
  napi_status status;
  // Any view works (Buffer, Uint8Array, other typed arrays, DataView); the
  // engine hands back a pointer already adjusted for the view's byteOffset.
  if (v.IsTypedArray()) {
    napi_typedarray_type type;
    size_t length;
    status = napi_get_typedarray_info(env, v, &type, &length, &data, nullptr,
                                      nullptr);
    bytes = v.As<Napi::TypedArray>().ByteLength();
  } else if (v.IsDataView()) {
    status = napi_get_dataview_info(env, v, &bytes, &data, nullptr, nullptr);
  } else {
    ThrowTypeError(env, "ERR_INVALID_ARG_TYPE",
                   "The \"buf\" argument must be a Uint8Array, another "
                   "TypedArray or a DataView");
    return env.Undefined();
  }
  if (status != napi_ok) {
    Napi::Error::New(env).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  // A detached or empty view has no data pointer and is trivially zero.
  if (data == nullptr || bytes == 0) return Napi::Boolean::New(env, true);
  return Napi::Boolean::New(
      env, AllZero(static_cast<const unsigned char*>(data), bytes));
}

}  // namespace

void InitZero(Napi::Env env, Napi::Object exports) {
  exports.Set("isZero", Napi::Function::New(env, IsZero, "isZero"));
}

}  // namespace vdisk
