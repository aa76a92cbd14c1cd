#include "storage/spill_store.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "rocksdb/cache.h"
#include "rocksdb/db.h"
#include "rocksdb/filter_policy.h"
#include "rocksdb/memtablerep.h"
#include "rocksdb/options.h"
#include "rocksdb/slice_transform.h"
#include "rocksdb/table.h"
#include "rocksdb/write_batch.h"

namespace ember::storage {
namespace {

constexpr size_t kKeyBytes = 12;
constexpr char kLockFile[] = "EMBER_SPILL_LOCK";

std::vector<std::filesystem::path> ContentsBesidesLock(const std::string& dir) {
  std::vector<std::filesystem::path> out;
  std::error_code ec;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->path().filename() != kLockFile) out.push_back(it->path());
  }
  return out;
}

// Creates `dir`, locks it (the returned fd holds the flock) and empties what a
// dead server left there. Refuses a directory in use, or one with files but
// no lock file (not ours: nothing is deleted).
absl::StatusOr<int> LockSpillDir(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("RocksDB tier: cannot create ", dir, ": ", ec.message()));
  const fs::path lock = fs::path(dir) / kLockFile;
  if (!fs::exists(lock, ec)) {
    const std::vector<fs::path> foreign = ContentsBesidesLock(dir);
    if (!foreign.empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat("RocksDB tier: ", dir, " holds ", foreign[0].filename().string(),
                       " and is not an ember spill directory (no ", kLockFile,
                       "); set storage.spill_path to a directory of its own"));
    }
  }
  const int fd = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0) return absl::InternalError(absl::StrCat("RocksDB tier: cannot open ", lock.string(), ": ", std::strerror(errno)));
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    ::close(fd);
    if (err == EWOULDBLOCK) {
      return absl::FailedPreconditionError(absl::StrCat("RocksDB tier: ", dir,
                                                        " is in use by another ember server (", kLockFile,
                                                        " is locked); give each job its own storage.spill_path"));
    }
    return absl::InternalError(absl::StrCat("RocksDB tier: cannot lock ", lock.string(), ": ", std::strerror(err)));
  }
  // A dead server's tier: a stale cache of state that only a checkpoint can
  // bring back. Everything but the lock goes.
  for (const fs::path& p : ContentsBesidesLock(dir)) {
    std::error_code rm;
    fs::remove_all(p, rm);
    if (rm) {
      ::close(fd);
      return absl::InternalError(absl::StrCat("RocksDB tier: cannot clear ", p.string(), ": ", rm.message()));
    }
  }
  return fd;
}

inline void EncodeKey(uint32_t shard, uint64_t key, char* out) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<char>(shard >> (24 - 8 * i));
  for (int i = 0; i < 8; ++i) out[4 + i] = static_cast<char>(key >> (56 - 8 * i));
}

inline uint64_t DecodeKey(const char* p) {
  uint64_t k = 0;
  for (int i = 0; i < 8; ++i) k = (k << 8) | static_cast<uint8_t>(p[4 + i]);
  return k;
}

absl::Status FromRocks(const rocksdb::Status& s, const std::string& what) {
  if (s.ok()) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("RocksDB tier: ", what, ": ", s.ToString()));
}

// The options, and why (docs/storage.md repeats this for operators):
rocksdb::ColumnFamilyOptions TableOptions(const std::shared_ptr<rocksdb::Cache>& cache) {
  rocksdb::ColumnFamilyOptions cf;
  rocksdb::BlockBasedTableOptions t;
  // Rows are point-read by key: small blocks make each miss read 4 KiB, not
  // more, and a full (whole-key) bloom filter lets a lookup of a key that was
  // never spilled (a new key) skip the read entirely: ~1% false positives
  // at 10 bits per key.
  t.block_size = 4096;
  t.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  t.whole_key_filtering = true;
  // The memory tier is the cache of rows; the block cache only holds index
  // and filter blocks and recently read data blocks, so it stays small and
  // index/filter blocks are charged to it rather than growing unbounded.
  t.block_cache = cache;
  t.cache_index_and_filter_blocks = true;
  t.pin_l0_filter_and_index_blocks_in_cache = true;
  cf.table_factory.reset(rocksdb::NewBlockBasedTableFactory(t));
  // Embedding rows are random floats: compression costs CPU and saves ~nothing.
  cf.compression = rocksdb::kNoCompression;
  cf.bottommost_compression = rocksdb::kNoCompression;
  // Evictions come in batches of thousands of rows: larger memtables mean
  // fewer, larger flushes and less L0 churn.
  cf.write_buffer_size = 64 << 20;
  // A miss searches every memtable; a whole-key bloom filter in each lets
  // the search skip those that do not hold the key (most of them: the
  // profile of storage_bench put 30-40% of handler time in memtable
  // skip-list searches without it).
  cf.memtable_whole_key_filtering = true;
  cf.memtable_prefix_bloom_size_ratio = 0.05;
  // Memtables hashed by logical shard (the 4-byte key prefix), a short skip
  // list per bucket, instead of one skip list over every row: evictions
  // insert, and misses search, ~200k-row memtables, and the one big skip
  // list cost a quarter of a budgeted server's CPU in model_bench's profile
  // (FindSpliceForLevel, FindGreaterOrEqual, key compares). A shard scan
  // (ForEach) stays within one prefix, which hashed memtables serve in
  // order.
  cf.prefix_extractor.reset(rocksdb::NewFixedPrefixTransform(4));
  cf.memtable_factory.reset(rocksdb::NewHashSkipListRepFactory(/*bucket_count=*/16384));
  cf.max_write_buffer_number = 3;
  cf.target_file_size_base = 64 << 20;
  cf.max_bytes_for_level_base = 512 << 20;
  cf.level_compaction_dynamic_level_bytes = true;
  return cf;
}

}  // namespace

