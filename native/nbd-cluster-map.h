// Where an export's guest clusters lie in its image file, for the NBD data
// plane to read and overwrite qcow2 data without JavaScript: JavaScript fills
// it from block status (plain allocated clusters only), marks the clusters a
// write may overwrite in place (the qcow2 driver says which: COPIED, in the
// image file), and empties it around every request that may change the
// mapping. Shared by every connection to the export.
//
// The hazard is a cluster freed and reused while a plane read or write that
// looked up its old place is still using it. So a request that may change the
// mapping first raises a barrier: no new plane request may use the map, and
// the request waits until those in progress are done (Idle). The entries of
// its range are cleared before it runs; a fill is refused for clusters a
// request held since the fill began or holds now, so nothing stale comes back.
//
// An entry is the cluster's host offset (cluster-aligned, so at least 512;
// 0: unmapped) with kWritable in its lowest bit. Only the JavaScript thread
// changes entries; plane threads only look them up.
#ifndef VDISK_NATIVE_NBD_CLUSTER_MAP_H_
#define VDISK_NATIVE_NBD_CLUSTER_MAP_H_

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

namespace vdisk {
namespace nbd {

class ClusterMap {
 public:
  struct HostRun {
    uint64_t guest;
    uint64_t host;
    uint64_t length;
  };
  static constexpr uint64_t kWritable = 1;

  ClusterMap(uint64_t cluster_size, uint64_t clusters)
      : cluster_size_(cluster_size),
        clusters_(clusters),
        entries_(new std::atomic<uint64_t>[clusters]),
        holds_(new uint32_t[clusters]()),
        stamps_(new uint32_t[clusters]()) {
    for (uint64_t i = 0; i < clusters; i++) entries_[i].store(0, std::memory_order_relaxed);
  }

  // ---- plane threads ----

  // False when a barrier is up: the request goes to JavaScript. Otherwise the
  // caller looks up and reads or writes, then calls Leave().
  bool Enter() {
    active_.fetch_add(1);
    if (barrier_.load() > 0) {
      active_.fetch_sub(1);
      return false;
    }
    return true;
  }
  void Leave() { active_.fetch_sub(1); }

  // The host runs of guest [offset, offset + length), or 0 when any cluster
  // of it is not mapped (for a write: not writable in place). At most `max` runs.
  size_t Lookup(uint64_t offset, uint64_t length, bool write, HostRun* runs, size_t max) const {
    size_t n = 0;
    const uint64_t end = offset + length;
    for (uint64_t pos = offset; pos < end;) {
      uint64_t cluster = pos / cluster_size_;
      if (cluster >= clusters_) return 0;
      uint64_t entry = entries_[cluster].load(std::memory_order_relaxed);
      if (entry == 0 || (write && !(entry & kWritable))) return 0;
      uint64_t host = entry & ~kWritable;
      uint64_t in = pos % cluster_size_;
      uint64_t take = std::min(cluster_size_ - in, end - pos);
      if (n > 0 && runs[n - 1].host + runs[n - 1].length == host + in) {
        runs[n - 1].length += take;
      } else {
        if (n == max) return 0;
        runs[n++] = {pos, host + in, take};
      }
      pos += take;
    }
    return n;
  }

  // ---- the JavaScript thread ----

  // Raises a barrier and holds [offset, offset + length), its entries
  // cleared; once Idle() says so, the request may run. Lift() takes the
  // barrier down when it is done (the rest of the map is the plane's again,
  // this range still held: its entries stay clear but for the holder's own
  // fill); Release() with the same range ends the hold.
  void Hold(uint64_t offset, uint64_t length) {
    barrier_.fetch_add(1);
    Touch(offset, length, 1u);
    Clear(offset, length);
  }
  void Lift() { barrier_.fetch_sub(1); }
  void Release(uint64_t offset, uint64_t length) { Touch(offset, length, ~0u); }
  bool Idle() const { return active_.load() == 0; }
  uint64_t Generation() const { return generation_; }

