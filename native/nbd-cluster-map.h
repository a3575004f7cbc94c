// Where an export's guest clusters lie in its image file, for the NBD data
// plane to read qcow2 data without JavaScript: JavaScript fills it from block
// status (plain allocated clusters only) and empties it around every request
// that may change the mapping. Shared by every connection to the export.
//
// The hazard is a cluster freed and reused while a plane read that looked up
// its old place is still reading it. So a request that may change the
// mapping first raises a barrier: no new plane read may use the map, and the
// request waits until the reads in progress are done (Idle). The entries of
// its range are cleared before it runs; fills started before a barrier are
// refused (the generation moved), so nothing stale comes back.
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

  ClusterMap(uint64_t cluster_size, uint64_t clusters)
      : cluster_size_(cluster_size), clusters_(clusters), entries_(new std::atomic<uint64_t>[clusters]) {
    for (uint64_t i = 0; i < clusters; i++) entries_[i].store(0, std::memory_order_relaxed);
  }

  // ---- plane threads ----

  // False when a barrier is up: the read goes to JavaScript. Otherwise the
  // caller looks up and reads, then calls Leave().
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
  // of it is not mapped. At most `max` runs.
  size_t Lookup(uint64_t offset, uint64_t length, HostRun* runs, size_t max) const {
    size_t n = 0;
    const uint64_t end = offset + length;
    for (uint64_t pos = offset; pos < end;) {
      uint64_t cluster = pos / cluster_size_;
      if (cluster >= clusters_) return 0;
      uint64_t host = entries_[cluster].load(std::memory_order_relaxed);
      if (host == 0) return 0;
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

  // Raises a barrier and clears [offset, offset + length); returns once
  // Idle() says so, the request may run.
  void Hold(uint64_t offset, uint64_t length) {
    barrier_.fetch_add(1);
    generation_.fetch_add(1);
    Clear(offset, length);
  }
  void Release() { barrier_.fetch_sub(1); }
  bool Idle() const { return active_.load() == 0; }
  uint64_t Generation() const { return generation_.load(); }

  // Maps `count` clusters from `first` to consecutive host clusters from
  // `host`, unless a barrier came since `generation` was read (the mapping
  // seen may be gone). False when refused.
  bool Set(uint64_t generation, uint64_t first, uint64_t count, uint64_t host) {
    if (generation_.load() != generation || barrier_.load() > 0) return false;
    for (uint64_t i = 0; i < count && first + i < clusters_; i++) {
      entries_[first + i].store(host + i * cluster_size_, std::memory_order_relaxed);
    }
    return true;
  }

  uint64_t cluster_size() const { return cluster_size_; }

 private:
  void Clear(uint64_t offset, uint64_t length) {
    if (length == 0) return;
    uint64_t first = offset / cluster_size_;
    uint64_t last = (offset + length - 1) / cluster_size_;
    for (uint64_t c = first; c <= last && c < clusters_; c++) entries_[c].store(0, std::memory_order_relaxed);
  }

  const uint64_t cluster_size_;
  const uint64_t clusters_;
  std::unique_ptr<std::atomic<uint64_t>[]> entries_;
  std::atomic<int> barrier_{0};
  std::atomic<int> active_{0};
  std::atomic<uint64_t> generation_{0};
};

}  // namespace nbd
}  // namespace vdisk

#endif  // VDISK_NATIVE_NBD_CLUSTER_MAP_H_
