#include "storage/tiered_store.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace ember::storage {
namespace {

// Rows written to RocksDB per batch while loading a checkpoint.
constexpr size_t kPendingRows = 4096;
// Slots the CLOCK hand looks at in one shard before moving to the next: small
// enough that the hands of all shards advance together, like one clock.
constexpr size_t kClockQuantum = 64;

inline bool Stale(const uint8_t* row, uint32_t generation) {
  return reinterpret_cast<const RowMeta*>(row)->generation < generation;
}

}  // namespace

TieredStore::TieredStore(std::vector<const TableSpec*> specs, const std::vector<uint32_t>& shards,
                         uint32_t num_logical_shards, uint64_t budget_bytes, SpillStore* spill)
    : specs_(std::move(specs)), shards_(shards), local_(num_logical_shards, -1), budget_(budget_bytes),
      spill_(spill) {
  for (size_t i = 0; i < shards_.size(); ++i) local_[shards_[i]] = static_cast<int32_t>(i);
  tables_.resize(specs_.size());
  for (size_t t = 0; t < specs_.size(); ++t) {
    for (size_t i = 0; i < shards_.size(); ++i) tables_[t].push_back(std::make_unique<ShardTable>(specs_[t]));
    counters_.push_back(std::make_unique<TierCounters>());
  }
  spilled_.resize(specs_.size());
  if (spill_) pending_ = spill_->NewBatch();
}

void TieredStore::Charge(uint32_t t, int64_t rows) {
  resident_bytes_ += rows * static_cast<int64_t>(ResidentRowCost(*specs_[t]));
}

uint64_t TieredStore::resident_rows(uint32_t t) const {
  uint64_t n = 0;
  for (const auto& tab : tables_[t]) n += tab->size();
  return n;
}

absl::Status TieredStore::MakeRoom(uint64_t extra) {
  if (spill_ == nullptr || budget_ == 0 || shards_.empty()) return absl::OkStatus();
  const size_t slots = tables_.size() * shards_.size();
  SpillStore::Batch batch = spill_->NewBatch();
  // Give up (everything left is pinned) only after the hands have looked at
  // every row twice without evicting one: the first turn may only clear
  // reference bits. Counting turns instead gave up too early on big shards.
  uint64_t rows = 0;
  for (const auto& per_table : tables_) {
    for (const auto& tab : per_table) rows += tab->size();
  }
  uint64_t idle_slots = 0;
  while (resident_bytes_ + static_cast<int64_t>(extra) > static_cast<int64_t>(budget_) &&
         idle_slots <= 2 * rows + 2 * kClockQuantum * slots) {
    const size_t c = clock_cursor_++ % slots;
    const uint32_t t = static_cast<uint32_t>(c / shards_.size());
    const size_t local = c % shards_.size();
    ShardTable& table = *tables_[t][local];
    const size_t cost = ResidentRowCost(*specs_[t]);
    const uint64_t over = static_cast<uint64_t>(resident_bytes_ + static_cast<int64_t>(extra) - static_cast<int64_t>(budget_));
    const size_t want = (over + cost - 1) / cost;
    uint64_t written = 0;
    const size_t n = table.ClockSweep(kClockQuantum, want, [&](const uint8_t* row) {
      const RowMeta* m = reinterpret_cast<const RowMeta*>(row);
      if (m->flags & kRowDirty) {
        batch.Put(t, shards_[local], m->key, row, specs_[t]->row_bytes());
        spilled_[t].Add(m->key);
        ++written;
      }
    });
    idle_slots = n > 0 ? 0 : idle_slots + kClockQuantum;
    Charge(t, -static_cast<int64_t>(n));
    counters_[t]->evictions.fetch_add(n, std::memory_order_relaxed);
    counters_[t]->spill_writes.fetch_add(written, std::memory_order_relaxed);
  }
  return spill_->Write(&batch);
}