  // Maps `count` clusters from `first` to consecutive host clusters from
  // `host`, but for those a request held since `generation` was read or
  // holds now (the mapping seen may be gone or half made); `own` holds are
  // the caller's, whose request is done. An entry already at that place
  // stays writable. False when any was refused.
  bool Set(uint64_t generation, uint64_t first, uint64_t count, uint64_t host, uint32_t own) {
    if (first >= clusters_ || count > clusters_ - first) return false;
    bool all = true;
    for (uint64_t i = 0; i < count; i++) {
      if (!Fresh(generation, first + i, own)) {
        all = false;
        continue;
      }
      uint64_t place = host + i * cluster_size_;
      if ((entries_[first + i].load(std::memory_order_relaxed) & ~kWritable) != place) {
        entries_[first + i].store(place, std::memory_order_relaxed);
      }
    }
    return all;
  }

  // Marks `count` clusters from `first`, mapped to consecutive host clusters
  // from `host`, writable in place; refused cluster by cluster as Set is. A
  // cluster mapped elsewhere (or not at all) is left as it is.
  bool MarkWritable(uint64_t generation, uint64_t first, uint64_t count, uint64_t host, uint32_t own) {
    if (first >= clusters_ || count > clusters_ - first) return false;
    bool all = true;
    for (uint64_t i = 0; i < count; i++) {
      uint64_t place = host + i * cluster_size_;
      if (!Fresh(generation, first + i, own)) {
        all = false;
      } else if (entries_[first + i].load(std::memory_order_relaxed) == place) {
        entries_[first + i].store(place | kWritable, std::memory_order_relaxed);
      }
    }
    return all;
  }

  uint64_t cluster_size() const { return cluster_size_; }

 private:
  // Where a guest cluster lies changes only by a request on that cluster (a
  // consistent image: other requests allocate free clusters and free their
  // own), so a fill is refused per cluster, not because a request elsewhere
  // came: under a stream of forwarded writes a global test would refuse
  // every fill, and the first fill of a whole image would lose everything
  // to the first request. Stamps keep 32 bits of the generation (compared modulo 2^32:
  // right while fewer than 2^31 holds begin or end during one fill).
  bool Fresh(uint64_t generation, uint64_t c, uint32_t own) const {
    return holds_[c] <= own && static_cast<int32_t>(stamps_[c] - static_cast<uint32_t>(generation)) <= 0;
  }

  // A hold begins (+1) or ends (-1) on the clusters of the range.
  void Touch(uint64_t offset, uint64_t length, uint32_t delta) {
    generation_++;
    if (length == 0) return;
    uint64_t first = offset / cluster_size_;
    uint64_t last = (offset + length - 1) / cluster_size_;
    for (uint64_t c = first; c <= last && c < clusters_; c++) {
      holds_[c] += delta;
      stamps_[c] = static_cast<uint32_t>(generation_);
    }
  }

  void Clear(uint64_t offset, uint64_t length) {
    if (length == 0) return;
    uint64_t first = offset / cluster_size_;
    uint64_t last = (offset + length - 1) / cluster_size_;
    for (uint64_t c = first; c <= last && c < clusters_; c++) entries_[c].store(0, std::memory_order_relaxed);
  }

  const uint64_t cluster_size_;
  const uint64_t clusters_;
  // Shared with the plane threads.
  std::unique_ptr<std::atomic<uint64_t>[]> entries_;
  std::atomic<int> barrier_{0};
  std::atomic<int> active_{0};
  // The JavaScript thread's own.
  std::unique_ptr<uint32_t[]> holds_;
  std::unique_ptr<uint32_t[]> stamps_;
  uint64_t generation_ = 0;
};

}  // namespace nbd
}  // namespace vdisk

#endif  // VDISK_NATIVE_NBD_CLUSTER_MAP_H_