SpillStore::Batch::Batch() : batch_(std::make_unique<rocksdb::WriteBatch>()) {}
SpillStore::Batch::~Batch() = default;
SpillStore::Batch::Batch(Batch&&) = default;
SpillStore::Batch& SpillStore::Batch::operator=(Batch&&) = default;

void SpillStore::Batch::Put(uint32_t table, uint32_t shard, uint64_t key, const uint8_t* row, size_t bytes) {
  char k[kKeyBytes];
  EncodeKey(shard, key, k);
  (void)batch_->Put(store_->cfs_[table], rocksdb::Slice(k, kKeyBytes),
                    rocksdb::Slice(reinterpret_cast<const char*>(row), bytes));
}

void SpillStore::Batch::Delete(uint32_t table, uint32_t shard, uint64_t key) {
  char k[kKeyBytes];
  EncodeKey(shard, key, k);
  (void)batch_->Delete(store_->cfs_[table], rocksdb::Slice(k, kKeyBytes));
}

size_t SpillStore::Batch::count() const { return static_cast<size_t>(batch_->Count()); }
void SpillStore::Batch::Clear() { batch_->Clear(); }

absl::StatusOr<std::unique_ptr<SpillStore>> SpillStore::Open(const SpillStoreOptions& options) {
  if (options.path.empty()) return absl::InvalidArgumentError("RocksDB tier: empty path");
  absl::StatusOr<int> lock_fd = LockSpillDir(options.path);
  if (!lock_fd.ok()) return lock_fd.status();
  std::unique_ptr<SpillStore> store(new SpillStore());
  store->path_ = options.path;
  store->lock_fd_ = *lock_fd;  // the destructor releases it, also on the errors below

  rocksdb::DBOptions db;
  db.create_if_missing = true;
  db.create_missing_column_families = true;
  // Flushes and compactions run in the background, off the request threads.
  db.max_background_jobs = 2;
  // Hashed memtables take one writer at a time (handler threads' writes are
  // grouped by RocksDB's write leader instead).
  db.allow_concurrent_memtable_write = false;
  db.bytes_per_sync = 1 << 20;
  // Spill files are re-opened rarely; keep them open.
  db.max_open_files = -1;
  db.info_log_level = rocksdb::WARN_LEVEL;
  db.keep_log_file_num = 2;
  auto cache = rocksdb::NewLRUCache(options.block_cache_bytes);
  std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
  cfs.emplace_back(rocksdb::kDefaultColumnFamilyName, TableOptions(cache));
  for (size_t i = 0; i < options.tables.size(); ++i) {
    cfs.emplace_back(absl::StrCat("t", i, "-", options.tables[i]), TableOptions(cache));
  }
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db, options.path, cfs, &handles, &raw);
  if (!s.ok()) return FromRocks(s, absl::StrCat("open ", options.path));
  store->db_.reset(raw);
  // handles[0] is the default family, unused; the store keeps the others.
  store->cfs_.assign(handles.begin() + 1, handles.end());
  store->default_cf_ = handles[0];
  return store;
}

SpillStore::~SpillStore() {
  if (db_) {
    for (auto* h : cfs_) (void)db_->DestroyColumnFamilyHandle(h);
    (void)db_->DestroyColumnFamilyHandle(default_cf_);
    (void)db_->Close();
    db_.reset();
  }
  if (lock_fd_ >= 0) {
    // Ours, and a cache: nothing in it outlives the server. The lock file
    // goes last, while still locked, so no other server can start in between.
    std::error_code ec;
    for (const std::filesystem::path& p : ContentsBesidesLock(path_)) std::filesystem::remove_all(p, ec);
    std::filesystem::remove(std::filesystem::path(path_) / kLockFile, ec);
    std::filesystem::remove(path_, ec);
    ::close(lock_fd_);
  }
}

