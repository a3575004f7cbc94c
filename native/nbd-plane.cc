// The NBD server's native data plane for JavaScript: after the handshake, a
// connection to a raw image over a plain file is served by threads here
// (nbd-plane-core.cc), the way nbdkit serves one. Measured before it existed:
// the JavaScript server spent 14 µs of CPU on a cached 4 KiB read (an I/O
// queue hand-off each way, an event-loop turn, a writev); nbdkit spends 5.
//
// Requests the threads do not serve reach JavaScript (src/nbd/server/
// native-plane.ts) in batches, one event-loop wake-up for all that arrived,
// and run through the same code as on the JavaScript path: block status,
// trim, zeroes, flush, cache, reads and writes with flags or out of range,
// writes into sector 0 (a probed raw image guards it), requests longer than a
// worker's buffer, and any request whose I/O failed in a thread (JavaScript
// runs it again and words the error as it always does). For qcow2 the threads
// read mapped clusters and overwrite clusters the map marks writable in place
// (nbd-cluster-map.h).
#include <napi.h>
#include <uv.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common.h"
#include "init.h"

#ifndef _WIN32
#include <fcntl.h>
#include <unistd.h>

#include "nbd-plane-core.h"
#endif

namespace vdisk {
namespace {

#ifndef _WIN32

using nbd::Plane;
using nbd::PlaneEvent;

bool GetNumber(Napi::Object o, const char* name, double* out) {
  Napi::Value v = o.Get(name);
  if (!v.IsNumber()) {
    ThrowTypeError(o.Env(), "ERR_INVALID_ARG_TYPE", std::string("NbdPlane: option ") + name + " must be a number");
    return false;
  }
  *out = v.As<Napi::Number>().DoubleValue();
  return true;
}

// Marks NbdClusterMap objects, so NbdPlane unwraps nothing else (in every
// environment, unlike a stored constructor).
constexpr napi_type_tag kClusterMapTag = {0x7664697368626d61, 0x70636c7573746572};

// new NbdClusterMap(clusterSize, clusters): see nbd-cluster-map.h. Offsets are
// numbers (exact below 2^53, which every image here is).
class NbdClusterMap : public Napi::ObjectWrap<NbdClusterMap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NbdClusterMap",
                       {InstanceMethod<&NbdClusterMap::Hold>("hold"),
                        InstanceMethod<&NbdClusterMap::Lift>("lift"),
                        InstanceMethod<&NbdClusterMap::Release>("release"),
                        InstanceMethod<&NbdClusterMap::Idle>("idle"),
                        InstanceMethod<&NbdClusterMap::Generation>("generation"),
                        InstanceMethod<&NbdClusterMap::Set>("set"),
                        InstanceMethod<&NbdClusterMap::MarkWritable>("markWritable")});
  }

  static bool Is(Napi::Value v) {
    bool tagged = false;
    return v.IsObject() && napi_check_object_type_tag(v.Env(), v, &kClusterMapTag, &tagged) == napi_ok && tagged;
  }

  explicit NbdClusterMap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NbdClusterMap>(info) {
    int64_t cluster_size, clusters;
    if (!ArgCount(info, 2) || !ArgUint(info, 0, "clusterSize", &cluster_size) || !ArgUint(info, 1, "clusters", &clusters)) return;
    if (cluster_size < 512 || clusters > (int64_t{1} << 20)) {
      ThrowRange(info.Env(), "clusters", "at most 2^20, of at least 512 bytes", static_cast<double>(clusters));
      return;
    }
    map_ = std::make_shared<nbd::ClusterMap>(static_cast<uint64_t>(cluster_size), static_cast<uint64_t>(clusters));
    napi_type_tag_object(info.Env(), info.This(), &kClusterMapTag);
  }

  std::shared_ptr<nbd::ClusterMap> map() const { return map_; }

 private:
  Napi::Value Hold(const Napi::CallbackInfo& info) {
    int64_t offset, length;
    if (!ArgCount(info, 2) || !ArgUint(info, 0, "offset", &offset) || !ArgUint(info, 1, "length", &length)) return info.Env().Undefined();
    map_->Hold(static_cast<uint64_t>(offset), static_cast<uint64_t>(length));
    return info.Env().Undefined();
  }

  Napi::Value Lift(const Napi::CallbackInfo& info) {
    map_->Lift();
    return info.Env().Undefined();
  }

  // release(offset, length): the range hold() was given.
  Napi::Value Release(const Napi::CallbackInfo& info) {
    int64_t offset, length;
    if (!ArgCount(info, 2) || !ArgUint(info, 0, "offset", &offset) || !ArgUint(info, 1, "length", &length)) return info.Env().Undefined();
    map_->Release(static_cast<uint64_t>(offset), static_cast<uint64_t>(length));
    return info.Env().Undefined();
  }

  Napi::Value Idle(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), map_->Idle()); }

  Napi::Value Generation(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), static_cast<double>(map_->Generation()));
  }

  // set(generation, firstCluster, count, hostOffset, ownHolds): false when refused.
  Napi::Value Set(const Napi::CallbackInfo& info) { return Change(info, &nbd::ClusterMap::Set); }

  // markWritable(generation, firstCluster, count, hostOffset, ownHolds): false when refused.
  Napi::Value MarkWritable(const Napi::CallbackInfo& info) { return Change(info, &nbd::ClusterMap::MarkWritable); }

  Napi::Value Change(const Napi::CallbackInfo& info, bool (nbd::ClusterMap::*change)(uint64_t, uint64_t, uint64_t, uint64_t, uint32_t)) {
    int64_t generation, first, count, host, own;
    if (!ArgCount(info, 5) || !ArgUint(info, 0, "generation", &generation) || !ArgUint(info, 1, "firstCluster", &first) ||
        !ArgUint(info, 2, "count", &count) || !ArgUint(info, 3, "hostOffset", &host) || !ArgUint(info, 4, "ownHolds", &own)) {
      return info.Env().Undefined();
    }
    // 0 means unmapped, and the lowest bits are the entry's flags: a host cluster is aligned.
    if (host == 0 || host % 512 != 0) return Napi::Boolean::New(info.Env(), false);
    bool ok = ((*map_).*change)(static_cast<uint64_t>(generation), static_cast<uint64_t>(first), static_cast<uint64_t>(count),
                                static_cast<uint64_t>(host), static_cast<uint32_t>(std::min<int64_t>(own, 1)));
    return Napi::Boolean::New(info.Env(), ok);
  }

  std::shared_ptr<nbd::ClusterMap> map_;
};

