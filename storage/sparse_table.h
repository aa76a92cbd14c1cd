// The in-memory sparse table of one logical shard: a hash index (absl) from
// key to row number, and a slab arena of fixed-size rows. Rows never move, so
// a row pointer stays valid until the row is erased. A row is
//   RowMeta | weights[dim] | optimizer state[StateFloats(dim)]
// The memory budget and RocksDB tier (storage/tiered_store.h) sit on top of
// this: the table keeps a CLOCK hand over its slots for eviction.
//
// Thread safety: none. A ShardTable is touched by exactly one server handler
// thread (the one that owns its logical shard), so it needs no lock.
#ifndef EMBER_STORAGE_SPARSE_TABLE_H_
#define EMBER_STORAGE_SPARSE_TABLE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "proto/config.pb.h"
#include "storage/optimizer.h"

namespace ember::storage {

// The first 32 bytes of every row, in memory, in RocksDB and in checkpoint
// files (docs/checkpoint_format.md). last_push_seq is 64-bit: a 32-bit
// push counter wraps after 2^32 pushes (hours at a busy server) and
// incremental checkpoints and push-count expiry would then misjudge rows.
struct RowMeta {
  uint64_t key;
  uint32_t count;      // gradient pushes that touched the row
  uint32_t generation;  // table reset generation the row was initialised in
  uint64_t last_push_seq;  // the server's push_seq at the last push (or at creation)
  uint16_t flags;      // kRow* bits; only meaningful in memory
  uint16_t last_day;   // log day (unix seconds / 86400) of the last push; 0 = none
  uint32_t reserved;   // 0; spells out the padding so that rows on disk are deterministic
};
static_assert(sizeof(RowMeta) == 32);

// RowMeta::flags bits.
inline constexpr uint16_t kRowLive = 1;    // the slot holds a row
inline constexpr uint16_t kRowRef = 2;     // touched since the CLOCK hand last passed
inline constexpr uint16_t kRowPinned = 4;  // in use by the request being served: not evictable
inline constexpr uint16_t kRowDirty = 8;   // differs from (or is absent in) the RocksDB tier

// Whether row `r` has expired under `x` (proto::ExpiryConfig) at a cut
// where the push counter is `now_push_seq` and the newest log day is
// `now_day`: the servers' sweep and the exporter share this rule.
inline bool RowExpired(const proto::ExpiryConfig& x, const RowMeta& r, uint64_t now_push_seq, uint32_t now_day) {
  if (x.after_pushes() > 0 && now_push_seq - r.last_push_seq > x.after_pushes()) return true;
  return x.after_days() > 0 && r.last_day > 0 && now_day > r.last_day && now_day - r.last_day > x.after_days();
}

namespace internal {

// Allocates page-aligned memory and faults its pages in up front with
// MADV_POPULATE_WRITE when it spans 64 KiB or more. On the VMs we run on a
// first-touch fault costs ~12 us per 4 KiB page, the populate ~0.8 us, and a
// table that grows is mostly fresh memory. Falls back to faulting on first
// touch where the kernel refuses the advice.
uint8_t* AllocatePopulated(size_t bytes);
void FreePopulated(uint8_t* p);

// std::allocator's interface over AllocatePopulated, for the hash index.
template <typename T>
struct PopulatingAllocator {
  using value_type = T;
  PopulatingAllocator() = default;
  template <typename U>
  PopulatingAllocator(const PopulatingAllocator<U>&) {}
  T* allocate(size_t n) { return reinterpret_cast<T*>(AllocatePopulated(n * sizeof(T))); }
  void deallocate(T* p, size_t) { FreePopulated(reinterpret_cast<uint8_t*>(p)); }
  friend bool operator==(const PopulatingAllocator&, const PopulatingAllocator&) { return true; }
};

}  // namespace internal

// Shape and rules shared by every shard of one table. Immutable after
// construction; shared by all handler threads.
class TableSpec {
 public:
  explicit TableSpec(const proto::TableConfig& config);

  const proto::TableConfig& config() const { return config_; }
  uint32_t dim() const { return dim_; }
  size_t state_floats() const { return state_floats_; }
  // Bytes per row, a multiple of 8.
  size_t row_bytes() const { return row_bytes_; }
  const OptimizerRule& rule() const { return rule_; }

