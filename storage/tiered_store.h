// The rows one server handler thread owns: its logical shards of every table,
// in memory (ShardTable) under a byte budget, with the RocksDB tier
// (SpillStore) below. When resident rows exceed the budget, CLOCK picks cold
// rows across the handler's shards and moves them to RocksDB (only those that
// changed since they were last written there); a request that misses in
// memory reads all its missing rows back with one MultiGet. Only keys this
// store has written to RocksDB (a KeyFilter per table) are looked up there:
// a new key's miss costs no RocksDB read.
//
// Rows carry a reset generation: a row older than its table's current generation is
// stale, re-initialised on first touch (resident or spilled; a read-only
// lookup leaves it and finds no row) and skipped by scans. That makes a
// table reset O(1) (see ps::Server's RESET_TABLE).
//
// Thread safety: none; one handler thread uses a TieredStore. The SpillStore
// may be shared by the stores of all handlers.
#ifndef EMBER_STORAGE_TIERED_STORE_H_
#define EMBER_STORAGE_TIERED_STORE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "storage/key_filter.h"
#include "storage/sparse_table.h"
#include "storage/spill_store.h"

namespace ember::storage {

// Bytes a resident row is charged against the budget: the row plus its hash
// index slot (16 B with the index's load factor).
inline size_t ResidentRowCost(const TableSpec& spec) { return spec.row_bytes() + 16; }

// Counters of one table in one store; read by other threads (relaxed).
struct TierCounters {
  std::atomic<uint64_t> hits{0}, misses{0}, spill_reads{0}, evictions{0}, spill_writes{0};
  std::atomic<uint64_t> not_admitted{0}, expired{0};
};

class TieredStore {
 public:
  // `specs` (one per table) and `spill` (null: no budget, memory only) are not
  // owned. `shards` are the logical shards this store owns.
  // `budget_bytes` = 0 means unbounded.
  TieredStore(std::vector<const TableSpec*> specs, const std::vector<uint32_t>& shards,
              uint32_t num_logical_shards, uint64_t budget_bytes, SpillStore* spill);
  TieredStore(const TieredStore&) = delete;
  TieredStore& operator=(const TieredStore&) = delete;

  bool tiered() const { return spill_ != nullptr; }
  const std::vector<uint32_t>& shards() const { return shards_; }
  // The in-memory table of an owned shard.
  ShardTable& table(uint32_t t, uint32_t shard) { return *tables_[t][local_[shard]]; }
  TierCounters& counters(uint32_t t) { return *counters_[t]; }
  // Bytes of resident rows (ResidentRowCost each) over every table, with or
  // without a budget: what the budget and the server's resident ceiling
  // (storage.max_resident_bytes) are checked against.
  int64_t resident_bytes() const { return resident_bytes_; }
  // Charges `rows` rows of table t created through table() directly (the
  // server's untiered fast path), so that resident_bytes() stays exact.
  void ChargeCreated(uint32_t t, uint64_t rows) { Charge(t, static_cast<int64_t>(rows)); }
  // Resident rows of table t over this store's shards.
  uint64_t resident_rows(uint32_t t) const;

  // Resolves keys[0, n) of table t (keys[i] in logical shard shards[i]) to
  // rows: resident, read back from RocksDB, or created (InitRow for `generation`,
  // last_push_seq = `push_seq`) if create(i) says so; else rows[i] = nullptr. A row
  // of a generation older than `generation` is re-initialised. Evicts cold rows first
  // to make room. Every returned row is pinned until Unpin(); keys may
  // repeat. `create` is called once per key that has no row anywhere.
  // `touch`: the lookup is a use that earns resident rows CLOCK's second
  // chance (a PULL; a PUSH follows its pull and says nothing new). A row
  // that enters memory (created or read back) starts on probation, without
  // the reference bit: it earns it on its next touching lookup, so a key
  // used once does not push out one used again and again.
  // `read_only` (a read-only PULL, evaluation): no row is created (`create`
  // is not called) and no stale row is re-initialised; a key whose row is
  // missing or stale gets rows[i] = nullptr. Live rows read back from
  // RocksDB still become resident, as on any lookup; stale ones stay there.
  [[nodiscard]] absl::Status Resolve(uint32_t t, const uint64_t* keys, const uint32_t* shards, size_t n,
                                     uint32_t generation, uint64_t push_seq, const std::function<bool(size_t)>& create,
                                     uint8_t** rows, bool touch = true, bool read_only = false);
  void Unpin(uint8_t** rows, size_t n);

  // Calls fn(row) for every row of (t, shard) that is not stale for
  // `generation`: resident ones, then spilled ones that are not resident. fn gets
  // the whole row; it must not insert or erase.
  [[nodiscard]] absl::Status ForEachRow(uint32_t t, uint32_t shard, uint32_t generation,
                                        const std::function<void(const uint8_t*)>& fn);

  // Removes the rows of (t, shard) that are stale for `generation` or for which
  // expired(row) holds, from memory and RocksDB. Appends the keys of removed
  // rows that were not stale to *removed (they need tombstones); counts all.
  [[nodiscard]] absl::Status Sweep(uint32_t t, uint32_t shard, uint32_t generation,
                                   const std::function<bool(const RowMeta&)>& expired,
                                   std::vector<uint64_t>* removed, uint64_t* stale);
  // Removes the rows of `keys` (all in `shard`) from memory and RocksDB.
  [[nodiscard]] absl::Status Remove(uint32_t t, uint32_t shard, const std::vector<uint64_t>& keys);
  // Removes every row of (t, shard).
  [[nodiscard]] absl::Status DropShard(uint32_t t, uint32_t shard);
  // Stores a row read from a checkpoint: overwrites a resident copy, else
  // becomes resident if the budget allows, else goes straight to RocksDB
  // (buffered; call FlushPending when done).
  [[nodiscard]] absl::Status Load(uint32_t t, uint32_t shard, const uint8_t* row);
  [[nodiscard]] absl::Status FlushPending();

 private:
  // Evicts until `extra` more bytes fit under the budget (or nothing more
  // can go); dirty evicted rows are written to RocksDB in one batch.
  absl::Status MakeRoom(uint64_t extra);
  void Charge(uint32_t t, int64_t rows);

  std::vector<const TableSpec*> specs_;
  std::vector<uint32_t> shards_;
  std::vector<int32_t> local_;  // logical shard -> index in shards_, or -1
  uint64_t budget_;
  SpillStore* spill_;
  std::vector<std::vector<std::unique_ptr<ShardTable>>> tables_;  // [table][local shard]
  std::vector<std::unique_ptr<TierCounters>> counters_;
  int64_t resident_bytes_ = 0;
  size_t clock_cursor_ = 0;  // round robin over (table, local shard)
  SpillStore::Batch pending_;
  // Per table: every key this store has put into RocksDB (evictions and
  // Load). A key it does not hold has no RocksDB row: the store wipes
  // RocksDB at open and only this store writes its shards' keys.
  std::vector<KeyFilter> spilled_;
  // Scratch for Resolve.
  std::vector<uint32_t> miss_index_, miss_shard_;
  std::vector<uint64_t> miss_key_;
  std::vector<uint8_t> miss_rows_;
  std::vector<uint32_t> miss_slot_, read_miss_, read_shard_;
  std::vector<uint64_t> read_key_;
  std::vector<uint8_t> read_found_;
};

}  // namespace ember::storage

#endif  // EMBER_STORAGE_TIERED_STORE_H_
