// The RocksDB tier of one server: rows evicted from memory, whole (meta,
// weights, optimizer state), in one RocksDB instance with a column family per
// table. A key is 12 bytes, big-endian (logical shard, feature key), so the
// rows of a shard form one key range and iterate in key order.
//
// The store is a cache of the server's live state, not its durable copy
// (checkpoints are): writes skip the WAL, and the directory is removed when
// the store closes. The directory is locked (flock on EMBER_SPILL_LOCK) while
// open, so two servers never share one; a directory left by a dead server
// (the lock file present, the lock free) is wiped at open, and one holding
// files ember did not write is refused. The options and their reasons are in
// docs/storage.md.
//
// Thread safety: every method is thread-safe (RocksDB's own guarantees). The
// server's handler threads own disjoint shards, so they never write the same
// key.
#ifndef EMBER_STORAGE_SPILL_STORE_H_
#define EMBER_STORAGE_SPILL_STORE_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace rocksdb {
class DB;
class ColumnFamilyHandle;
class WriteBatch;
}  // namespace rocksdb

namespace ember::storage {

struct SpillStoreOptions {
  std::string path;                        // directory; created, locked, removed at close
  std::vector<std::string> tables;         // one column family each, by index
  uint64_t block_cache_bytes = 64 << 20;
};

class SpillStore {
 public:
  // Creates options.path (and its parents), takes its lock and opens
  // RocksDB there. FailedPrecondition, naming the directory, if another
  // process holds the lock or the directory holds files ember did not write.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<SpillStore>> Open(const SpillStoreOptions& options);
  // Closes RocksDB, removes the directory and releases the lock.
  ~SpillStore();
  SpillStore(const SpillStore&) = delete;
  SpillStore& operator=(const SpillStore&) = delete;

  // Puts and deletes, applied together by Write().
  class Batch {
   public:
    Batch();
    ~Batch();
    Batch(Batch&&);
    Batch& operator=(Batch&&);
    void Put(uint32_t table, uint32_t shard, uint64_t key, const uint8_t* row, size_t bytes);
    void Delete(uint32_t table, uint32_t shard, uint64_t key);
    size_t count() const;
    void Clear();

   private:
    friend class SpillStore;
    SpillStore* store_ = nullptr;
    std::unique_ptr<rocksdb::WriteBatch> batch_;
  };
  // A batch bound to this store.
  Batch NewBatch() {
    Batch b;
    b.store_ = this;
    return b;
  }

  [[nodiscard]] absl::Status Write(Batch* batch);

  // Looks up keys[i] (in shard shards[i]) of `table`, one batched MultiGet.
  // found[i] = 1 and the row copied to out + i * row_bytes where present. A
  // stored value of another size is an error (a corrupt tier).
  [[nodiscard]] absl::Status MultiGet(uint32_t table, absl::Span<const uint32_t> shards,
                                      absl::Span<const uint64_t> keys, size_t row_bytes, uint8_t* out,
                                      uint8_t* found);

  // Calls fn(key, row, bytes) for every row of (table, shard), in key order,
  // from a consistent snapshot. fn returns false to stop. `row` is 8-byte
  // aligned and valid only during the call.
  [[nodiscard]] absl::Status ForEach(uint32_t table, uint32_t shard,
                                     const std::function<bool(uint64_t, const uint8_t*, size_t)>& fn);

  // Removes every row of (table, shard).
  [[nodiscard]] absl::Status DropShard(uint32_t table, uint32_t shard);

  // RocksDB's estimate of the rows it holds, and the live SST bytes, of a
  // table.
  uint64_t EstimatedRows(uint32_t table) const;
  uint64_t LiveBytes(uint32_t table) const;
  // True while a memtable flush or a compaction is pending or running in
  // any table (a benchmark waits for a quiet RocksDB before timing reads).
  bool BackgroundWorkPending() const;

 private:
  SpillStore() = default;
  std::string path_;
  int lock_fd_ = -1;  // flock'ed EMBER_SPILL_LOCK, held while open
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> cfs_;
  rocksdb::ColumnFamilyHandle* default_cf_ = nullptr;
};

}  // namespace ember::storage

#endif  // EMBER_STORAGE_SPILL_STORE_H_
