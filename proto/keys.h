// Feature keys and their placement: key = Hash64(slot, raw value);
// key -> logical shard -> server (through the scheduler's ShardMap). Part of
// the protocol and the checkpoint format (docs/wire_format.md), so it lives in
// proto/ where every layer may include it.
#ifndef EMBER_PROTO_KEYS_H_
#define EMBER_PROTO_KEYS_H_

#include <cstdint>
#include <cstring>
#include <string_view>

namespace ember::proto {

// 64-bit mix with full avalanche (the finaliser of SplitMix64).
inline uint64_t Mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

// Hash of a raw feature value in key namespace `slot`. Stable across
// processes, builds and machines: it is part of the checkpoint format.
inline uint64_t Hash64(uint32_t slot, std::string_view value) {
  uint64_t h = Mix64(0x9e3779b97f4a7c15ULL ^ (uint64_t{slot} << 32) ^ value.size());
  const char* p = value.data();
  size_t n = value.size();
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    h = Mix64(h ^ w) + 0x9e3779b97f4a7c15ULL;
    p += 8;
    n -= 8;
  }
  // The last 0-7 bytes, little-endian, with fixed-size loads: a memcpy of a
  // variable length compiles to byte stores and a stalled 8-byte reload.
  uint64_t tail = 0;
  if (n >= 4) {
    uint32_t lo, hi;
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + n - 4, 4);
    tail = lo | (uint64_t{hi} << ((n - 4) * 8));
  } else if (n > 0) {
    tail = uint64_t{static_cast<uint8_t>(p[0])} | uint64_t{static_cast<uint8_t>(p[n / 2])} << (n / 2 * 8) |
           uint64_t{static_cast<uint8_t>(p[n - 1])} << ((n - 1) * 8);
  }
  return Mix64(h ^ tail ^ (uint64_t{n} << 56));
}

// Logical shard of `key` among `num_shards`. Multiply-shift on a remix of the
// key, so that even sequential keys spread evenly, and no division.
inline uint32_t ShardOf(uint64_t key, uint32_t num_shards) {
  uint64_t h = (key * 0x9e3779b97f4a7c15ULL) >> 32;
  return static_cast<uint32_t>((h * num_shards) >> 32);
}

}  // namespace ember::proto

#endif  // EMBER_PROTO_KEYS_H_
