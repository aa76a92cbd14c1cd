// KeyFilter: the set of keys a TieredStore has written to RocksDB, as a
// Bloom filter that grows. A lookup of a key the filter has never seen (a new
// key, the first touch of a feature) skips the RocksDB MultiGet: in a
// one-epoch job on a large key space most misses are such keys.
//
// Thread safety: none; one handler thread owns a filter.
#ifndef EMBER_STORAGE_KEY_FILTER_H_
#define EMBER_STORAGE_KEY_FILTER_H_

#include <cstddef>
#include <cstdint>
#include <vector>

namespace ember::storage {

class KeyFilter {
 public:
  // The first layer holds `first_capacity` keys (>= 1); each later layer
  // holds 4x the previous one. No memory until the first Add.
  explicit KeyFilter(size_t first_capacity = size_t{1} << 16);

  void Add(uint64_t key);
  // True for every key ever added; for a key never added, true with a
  // probability of about 0.5% per layer (16 bits per key, 6 probes in one
  // 64-byte block). Keys are never removed: a false positive only costs a
  // RocksDB lookup that finds nothing.
  bool MayContain(uint64_t key) const;
  // Bytes of the bit arrays.
  size_t MemoryBytes() const;

 private:
  struct Layer {
    std::vector<uint64_t> words;  // blocks of 8 words (512 bits)
    size_t blocks = 0;
    size_t capacity = 0, count = 0;
  };
  static bool Probe(const Layer& layer, uint64_t h);

  size_t first_capacity_;
  std::vector<Layer> layers_;
};

}  // namespace ember::storage

#endif  // EMBER_STORAGE_KEY_FILTER_H_
