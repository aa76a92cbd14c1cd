#include "storage/tiered_store.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace ember::storage {
namespace {

// Rows that were all touched once (reference bits set) and then fall out of
// use must still be evicted when new keys arrive: the CLOCK may need a full
// turn of every hand just to clear the bits. (Giving up after a fixed number
// of turns left a 200M-key run far above its budget.)
TEST(TieredStoreTest, EvictsRowsThatAllCarryReferenceBits) {
  const std::string dir =
      (std::filesystem::temp_directory_path() / absl::StrCat("ember-tiered-", getpid())).string();
  proto::TableConfig tc;
  tc.set_name("t");
  tc.set_dim(4);
  TableSpec spec(tc);
  SpillStoreOptions so;
  so.path = dir;
  so.tables = {"t"};
  auto spill = SpillStore::Open(so);
  ASSERT_TRUE(spill.ok()) << spill.status();
  const uint64_t budget_rows = 500;
  TieredStore store({&spec}, {0, 1}, 2, budget_rows * ResidentRowCost(spec), spill->get());
  auto resolve = [&](uint64_t first, size_t n) {
    std::vector<uint64_t> keys;
    std::vector<uint32_t> shards;
    for (uint64_t k = first; k < first + n; ++k) {
      keys.push_back(k);
      shards.push_back(k % 2);
    }
    std::vector<uint8_t*> rows(n);
    ASSERT_TRUE(store.Resolve(0, keys.data(), shards.data(), n, 0, 1, [](size_t) { return true; }, rows.data()).ok());
    for (uint8_t* r : rows) ASSERT_NE(r, nullptr);
    store.Unpin(rows.data(), n);
  };
  resolve(1, 4000);  // one request: pinned, so it may exceed the budget
  EXPECT_EQ(store.resident_rows(0), 4000u);
  resolve(1, 4000);  // all hits: now every row carries its reference bit
  EXPECT_EQ(store.counters(0).hits.load(), 4000u);
  resolve(100000, 10);
  EXPECT_LE(store.resident_rows(0), budget_rows);
  EXPECT_EQ(store.counters(0).evictions.load(), 4010u - store.resident_rows(0));
  // The evicted rows come back from RocksDB, whole.
  resolve(1, 10);
  EXPECT_EQ(store.counters(0).spill_reads.load(), 10u);
  std::filesystem::remove_all(dir);
}

// Rows a checkpoint load sends straight to RocksDB (no room in memory) are
// found again: the store only reads keys it knows it wrote, so Load must
// count as a write. With create() false a row not found would be nullptr.
TEST(TieredStoreTest, RowsLoadedPastTheBudgetAreReadBack) {
  const std::string dir =
      (std::filesystem::temp_directory_path() / absl::StrCat("ember-tiered-load-", getpid())).string();
  proto::TableConfig tc;
  tc.set_name("t");
  tc.set_dim(4);
  TableSpec spec(tc);
  SpillStoreOptions so;
  so.path = dir;
  so.tables = {"t"};
  auto spill = SpillStore::Open(so);
  ASSERT_TRUE(spill.ok()) << spill.status();
  TieredStore store({&spec}, {0}, 1, 10 * ResidentRowCost(spec), spill->get());
  const size_t n = 100;
  std::vector<uint8_t> row(spec.row_bytes());
  for (uint64_t k = 1; k <= n; ++k) {
    spec.InitRow(k, 0, row.data());
    TableSpec::Weights(row.data())[0] = static_cast<float>(k);
    ASSERT_TRUE(store.Load(0, 0, row.data()).ok());
  }
  ASSERT_TRUE(store.FlushPending().ok());
  EXPECT_EQ(store.resident_rows(0), 10u);
  std::vector<uint64_t> keys;
  for (uint64_t k = 1; k <= n; ++k) keys.push_back(k);
  std::vector<uint32_t> shards(n, 0);
  std::vector<uint8_t*> rows(n);
  ASSERT_TRUE(store.Resolve(0, keys.data(), shards.data(), n, 0, 1, [](size_t) { return false; }, rows.data()).ok());
  for (size_t i = 0; i < n; ++i) {
    ASSERT_NE(rows[i], nullptr) << "key " << keys[i];
    EXPECT_EQ(TableSpec::Weights(rows[i])[0], static_cast<float>(keys[i]));
  }
  store.Unpin(rows.data(), n);
  EXPECT_EQ(store.counters(0).spill_reads.load(), 90u);
  std::filesystem::remove_all(dir);
}

// A row that entered memory once (on probation) goes before a row touched
// again since it came in; a push (touch = false) earns no second chance.
TEST(TieredStoreTest, RowsUsedOnceAreEvictedBeforeRowsUsedAgain) {
  const std::string dir =
      (std::filesystem::temp_directory_path() / absl::StrCat("ember-tiered-probation-", getpid())).string();
  proto::TableConfig tc;
  tc.set_name("t");
  tc.set_dim(4);
  TableSpec spec(tc);
  SpillStoreOptions so;
  so.path = dir;
  so.tables = {"t"};
  auto spill = SpillStore::Open(so);
  ASSERT_TRUE(spill.ok()) << spill.status();
  TieredStore store({&spec}, {0}, 1, 200 * ResidentRowCost(spec), spill->get());
  auto resolve = [&](uint64_t first, size_t n, bool touch) {
    std::vector<uint64_t> keys;
    for (uint64_t k = first; k < first + n; ++k) keys.push_back(k);
    std::vector<uint32_t> shards(n, 0);
    std::vector<uint8_t*> rows(n);
    ASSERT_TRUE(
        store.Resolve(0, keys.data(), shards.data(), n, 0, 1, [](size_t) { return true; }, rows.data(), touch).ok());
    store.Unpin(rows.data(), n);
  };
  resolve(1, 100, true);      // hot: created...
  resolve(1, 100, true);      // ...and used again
  resolve(1001, 100, true);   // cold: created, used once...
  resolve(1001, 100, false);  // ...and pushed, which is no new use
  resolve(5001, 100, true);   // 100 new rows: 100 must go
  EXPECT_EQ(store.resident_rows(0), 200u);
  const uint64_t reads = store.counters(0).spill_reads.load();
  resolve(1, 100, true);  // the hot rows are all still resident
  EXPECT_EQ(store.counters(0).spill_reads.load(), reads);
  resolve(1001, 100, true);  // the cold ones come back from RocksDB
  EXPECT_EQ(store.counters(0).spill_reads.load(), reads + 100);
  std::filesystem::remove_all(dir);
}

// A read-only lookup (an evaluation's PULL) creates nothing, re-draws no
// stale row and brings in no stale spilled row: missing and stale keys come
// back as nullptr, live ones (resident or read back) as they are.
TEST(TieredStoreTest, ReadOnlyResolveCreatesAndReinitialisesNothing) {
  const std::string dir =
      (std::filesystem::temp_directory_path() / absl::StrCat("ember-tiered-readonly-", getpid())).string();
  proto::TableConfig tc;
  tc.set_name("t");
  tc.set_dim(4);
  TableSpec spec(tc);
  SpillStoreOptions so;
  so.path = dir;
  so.tables = {"t"};
  auto spill = SpillStore::Open(so);
  ASSERT_TRUE(spill.ok()) << spill.status();
  TieredStore store({&spec}, {0}, 1, 10 * ResidentRowCost(spec), spill->get());
  const size_t n = 100;
  std::vector<uint8_t> row(spec.row_bytes());
  for (uint64_t k = 1; k <= n; ++k) {  // generation 0; 10 resident, 90 in RocksDB
    spec.InitRow(k, 0, row.data());
    TableSpec::Weights(row.data())[0] = static_cast<float>(k);
    ASSERT_TRUE(store.Load(0, 0, row.data()).ok());
  }
  ASSERT_TRUE(store.FlushPending().ok());
  ASSERT_EQ(store.resident_rows(0), 10u);
  auto never = [](size_t) {
    ADD_FAILURE() << "create called on a read-only lookup";
    return true;
  };
  auto read_only = [&](const std::vector<uint64_t>& keys, uint32_t generation, std::vector<uint8_t*>* rows) {
    std::vector<uint32_t> shards(keys.size(), 0);
    rows->assign(keys.size(), nullptr);
    ASSERT_TRUE(store
                    .Resolve(0, keys.data(), shards.data(), keys.size(), generation, 7, never, rows->data(),
                             /*touch=*/true, /*read_only=*/true)
                    .ok());
  };
  std::vector<uint64_t> unseen, all;
  for (uint64_t k = 1000; k < 1050; ++k) unseen.push_back(k);
  for (uint64_t k = 1; k <= n; ++k) all.push_back(k);
  std::vector<uint8_t*> rows;

  read_only(unseen, 0, &rows);
  for (uint8_t* r : rows) EXPECT_EQ(r, nullptr);
  EXPECT_EQ(store.resident_rows(0), 10u);
  EXPECT_EQ(store.counters(0).evictions.load(), 0u) << "nothing comes in, so nothing need go";

  // As after a RESET_TABLE: every row is stale for generation 1.
  read_only(all, 1, &rows);
  for (size_t i = 0; i < n; ++i) EXPECT_EQ(rows[i], nullptr) << "key " << all[i];
  EXPECT_EQ(store.resident_rows(0), 10u);
  EXPECT_EQ(store.counters(0).spill_reads.load(), 0u) << "stale rows stay in RocksDB";
  size_t still_generation0 = 0;
  std::vector<uint32_t> shard0(1, 0);
  for (uint64_t k = 1; k <= n; ++k) {
    uint8_t* r = store.table(0, 0).Find(k);
    if (r == nullptr) continue;
    EXPECT_EQ(TableSpec::Meta(r)->generation, 0u);
    EXPECT_EQ(TableSpec::Weights(r)[0], static_cast<float>(k)) << "a stale row was re-drawn";
    ++still_generation0;
  }
  EXPECT_EQ(still_generation0, 10u);

  // Live rows come back with their weights, spilled ones read back.
  read_only(all, 0, &rows);
  for (size_t i = 0; i < n; ++i) {
    ASSERT_NE(rows[i], nullptr) << "key " << all[i];
    EXPECT_EQ(TableSpec::Weights(rows[i])[0], static_cast<float>(all[i]));
  }
  store.Unpin(rows.data(), n);
  EXPECT_EQ(store.counters(0).spill_reads.load(), 90u);

  // A training lookup still re-draws a stale row.
  std::vector<uint8_t*> one(1);
  ASSERT_TRUE(store.Resolve(0, all.data(), shard0.data(), 1, 1, 8, [](size_t) { return true; }, one.data()).ok());
  ASSERT_NE(one[0], nullptr);
  EXPECT_EQ(TableSpec::Meta(one[0])->generation, 1u);
  store.Unpin(one.data(), 1);
  std::filesystem::remove_all(dir);
}

// The tier's memtables are hashed by shard prefix: a shard's rows must
// still scan in key order, and a dropped shard (a range deletion) must read
// back as empty while its neighbours keep their rows.
TEST(SpillStoreTest, ShardScanAndDropWithHashedMemtables) {
  const std::string dir =
      (std::filesystem::temp_directory_path() / absl::StrCat("ember-spill-", getpid())).string();
  SpillStoreOptions so;
  so.path = dir;
  so.tables = {"t"};
  auto spill = SpillStore::Open(so);
  ASSERT_TRUE(spill.ok()) << spill.status();
  SpillStore& db = **spill;
  SpillStore::Batch b = db.NewBatch();
  uint64_t row[2];
  for (uint32_t shard = 3; shard <= 5; ++shard) {
    for (uint64_t k = 100; k > 0; --k) {  // written in descending order
      row[0] = k;
      row[1] = shard;
      b.Put(0, shard, k * 1000003, reinterpret_cast<const uint8_t*>(row), sizeof row);
    }
  }
  ASSERT_TRUE(db.Write(&b).ok());
  std::vector<uint64_t> seen;
  ASSERT_TRUE(db.ForEach(0, 4, [&](uint64_t key, const uint8_t* r, size_t bytes) {
                  EXPECT_EQ(bytes, sizeof row);
                  EXPECT_EQ(reinterpret_cast<const uint64_t*>(r)[1], 4u);
                  seen.push_back(key);
                  return true;
                }).ok());
  ASSERT_EQ(seen.size(), 100u);
  for (size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i], (i + 1) * 1000003);
  ASSERT_TRUE(db.DropShard(0, 4).ok());
  std::vector<uint32_t> shards = {3, 4, 5};
  std::vector<uint64_t> keys = {5 * 1000003, 5 * 1000003, 5 * 1000003};
  std::vector<uint8_t> out(3 * sizeof row), found(3);
  ASSERT_TRUE(db.MultiGet(0, shards, keys, sizeof row, out.data(), found.data()).ok());
  EXPECT_EQ(found, (std::vector<uint8_t>{1, 0, 1}));
  size_t left = 0;
  ASSERT_TRUE(db.ForEach(0, 4, [&](uint64_t, const uint8_t*, size_t) { return ++left > 0; }).ok());
  EXPECT_EQ(left, 0u);
  spill->reset();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace ember::storage
