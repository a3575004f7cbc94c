// isZero: is every byte of a buffer zero? Called for every cluster vdisk
// writes (to turn all-zero writes into holes or zero clusters), so it has to
// run at memory speed: a JS loop manages a fraction of that.
// zeroRuns / fileZeroRuns: the runs of zero blocks a copy leaves sparse
// (convert -S), found in one call per buffer instead of one per block.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <vector>

#ifdef __linux__
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

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

// How a copy splits a buffer into blocks and which zero runs it leaves
// sparse (src/jobs/sparse-runs.ts holds the rules and the JS fallback): the
// first block ends at `first`, the others are `granule` long; a run of zero
// blocks is sparse when it is at least `min_zero` long or touches an end.
struct SparseRule {
  size_t granule;
  size_t first;
  size_t min_zero;
};

// Appends the sparse zero runs of p[0, n) to `out` as [start, end) pairs.
void SparseZeroRuns(const unsigned char* p, size_t n, const SparseRule& rule,
                    std::vector<double>* out) {
  if (n == 0) return;
  size_t run_start = 0;
  int run_zero = -1;
  auto close = [&](size_t end) {
    if (run_zero != 1) return;
    if (run_start == 0 || end == n || end - run_start >= rule.min_zero) {
      out->push_back(static_cast<double>(run_start));
      out->push_back(static_cast<double>(end));
    }
  };
  for (size_t pos = 0; pos < n;) {
    size_t next = pos == 0 ? rule.first : pos + rule.granule;
    if (next > n) next = n;
    // Most data blocks have a non-zero byte at one end: no compare for them.
    int zero = p[pos] == 0 && p[next - 1] == 0 && AllZero(p + pos, next - pos);
    if (zero != run_zero) {
      close(pos);
      run_start = pos;
      run_zero = zero;
    }
    pos = next;
  }
  close(n);
}

bool ArgRule(const Napi::CallbackInfo& info, size_t i, SparseRule* rule) {
  int64_t granule, first, min_zero;
  if (!ArgUint(info, i, "granule", &granule) ||
      !ArgUint(info, i + 1, "first", &first) ||
      !ArgUint(info, i + 2, "minZero", &min_zero))
    return false;
  if (granule < 1) {
    ThrowRange(info.Env(), "granule", ">= 1", static_cast<double>(granule));
    return false;
  }
  if (first < 1 || first > granule) {
    ThrowRange(info.Env(), "first", "from 1 to granule",
               static_cast<double>(first));
    return false;
  }
  *rule = {static_cast<size_t>(granule), static_cast<size_t>(first),
           static_cast<size_t>(min_zero)};
  return true;
}

Napi::Float64Array ToArray(Napi::Env env, const std::vector<double>& runs) {
  Napi::Float64Array result = Napi::Float64Array::New(env, runs.size());
  for (size_t i = 0; i < runs.size(); i++) result[i] = runs[i];
  return result;
}

// zeroRuns(buf, granule, first, minZero) -> Float64Array [s0, e0, s1, e1, ...]
Napi::Value ZeroRuns(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  SparseRule rule;
  if (!ArgCount(info, 4)) return env.Undefined();
  if (!info[0].IsTypedArray() ||
      info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    ThrowTypeError(env, "ERR_INVALID_ARG_TYPE",
                   "The \"buf\" argument must be a Uint8Array");
    return env.Undefined();
  }
  if (!ArgRule(info, 1, &rule)) return env.Undefined();
  auto buf = info[0].As<Napi::Uint8Array>();
  std::vector<double> runs;
  SparseZeroRuns(buf.Data(), buf.ByteLength(), rule, &runs);
  return ToArray(env, runs);
}

#ifdef __linux__
// A file mapped for scanning can shrink under us (another process truncates
// it): touching the pages past its new end raises SIGBUS. The scanning thread
// arms a jump here, so that a scan fails with EIO instead of killing the
// process; a SIGBUS anywhere else goes on to whatever handled it before.
thread_local sigjmp_buf* tl_scan_jump = nullptr;
struct sigaction g_previous_bus;