absl::Status TieredStore::Resolve(uint32_t t, const uint64_t* keys, const uint32_t* shards, size_t n,
                                  uint32_t generation, uint64_t push_seq, const std::function<bool(size_t)>& create,
                                  uint8_t** rows, bool touch, bool read_only) {
  const TableSpec& spec = *specs_[t];
  const size_t row_bytes = spec.row_bytes();
  TierCounters& ctr = *counters_[t];
  miss_index_.clear();
  miss_shard_.clear();
  miss_key_.clear();
  // Pass 1: resident rows. Pin them so that making room cannot evict them.
  for (size_t i = 0; i < n; ++i) {
    if (i + 8 < n) table(t, shards[i + 8]).PrefetchIndex(keys[i + 8]);
    uint8_t* row = table(t, shards[i]).Find(keys[i]);
    rows[i] = row;
    if (row == nullptr) {
      miss_index_.push_back(static_cast<uint32_t>(i));
      miss_shard_.push_back(shards[i]);
      miss_key_.push_back(keys[i]);
      continue;
    }
    if (Stale(row, generation)) {
      if (read_only) {
        rows[i] = nullptr;  // left as it is: only a write re-draws it
        continue;
      }
      spec.InitRow(keys[i], generation, row);
      TableSpec::Meta(row)->last_push_seq = push_seq;
    }
    TableSpec::Meta(row)->flags |= touch ? kRowRef | kRowPinned : kRowPinned;
  }
  const size_t misses = miss_index_.size();
  ctr.hits.fetch_add(n - misses, std::memory_order_relaxed);
  if (misses == 0) return absl::OkStatus();
  ctr.misses.fetch_add(misses, std::memory_order_relaxed);

  // Pass 2: one batched read of every missing row that RocksDB may hold.
  // miss_slot_[m]: where miss m's row landed in miss_rows_, or kNotRead.
  constexpr uint32_t kNotRead = UINT32_MAX;
  miss_slot_.assign(misses, kNotRead);
  if (spill_ != nullptr) {
    read_miss_.clear();
    read_shard_.clear();
    read_key_.clear();
    for (size_t m = 0; m < misses; ++m) {
      if (!spilled_[t].MayContain(miss_key_[m])) continue;
      read_miss_.push_back(static_cast<uint32_t>(m));
      read_shard_.push_back(miss_shard_[m]);
      read_key_.push_back(miss_key_[m]);
    }
    const size_t reads = read_miss_.size();
    miss_rows_.resize(reads * row_bytes);
    read_found_.assign(reads, 0);
    absl::Status st = spill_->MultiGet(t, read_shard_, read_key_, row_bytes, miss_rows_.data(), read_found_.data());
    if (!st.ok()) {
      Unpin(rows, n);
      return st;
    }
    for (size_t r = 0; r < reads; ++r) {
      if (read_found_[r]) miss_slot_[read_miss_[r]] = static_cast<uint32_t>(r);
    }
  }
  // Pass 3: room for them, then admit them to memory. A read-only lookup
  // brings in only the live rows it read, and evicts no more than they need.
  size_t incoming = misses;
  if (read_only) {
    incoming = 0;
    for (size_t m = 0; m < misses; ++m) {
      if (miss_slot_[m] == kNotRead) continue;
      incoming += !Stale(miss_rows_.data() + size_t{miss_slot_[m]} * row_bytes, generation);
    }
  }
  absl::Status st = MakeRoom(incoming * ResidentRowCost(spec));
  if (!st.ok()) {
    Unpin(rows, n);
    return st;
  }
  uint64_t read_back = 0;
  for (size_t m = 0; m < misses; ++m) {
    const size_t i = miss_index_[m];
    ShardTable& tab = table(t, miss_shard_[m]);
    uint8_t* row = nullptr;
    if (miss_slot_[m] != kNotRead && read_only &&
        Stale(miss_rows_.data() + size_t{miss_slot_[m]} * row_bytes, generation)) {
      row = nullptr;  // stale in RocksDB: not worth a resident slot
    } else if (miss_slot_[m] != kNotRead) {
      bool existed;
      row = tab.Emplace(keys[i], &existed);
      if (!existed) {
        std::memcpy(row, miss_rows_.data() + size_t{miss_slot_[m]} * row_bytes, row_bytes);
        TableSpec::Meta(row)->flags = kRowLive;  // clean: RocksDB holds this copy
        Charge(t, 1);
        ++read_back;
      }
      if (Stale(row, generation)) {
        spec.InitRow(keys[i], generation, row);
        TableSpec::Meta(row)->last_push_seq = push_seq;
      }
    } else {
      row = tab.Find(keys[i]);  // a repeated key created earlier in this loop
      if (row == nullptr && !read_only && create(i)) {
        bool created;
        row = tab.FindOrCreate(keys[i], generation, &created);
        TableSpec::Meta(row)->last_push_seq = push_seq;
        Charge(t, 1);
      }
    }
    if (row != nullptr) TableSpec::Meta(row)->flags |= kRowPinned;  // on probation: no kRowRef
    rows[i] = row;
  }
  ctr.spill_reads.fetch_add(read_back, std::memory_order_relaxed);
  return absl::OkStatus();
}

