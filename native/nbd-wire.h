// The few NBD transmission-phase constants and encoders the native data plane
// (nbd-plane.cc) needs. The protocol's authority is NetworkBlockDevice's
// doc/proto.md; src/nbd/protocol/ has the full set on the TypeScript side.
#ifndef VDISK_NATIVE_NBD_WIRE_H_
#define VDISK_NATIVE_NBD_WIRE_H_

#include <cstddef>
#include <cstdint>

namespace vdisk {
namespace nbd {

constexpr uint32_t kRequestMagic = 0x25609513;
constexpr uint32_t kSimpleReplyMagic = 0x67446698;
constexpr uint32_t kStructuredReplyMagic = 0x668e33ef;

constexpr uint16_t kCmdRead = 0;
constexpr uint16_t kCmdWrite = 1;
constexpr uint16_t kCmdDisc = 2;

constexpr uint16_t kFlagFua = 1 << 0;
constexpr uint16_t kFlagDf = 1 << 2;

constexpr uint16_t kReplyFlagDone = 1 << 0;
constexpr uint16_t kReplyOffsetData = 1;
constexpr uint16_t kReplyOffsetHole = 2;

constexpr size_t kRequestSize = 28;
constexpr size_t kSimpleReplySize = 16;
constexpr size_t kChunkHeaderSize = 20;
// Up to 32 MiB the spec says a payload is never a reason to disconnect.
constexpr uint32_t kMaxPayload = 32 * 1024 * 1024;

struct Request {
  uint16_t flags;
  uint16_t type;
  uint32_t cookie_high;
  uint32_t cookie_low;
  uint64_t offset;
  uint32_t length;
};

inline uint32_t Get32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}

inline void Put16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}

inline void Put32(uint8_t* p, uint32_t v) {
  p[0] = static_cast<uint8_t>(v >> 24);
  p[1] = static_cast<uint8_t>(v >> 16);
  p[2] = static_cast<uint8_t>(v >> 8);
  p[3] = static_cast<uint8_t>(v);
}

inline void Put64(uint8_t* p, uint64_t v) {
  Put32(p, static_cast<uint32_t>(v >> 32));
  Put32(p + 4, static_cast<uint32_t>(v));
}

// False when the magic is wrong.
inline bool DecodeRequest(const uint8_t* p, Request* r) {
  if (Get32(p) != kRequestMagic) return false;
  r->flags = static_cast<uint16_t>((p[4] << 8) | p[5]);
  r->type = static_cast<uint16_t>((p[6] << 8) | p[7]);
  r->cookie_high = Get32(p + 8);
  r->cookie_low = Get32(p + 12);
  r->offset = (uint64_t{Get32(p + 16)} << 32) | Get32(p + 20);
  r->length = Get32(p + 24);
  return true;
}

// A simple reply header (16 bytes) with `error`.
inline void EncodeSimpleReply(uint8_t* p, const Request& r, uint32_t error) {
  Put32(p, kSimpleReplyMagic);
  Put32(p + 4, error);
  Put32(p + 8, r.cookie_high);
  Put32(p + 12, r.cookie_low);
}

// A structured reply chunk header (20 bytes).
inline void EncodeChunk(uint8_t* p, const Request& r, uint16_t flags, uint16_t type, uint32_t length) {
  Put32(p, kStructuredReplyMagic);
  Put16(p + 4, flags);
  Put16(p + 6, type);
  Put32(p + 8, r.cookie_high);
  Put32(p + 12, r.cookie_low);
  Put32(p + 16, length);
}

}  // namespace nbd
}  // namespace vdisk

#endif  // VDISK_NATIVE_NBD_WIRE_H_