class NbdPlane : public Napi::ObjectWrap<NbdPlane> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NbdPlane",
                       {InstanceMethod<&NbdPlane::Reply>("reply"),
                        InstanceMethod<&NbdPlane::Shutdown>("shutdown"),
                        InstanceMethod<&NbdPlane::Destroy>("destroy"),
                        InstanceMethod<&NbdPlane::Stats>("stats"),
                        InstanceMethod<&NbdPlane::Writes>("writes"),
                        InstanceMethod<&NbdPlane::Close>("close")});
  }

  // new NbdPlane(socketFd, fileFd, options, initial: Uint8Array, onEvents[, clusterMap])
  // Both descriptors are duplicated: the caller closes its own.
  explicit NbdPlane(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NbdPlane>(info) {
    Napi::Env env = info.Env();
    int sock, file;
    if (!ArgCount(info, 5) || !ArgFd(info, 0, "socketFd", &sock) || !ArgFd(info, 1, "fileFd", &file)) return;
    if (!info[2].IsObject() || !info[3].IsTypedArray() || !info[4].IsFunction()) {
      ThrowTypeError(env, "ERR_INVALID_ARG_TYPE", "NbdPlane(socketFd, fileFd, options, initial, onEvents)");
      return;
    }
    Napi::Object o = info[2].As<Napi::Object>();
    double size, threads, max_requests, max_buffered, max_native, linger;
    if (!GetNumber(o, "size", &size) || !GetNumber(o, "threads", &threads) ||
        !GetNumber(o, "maxRequests", &max_requests) || !GetNumber(o, "maxBufferedBytes", &max_buffered) ||
        !GetNumber(o, "maxNativeLength", &max_native) || !GetNumber(o, "lingerMs", &linger)) {
      return;
    }
    if (!(threads >= 1 && threads <= 64)) {
      ThrowRange(env, "threads", ">= 1 and <= 64", threads);
      return;
    }
    if (!(max_native >= 0 && max_native <= nbd::kMaxPayload)) {
      ThrowRange(env, "maxNativeLength", ">= 0 and <= 32 MiB", max_native);
      return;
    }
    if (!(size >= 0 && max_requests >= 1 && max_buffered >= 1 && linger >= 0)) {
      ThrowRange(env, "options", "non-negative, with limits of at least 1", size);
      return;
    }
    auto initial = info[3].As<Napi::Uint8Array>();
    if (initial.ByteLength() > 256 * 1024) {
      ThrowRange(env, "initial", "at most 256 KiB", static_cast<double>(initial.ByteLength()));
      return;
    }
    nbd::PlaneConfig cfg;
    if (info.Length() > 5 && !info[5].IsUndefined()) {
      if (!NbdClusterMap::Is(info[5])) {
        ThrowTypeError(env, "ERR_INVALID_ARG_TYPE", "NbdPlane: clusterMap must be an NbdClusterMap");
        return;
      }
      cfg.map = NbdClusterMap::Unwrap(info[5].As<Napi::Object>())->map();
    }
    cfg.size = static_cast<uint64_t>(size);
    cfg.structured = o.Get("structured").ToBoolean();
    cfg.writable = o.Get("writable").ToBoolean();
    cfg.max_threads = static_cast<int>(threads);
    cfg.max_requests = static_cast<size_t>(max_requests);
    cfg.max_buffered = static_cast<size_t>(max_buffered);
    cfg.max_native = static_cast<uint32_t>(max_native);
    cfg.linger_ms = static_cast<int64_t>(linger);
    cfg.sock = fcntl(sock, F_DUPFD_CLOEXEC, 0);
    cfg.file = cfg.sock < 0 ? -1 : fcntl(file, F_DUPFD_CLOEXEC, 0);
    if (cfg.file < 0) {
      int err = errno;
      if (cfg.sock >= 0) close(cfg.sock);
      ThrowErrno(env, "dup", err);
      return;
    }
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok) {
      close(cfg.sock);
      close(cfg.file);
      Napi::Error::New(env, "NbdPlane: no event loop").ThrowAsJavaScriptException();
      return;
    }
    on_events_ = Napi::Persistent(info[4].As<Napi::Function>());
    // The async handle is referenced, so the connection keeps the process up
    // until its 'closed' event, as the JavaScript socket it replaces did.
    async_ = new uv_async_t;
    async_->data = this;
    uv_async_init(loop, async_, [](uv_async_t* a) { static_cast<NbdPlane*>(a->data)->Deliver(); });
    env_ = env;
    hooked_ = napi_add_env_cleanup_hook(env, CleanupHook, this) == napi_ok;
    uv_async_t* async = async_;
    plane_ = std::make_unique<Plane>(cfg, initial.Data(), initial.ByteLength(), [async] { uv_async_send(async); });
    int err = plane_->Start();
    if (err != 0) {
      Stop();
      ThrowErrno(env, "pipe", err);
    }
  }

  ~NbdPlane() override {
    Unhook();
    Stop();
  }

 private:
  static void CleanupHook(void* self) {
    auto* p = static_cast<NbdPlane*>(self);
    p->hooked_ = false;
    p->Stop();
  }

  void Unhook() {
    if (hooked_) napi_remove_env_cleanup_hook(env_, CleanupHook, this);
    hooked_ = false;
  }

  // Joins the threads, then closes the wake-up handle.
  void Stop() {
    if (!plane_) return;
    plane_.reset();
    uv_close(reinterpret_cast<uv_handle_t*>(async_), [](uv_handle_t* h) { delete reinterpret_cast<uv_async_t*>(h); });
    async_ = nullptr;
  }

  // reply(buffers: Uint8Array[], charge): a forwarded request's reply, copied
  // (the sender may send it long after this returns), and the bytes that
  // request was charged.
  Napi::Value Reply(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!info[0].IsArray() || !info[1].IsNumber()) {
      ThrowTypeError(env, "ERR_INVALID_ARG_TYPE", "reply(buffers, charge)");
      return env.Undefined();
    }
    auto list = info[0].As<Napi::Array>();
    std::vector<Napi::Uint8Array> parts;
    size_t total = 0;
    for (uint32_t i = 0; i < list.Length(); i++) {
      Napi::Value v = list.Get(i);
      if (!v.IsTypedArray()) {
        ThrowTypeError(env, "ERR_INVALID_ARG_TYPE", "reply: buffers must be Uint8Arrays");
        return env.Undefined();
      }
      parts.push_back(v.As<Napi::Uint8Array>());
      total += parts.back().ByteLength();
    }
    if (!plane_) return env.Undefined();
    auto* data = static_cast<uint8_t*>(malloc(total > 0 ? total : 1));
    size_t at = 0;
    for (auto& p : parts) {
      if (data) memcpy(data + at, p.Data(), p.ByteLength());
      at += p.ByteLength();
    }
    plane_->Reply(data, total, info[1].As<Napi::Number>().DoubleValue());
    return env.Undefined();
  }

  Napi::Value Shutdown(const Napi::CallbackInfo& info) {
    if (plane_) plane_->Shutdown();
    return info.Env().Undefined();
  }

  Napi::Value Destroy(const Napi::CallbackInfo& info) {
    if (plane_) plane_->Destroy();
    return info.Env().Undefined();
  }

  // [requests executing, reading (0/1), bytes held, most bytes held, reads and
  // writes served through the cluster map]
  Napi::Value Stats(const Napi::CallbackInfo& info) {
    auto out = Napi::Float64Array::New(info.Env(), 6);
    if (plane_) {
      nbd::PlaneStats s = plane_->Stats();
      out[0] = static_cast<double>(s.in_flight);
      out[1] = s.reading ? 1 : 0;
      out[2] = static_cast<double>(s.held);
      out[3] = static_cast<double>(s.peak);
      out[4] = static_cast<double>(s.mapped_reads);
      out[5] = static_cast<double>(s.mapped_writes);
    }
    return out;
  }

  // Writes the threads have completed: JavaScript drops what it cached about
  // the file (holes) when the count moves.
  Napi::Value Writes(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), plane_ ? static_cast<double>(plane_->Writes()) : 0);
  }

  // After 'closed': the threads are finishing; wait for them.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    Unhook();
    Stop();
    return info.Env().Undefined();
  }

  void Deliver() {
    if (!plane_) return;
    std::vector<PlaneEvent> batch = plane_->TakeEvents();
    if (batch.empty()) return;
    Napi::Env env = env_;
    Napi::HandleScope scope(env);
    auto list = Napi::Array::New(env, batch.size());
    bool closed = false;
    for (size_t i = 0; i < batch.size(); i++) {
      PlaneEvent& e = batch[i];
      Napi::Object o = Napi::Object::New(env);
      if (e.kind == PlaneEvent::kRequest) {
        const nbd::Request& r = e.req;
        o.Set("type", r.type);
        o.Set("flags", r.flags);
        o.Set("cookieHigh", r.cookie_high);
        o.Set("cookieLow", r.cookie_low);
        o.Set("offsetHigh", static_cast<uint32_t>(r.offset >> 32));
        o.Set("offsetLow", static_cast<uint32_t>(r.offset));
        o.Set("offset", static_cast<double>(r.offset));
        o.Set("length", r.length);
        o.Set("charge", e.charge);
        if (e.payload) {
          o.Set("payload", Napi::Buffer<uint8_t>::New(env, e.payload, r.length, [](Napi::Env, uint8_t* p) { free(p); }));
          e.payload = nullptr;
        }
      } else {
        o.Set("event", e.kind == PlaneEvent::kClosed ? "closed" : "violation");
        if (!e.message.empty()) o.Set("message", e.message);
        closed = closed || e.kind == PlaneEvent::kClosed;
      }
      list.Set(static_cast<uint32_t>(i), o);
    }
    // Nothing more will come: the process need not stay up for this connection.
    if (closed) uv_unref(reinterpret_cast<uv_handle_t*>(async_));
    on_events_.MakeCallback(Value(), {list});
    if (env.IsExceptionPending()) {
      Napi::Error err = env.GetAndClearPendingException();
      napi_fatal_exception(env, err.Value());
    }
  }

  std::unique_ptr<Plane> plane_;
  bool hooked_ = false;
  uv_async_t* async_ = nullptr;
  napi_env env_ = nullptr;
  Napi::FunctionReference on_events_;
};

#endif  // _WIN32

}  // namespace

void InitNbdPlane(Napi::Env env, Napi::Object exports) {
#ifndef _WIN32
  exports.Set("NbdPlane", NbdPlane::Define(env));
  exports.Set("NbdClusterMap", NbdClusterMap::Define(env));
#else
  (void)env;
  (void)exports;
#endif
}

}  // namespace vdisk