void TieredStore::Unpin(uint8_t** rows, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (rows[i] != nullptr) TableSpec::Meta(rows[i])->flags &= ~kRowPinned;
  }
}

absl::Status TieredStore::ForEachRow(uint32_t t, uint32_t shard, uint32_t generation,
                                     const std::function<void(const uint8_t*)>& fn) {
  ShardTable& tab = table(t, shard);
  tab.ForEach([&](uint64_t, uint8_t* row) {
    if (!Stale(row, generation)) fn(row);
  });
  if (spill_ == nullptr) return absl::OkStatus();
  const size_t row_bytes = specs_[t]->row_bytes();
  absl::Status bad;
  absl::Status st = spill_->ForEach(t, shard, [&](uint64_t key, const uint8_t* row, size_t bytes) {
    if (bytes != row_bytes) {
      bad = absl::DataLossError(absl::StrCat("RocksDB tier: key ", key, " holds ", bytes, " bytes, rows have ",
                                             row_bytes));
      return false;
    }
    if (tab.Find(key) == nullptr && !Stale(row, generation)) fn(row);  // resident copies win
    return true;
  });
  return bad.ok() ? st : bad;
}

absl::Status TieredStore::Sweep(uint32_t t, uint32_t shard, uint32_t generation,
                                const std::function<bool(const RowMeta&)>& expired, std::vector<uint64_t>* removed,
                                uint64_t* stale) {
  std::vector<uint64_t> keys;
  auto consider = [&](const uint8_t* row) {
    const RowMeta& m = *reinterpret_cast<const RowMeta*>(row);
    if (Stale(row, generation)) {
      keys.push_back(m.key);
      ++*stale;
    } else if (expired(m)) {
      keys.push_back(m.key);
      removed->push_back(m.key);
    }
  };
  ShardTable& tab = table(t, shard);
  tab.ForEach([&](uint64_t, uint8_t* row) { consider(row); });
  if (spill_ != nullptr) {
    absl::Status st = spill_->ForEach(t, shard, [&](uint64_t key, const uint8_t* row, size_t bytes) {
      if (bytes >= sizeof(RowMeta) && tab.Find(key) == nullptr) consider(row);
      return true;
    });
    if (!st.ok()) return st;
  }
  return Remove(t, shard, keys);
}

absl::Status TieredStore::Remove(uint32_t t, uint32_t shard, const std::vector<uint64_t>& keys) {
  ShardTable& tab = table(t, shard);
  int64_t erased = 0;
  for (uint64_t k : keys) erased += tab.Erase(k) ? 1 : 0;
  Charge(t, -erased);
  if (spill_ == nullptr) return absl::OkStatus();
  SpillStore::Batch batch = spill_->NewBatch();
  for (uint64_t k : keys) batch.Delete(t, shard, k);
  return spill_->Write(&batch);
}

absl::Status TieredStore::DropShard(uint32_t t, uint32_t shard) {
  ShardTable& tab = table(t, shard);
  Charge(t, -static_cast<int64_t>(tab.size()));
  tab.Clear();
  if (spill_ == nullptr) return absl::OkStatus();
  return spill_->DropShard(t, shard);
}

absl::Status TieredStore::Load(uint32_t t, uint32_t shard, const uint8_t* src) {
  const TableSpec& spec = *specs_[t];
  const size_t row_bytes = spec.row_bytes();
  const uint64_t key = reinterpret_cast<const RowMeta*>(src)->key;
  ShardTable& tab = table(t, shard);
  uint8_t* row = tab.Find(key);
  const bool room = spill_ == nullptr || budget_ == 0 ||
                    resident_bytes_ + static_cast<int64_t>(ResidentRowCost(spec)) <= static_cast<int64_t>(budget_);
  if (row == nullptr && room) {
    bool existed;
    row = tab.Emplace(key, &existed);
    Charge(t, 1);
  }
  if (row != nullptr) {
    std::memcpy(row, src, row_bytes);
    TableSpec::Meta(row)->flags = kRowLive | kRowDirty;
    return absl::OkStatus();
  }
  pending_.Put(t, shard, key, src, row_bytes);
  spilled_[t].Add(key);
  if (pending_.count() >= kPendingRows) return spill_->Write(&pending_);
  return absl::OkStatus();
}

absl::Status TieredStore::FlushPending() {
  if (spill_ == nullptr) return absl::OkStatus();
  return spill_->Write(&pending_);
}

}  // namespace ember::storage