void OnBus(int sig, siginfo_t* si, void* uctx) {
  if (sigjmp_buf* jump = tl_scan_jump) siglongjmp(*jump, 1);
  if (g_previous_bus.sa_flags & SA_SIGINFO) {
    if (g_previous_bus.sa_sigaction) return g_previous_bus.sa_sigaction(sig, si, uctx);
  } else if (g_previous_bus.sa_handler != SIG_DFL &&
             g_previous_bus.sa_handler != SIG_IGN) {
    return g_previous_bus.sa_handler(sig);
  }
  // Not ours and no one else's: die of it, as without this handler.
  signal(SIGBUS, SIG_DFL);
  raise(SIGBUS);
}

bool InstallBusHandler() {
  static std::once_flag once;
  static bool ok = false;
  std::call_once(once, [] {
    struct sigaction sa = {};
    sa.sa_sigaction = OnBus;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    ok = sigaction(SIGBUS, &sa, &g_previous_bus) == 0;
  });
  return ok;
}

// Scans [offset, offset + length) of a file through a read-only mapping: the
// pages the page cache holds are mapped, not copied (a read would copy them
// into a buffer only to look at them). 0 or an errno.
int ScanFile(int fd, int64_t offset, int64_t length, const SparseRule& rule,
             std::vector<double>* out) {
  if (length == 0) return 0;
  struct stat st;
  if (fstat(fd, &st) != 0) return errno;
  if (offset + length > st.st_size) return ENODATA;
  if (!InstallBusHandler()) return ENOTSUP;
  const int64_t page = sysconf(_SC_PAGESIZE);
  const int64_t base = offset - offset % page;
  const size_t span = static_cast<size_t>(offset + length - base);
  void* map = mmap(nullptr, span, PROT_READ, MAP_SHARED, fd, base);
  if (map == MAP_FAILED) return errno;
  const unsigned char* p = static_cast<const unsigned char*>(map) + (offset - base);
  // The pages are looked at once, in order: fault them in well ahead.
  madvise(map, span, MADV_SEQUENTIAL);
  sigjmp_buf jump;
  volatile int err = 0;
  size_t before = out->size();
  if (sigsetjmp(jump, 1) == 0) {
    tl_scan_jump = &jump;
    SparseZeroRuns(p, static_cast<size_t>(length), rule, out);
  } else {
    err = EIO;
    out->resize(before);
  }
  tl_scan_jump = nullptr;
  munmap(map, span);
  return err;
}

class ScanWorker : public Napi::AsyncWorker {
 public:
  ScanWorker(Napi::Env env, int fd, int64_t offset, int64_t length,
             SparseRule rule)
      : Napi::AsyncWorker(env, "vdisk:fileZeroRuns"),
        deferred_(Napi::Promise::Deferred::New(env)),
        fd_(fd), offset_(offset), length_(length), rule_(rule) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override { err_ = ScanFile(fd_, offset_, length_, rule_, &runs_); }

  void OnOK() override {
    Napi::Env env = Env();
    if (err_ != 0) {
      deferred_.Reject(ErrnoError(env, "mmap", err_).Value());
    } else {
      deferred_.Resolve(ToArray(env, runs_));
    }
  }

 private:
  Napi::Promise::Deferred deferred_;
  int fd_;
  int64_t offset_, length_;
  SparseRule rule_;
  int err_ = 0;
  std::vector<double> runs_;
};
#endif

// fileZeroRuns(fd, offset, length, granule, first, minZero)
//   -> Promise<Float64Array> of the same runs, relative to offset, scanned on
// the thread pool through a mapping. Rejects with ENODATA when the file ends
// before offset + length, EIO when it shrinks during the scan.
Napi::Value FileZeroRuns(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  int64_t offset, length;
  SparseRule rule;
  if (!ArgCount(info, 6) || !ArgFd(info, 0, "fd", &fd) ||
      !ArgUint(info, 1, "offset", &offset) ||
      !ArgUint(info, 2, "length", &length) || !ArgRule(info, 3, &rule))
    return env.Undefined();
#ifdef __linux__
  auto* worker = new ScanWorker(env, fd, offset, length, rule);
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
#else
  ThrowNotSupported(env, "mmap");
  return env.Undefined();
#endif
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
  exports.Set("zeroRuns", Napi::Function::New(env, ZeroRuns, "zeroRuns"));
  exports.Set("fileZeroRuns",
              Napi::Function::New(env, FileZeroRuns, "fileZeroRuns"));
}

}  // namespace vdisk