absl::Status SpillStore::Write(Batch* batch) {
  if (batch->count() == 0) return absl::OkStatus();
  rocksdb::WriteOptions w;
  // Durability comes from checkpoints; the tier is rebuilt from one on restart.
  w.disableWAL = true;
  absl::Status st = FromRocks(db_->Write(w, batch->batch_.get()), "write");
  batch->Clear();
  return st;
}

absl::Status SpillStore::MultiGet(uint32_t table, absl::Span<const uint32_t> shards, absl::Span<const uint64_t> keys,
                                  size_t row_bytes, uint8_t* out, uint8_t* found) {
  const size_t n = keys.size();
  if (n == 0) return absl::OkStatus();
  std::vector<char> key_bytes(n * kKeyBytes);
  std::vector<rocksdb::Slice> slices(n);
  for (size_t i = 0; i < n; ++i) {
    EncodeKey(shards[i], keys[i], key_bytes.data() + i * kKeyBytes);
    slices[i] = rocksdb::Slice(key_bytes.data() + i * kKeyBytes, kKeyBytes);
  }
  std::vector<rocksdb::PinnableSlice> values(n);
  std::vector<rocksdb::Status> statuses(n);
  rocksdb::ReadOptions r;
  r.fill_cache = true;
  db_->MultiGet(r, cfs_[table], n, slices.data(), values.data(), statuses.data(), /*sorted_input=*/false);
  for (size_t i = 0; i < n; ++i) {
    if (statuses[i].IsNotFound()) {
      found[i] = 0;
      continue;
    }
    if (!statuses[i].ok()) return FromRocks(statuses[i], absl::StrCat("read key ", keys[i]));
    if (values[i].size() != row_bytes) {
      return absl::DataLossError(absl::StrCat("RocksDB tier: key ", keys[i], " holds ", values[i].size(),
                                              " bytes, rows of table ", table, " have ", row_bytes));
    }
    std::memcpy(out + i * row_bytes, values[i].data(), row_bytes);
    found[i] = 1;
  }
  return absl::OkStatus();
}

absl::Status SpillStore::ForEach(uint32_t table, uint32_t shard,
                                 const std::function<bool(uint64_t, const uint8_t*, size_t)>& fn) {
  char lo[kKeyBytes], hi[kKeyBytes];
  EncodeKey(shard, 0, lo);
  EncodeKey(shard + 1, 0, hi);  // shard + 1 fits: shards are < 2^20
  rocksdb::Slice upper(hi, kKeyBytes);
  rocksdb::ReadOptions r;
  r.iterate_upper_bound = &upper;
  r.fill_cache = false;  // a scan must not flush the cache of hot blocks
  r.readahead_size = 2 << 20;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(r, cfs_[table]));
  // RocksDB's values sit at any alignment (2 bytes was seen); callers read
  // them as RowMeta and floats, so each is copied to 8-byte-aligned memory.
  std::vector<uint64_t> aligned;
  for (it->Seek(rocksdb::Slice(lo, kKeyBytes)); it->Valid(); it->Next()) {
    const rocksdb::Slice v = it->value();
    aligned.resize((v.size() + 7) / 8);
    if (v.size() > 0) std::memcpy(aligned.data(), v.data(), v.size());
    if (!fn(DecodeKey(it->key().data()), reinterpret_cast<const uint8_t*>(aligned.data()), v.size())) break;
  }
  return FromRocks(it->status(), "scan");
}

absl::Status SpillStore::DropShard(uint32_t table, uint32_t shard) {
  char lo[kKeyBytes], hi[kKeyBytes];
  EncodeKey(shard, 0, lo);
  EncodeKey(shard + 1, 0, hi);
  rocksdb::WriteOptions w;
  w.disableWAL = true;
  return FromRocks(db_->DeleteRange(w, cfs_[table], rocksdb::Slice(lo, kKeyBytes), rocksdb::Slice(hi, kKeyBytes)),
                   "drop shard");
}

uint64_t SpillStore::EstimatedRows(uint32_t table) const {
  uint64_t v = 0;
  db_->GetIntProperty(cfs_[table], rocksdb::DB::Properties::kEstimateNumKeys, &v);
  return v;
}

uint64_t SpillStore::LiveBytes(uint32_t table) const {
  uint64_t v = 0;
  db_->GetIntProperty(cfs_[table], rocksdb::DB::Properties::kLiveSstFilesSize, &v);
  return v;
}

bool SpillStore::BackgroundWorkPending() const {
  for (auto* cf : cfs_) {
    for (const auto& property : {rocksdb::DB::Properties::kMemTableFlushPending,
                                 rocksdb::DB::Properties::kCompactionPending,
                                 rocksdb::DB::Properties::kNumRunningFlushes,
                                 rocksdb::DB::Properties::kNumRunningCompactions}) {
      uint64_t v = 0;
      if (db_->GetIntProperty(cf, property, &v) && v > 0) return true;
    }
  }
  return false;
}

}  // namespace ember::storage
