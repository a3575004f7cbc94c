// The SEEK_DATA/SEEK_HOLE walk behind mapData (datamap.cc, on the calling
// thread) and IoQueue's map requests (ioqueue-pool.cc, on its threads, where a
// caller with a deadline is not held by a dead NFS or FUSE mount).
#ifndef VDISK_NATIVE_DATAMAP_H_
#define VDISK_NATIVE_DATAMAP_H_

#include <cstddef>
#include <cstdint>

namespace vdisk {

// Walks [offset, end) of `fd` and writes [scannedTo, s0, e0, s1, e1, ...] to
// `out` (room for `capacity` doubles, at least 1): every byte of
// [offset, scannedTo) is described, the listed [s, e) runs are data and the
// rest holes; scannedTo < end only when `out` filled up. Returns the doubles
// written, or -errno (0 never). Linux only: elsewhere -ENOSYS.
int64_t WalkData(int fd, int64_t offset, int64_t end, double* out, size_t capacity);

}  // namespace vdisk

#endif  // VDISK_NATIVE_DATAMAP_H_