  // Fills a fresh row for `key`: meta (flags live and dirty), initial
  // weights for reset generation `generation`, optimizer state.
  void InitRow(uint64_t key, uint32_t generation, uint8_t* row) const;

  static RowMeta* Meta(uint8_t* row) { return reinterpret_cast<RowMeta*>(row); }
  static float* Weights(uint8_t* row) { return reinterpret_cast<float*>(row + sizeof(RowMeta)); }
  float* State(uint8_t* row) const { return Weights(row) + dim_; }

 private:
  proto::TableConfig config_;
  OptimizerRule rule_;
  uint32_t dim_;
  size_t state_floats_;
  size_t row_bytes_;
};

class ShardTable {
 public:
  // `spec` is not owned and must outlive the table.
  explicit ShardTable(const TableSpec* spec);
  ShardTable(const ShardTable&) = delete;
  ShardTable& operator=(const ShardTable&) = delete;

  // The row of `key`, or nullptr.
  uint8_t* Find(uint64_t key);
  // Starts loading the index slot of `key` into cache (a hint; no effect on
  // contents).
  void PrefetchIndex(uint64_t key) const { index_.prefetch(key); }
  // The row of `key`, created and initialised (for reset generation `generation`) if
  // absent; *created tells which.
  uint8_t* FindOrCreate(uint64_t key, uint32_t generation, bool* created);
  // The row of `key`: existing (*existed = true) or a new slot whose bytes the
  // caller must fill entirely (with kRowLive set in its flags).
  uint8_t* Emplace(uint64_t key, bool* existed);
  // Removes the row of `key`; its slot is reused. False if absent.
  bool Erase(uint64_t key);
  // Removes every row and frees the memory.
  void Clear();

  // CLOCK: advances the hand over at most `max_slots` slots. A live row that
  // is pinned is passed over; one with kRowRef loses the bit; any other is
  // handed to evict(row) and erased, until `want` rows are gone. Returns the
  // rows evicted.
  template <typename Fn>
  size_t ClockSweep(size_t max_slots, size_t want, Fn&& evict) {
    size_t evicted = 0;
    for (size_t n = 0; n < max_slots && evicted < want && next_slot_ > 0; ++n) {
      if (hand_ >= next_slot_) hand_ = 0;
      uint8_t* row = RowAt(hand_++);
      RowMeta* m = reinterpret_cast<RowMeta*>(row);
      if (!(m->flags & kRowLive) || (m->flags & kRowPinned)) continue;
      if (m->flags & kRowRef) {
        m->flags &= ~kRowRef;
        continue;
      }
      evict(static_cast<const uint8_t*>(row));
      Erase(m->key);
      ++evicted;
    }
    return evicted;
  }

  size_t size() const { return index_.size(); }
  // Bytes held: arena slabs plus the hash index's slots.
  size_t MemoryBytes() const;

  // Calls fn(key, row) for every row, in no particular order. fn must not
  // insert or erase.
  template <typename Fn>
  void ForEach(Fn&& fn) {
    for (const auto& [key, slot] : index_) fn(key, RowAt(slot));
  }

 private:
  uint8_t* RowAt(uint32_t slot);

  const TableSpec* spec_;
  absl::flat_hash_map<uint64_t, uint32_t, absl::Hash<uint64_t>, std::equal_to<uint64_t>,
                      internal::PopulatingAllocator<std::pair<const uint64_t, uint32_t>>>
      index_;
  // Slab k holds kFirstSlabRows << min(k, kMaxDoublings) rows: small shards
  // stay small, big shards add 4K-row slabs (at most 4K rows of slack each).
  struct FreeSlab {
    void operator()(uint8_t* p) const;
  };
  std::vector<std::unique_ptr<uint8_t[], FreeSlab>> slabs_;
  uint32_t next_slot_ = 0;
  uint32_t hand_ = 0;  // CLOCK hand: next slot to look at
  std::vector<uint32_t> free_slots_;
};

}  // namespace ember::storage

#endif  // EMBER_STORAGE_SPARSE_TABLE_H_
