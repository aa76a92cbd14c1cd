#include "worker/batch_builder.h"

#include <time.h>

#include <algorithm>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "proto/config.h"
#include "proto/keys.h"

namespace ember::worker {
namespace {

// Columns: #1 y, #2 user (t0), #3 item (t1, slot 50), #4 hist (t1, slot 50),
// #5 price. Table "unused" (t2) has no column.
const char kConfig[] = R"(
tables { name: "user" }
tables { name: "item" }
tables { name: "unused" }
data {
  train: "x"
  columns { name: "y" type: LABEL }
  columns { name: "user" type: SPARSE table: "user" }
  columns { name: "item" type: SPARSE table: "item" slot: 50 }
  columns { name: "hist" type: SEQUENCE table: "item" slot: 50 max_len: 4 }
  columns { name: "price" type: DENSE }
}
)";

proto::JobConfig Config() {
  absl::StatusOr<proto::JobConfig> c = proto::ParseJobConfig(kConfig, "test");
  EXPECT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(proto::ValidateJobConfig(*c).ok());
  return *c;
}

// `shards` logical shards spread over `servers` in a scrambled (not
// round-robin, not contiguous) pattern, so the sort order is really tested.
proto::ShardMap ShardMap(uint32_t shards, uint32_t servers, uint64_t seed = 1) {
  proto::ShardMap map;
  map.set_num_logical_shards(shards);
  std::mt19937_64 rng(seed);
  for (uint32_t s = 0; s < shards; ++s) map.add_server_rank(rng() % servers);
  return map;
}

// Checks every invariant of models::Batch against the lines it came from.
// `lines` are the good lines in order.
void CheckBatch(const models::Batch& b, const std::vector<std::string>& lines,
                const proto::JobConfig& config, const proto::ShardMap& map, int servers) {
  absl::StatusOr<LogParser> parser = LogParser::Create(config);
  ASSERT_TRUE(parser.ok());
  ASSERT_EQ(b.size, static_cast<int>(lines.size()));
  ASSERT_EQ(b.num_labels, parser->num_labels());
  ASSERT_EQ(b.num_dense, parser->num_dense());
  ASSERT_EQ(b.labels.size(), lines.size() * b.num_labels);
  ASSERT_EQ(b.dense.size(), lines.size() * b.num_dense);
  ASSERT_EQ(b.tables.size(), static_cast<size_t>(config.tables_size()));
  ASSERT_EQ(b.sparse.size(), static_cast<size_t>(parser->num_sparse()));
  uint64_t bytes = 0;
  for (const std::string& l : lines) bytes += l.size() + 1;
  EXPECT_EQ(b.bytes, bytes);

  // Keys: distinct, grouped by server in server_begin ranges, and within a
  // server ordered by (server, shard) = non-decreasing shard within a server.
  for (size_t t = 0; t < b.tables.size(); ++t) {
    const models::TableBatch& tb = b.tables[t];
    ASSERT_EQ(tb.server_begin.size(), static_cast<size_t>(servers + 1));
    EXPECT_EQ(tb.server_begin.front(), 0u);
    EXPECT_EQ(tb.server_begin.back(), tb.keys.size());
    absl::flat_hash_set<uint64_t> seen;
    for (int s = 0; s < servers; ++s) {
      ASSERT_LE(tb.server_begin[s], tb.server_begin[s + 1]);
      int64_t last_shard = -1;
      for (uint32_t k = tb.server_begin[s]; k < tb.server_begin[s + 1]; ++k) {
        const uint32_t shard = proto::ShardOf(tb.keys[k], map.num_logical_shards());
        EXPECT_EQ(map.server_rank(shard), static_cast<uint32_t>(s))
            << "table " << t << " key " << k;
        EXPECT_GE(static_cast<int64_t>(shard), last_shard);
        last_shard = shard;
        EXPECT_TRUE(seen.insert(tb.keys[k]).second) << "duplicate key";
      }
    }
  }

  // Each sample's labels, dense values and keys (through CSR rows) match a
  // fresh parse of its line; and every key of a table is used by some row.
  std::vector<absl::flat_hash_set<uint32_t>> used(b.tables.size());
  ParsedLine p;
  for (size_t i = 0; i < lines.size(); ++i) {
    ASSERT_TRUE(parser->Parse(lines[i], &p).ok());
    for (int l = 0; l < b.num_labels; ++l) EXPECT_EQ(b.labels[i * b.num_labels + l], p.labels[l]);
    for (int d = 0; d < b.num_dense; ++d) EXPECT_EQ(b.dense[i * b.num_dense + d], p.dense[d]);
    for (size_t j = 0; j < b.sparse.size(); ++j) {
      const models::SparseColumnBatch& col = b.sparse[j];
      EXPECT_EQ(col.column, parser->sparse_columns()[j].column);
      EXPECT_EQ(col.table, parser->sparse_columns()[j].table);
      ASSERT_EQ(col.offsets.size(), lines.size() + 1);
      std::vector<uint64_t> got;
      for (uint32_t r = col.offsets[i]; r < col.offsets[i + 1]; ++r) {
        ASSERT_LT(col.rows[r], b.tables[col.table].keys.size());
        got.push_back(b.tables[col.table].keys[col.rows[r]]);
        used[col.table].insert(col.rows[r]);
      }
      std::vector<uint64_t> want(p.keys.begin() + p.key_begin[j],
                                 p.keys.begin() + p.key_begin[j + 1]);
      EXPECT_EQ(got, want) << "sample " << i << " column " << j;
    }
  }
  for (size_t t = 0; t < b.tables.size(); ++t) {
    EXPECT_EQ(used[t].size(), b.tables[t].keys.size()) << "table " << t << " has unused keys";
  }
}

TEST(BatchBuilderTest, DedupAndCsr) {
  const proto::JobConfig config = Config();
  const proto::ShardMap map = ShardMap(16, 3);
  std::unique_ptr<BatchBuilder> builder_owner = *BatchBuilder::Create(config, map, 3);
  BatchBuilder& builder = *builder_owner;
  const std::vector<std::string> lines = {
      "1\tu1\ti1\ti2,i3,i1\t0.5",
      "0\tu2\ti2\t\t1",
      "1\tu1\t\ti9,i9,i1,i2,i3\t-2",  // empty item; hist keeps the last 4
      "0\tu3\ti3\ti1\t3",
  };
  for (const std::string& l : lines) ASSERT_TRUE(builder.AddLine(l).ok()) << l;
  EXPECT_EQ(builder.size(), 4);
  models::Batch b = builder.Finish();
  EXPECT_EQ(builder.size(), 0);
  CheckBatch(b, lines, config, map, 3);
  // Distinct keys: users u1..u3; items i1, i2, i3, i9 shared by item and hist.
  EXPECT_EQ(b.tables[0].keys.size(), 3u);
  EXPECT_EQ(b.tables[1].keys.size(), 4u);
  EXPECT_TRUE(b.tables[2].keys.empty());
  EXPECT_EQ(b.tables[2].server_begin, (std::vector<uint32_t>{0, 0, 0, 0}));
  EXPECT_EQ(b.sparse[1].offsets, (std::vector<uint32_t>{0, 1, 2, 2, 3}));
  EXPECT_EQ(b.sparse[2].offsets, (std::vector<uint32_t>{0, 3, 3, 7, 8}));
  // The same raw item in the item column and in the history is one row.
  EXPECT_EQ(b.sparse[1].rows[0], b.sparse[2].rows[2]);  // i1
  EXPECT_EQ(b.labels, (std::vector<float>{1, 0, 1, 0}));
  EXPECT_EQ(b.dense, (std::vector<float>{0.5f, 1, -2, 3}));
}

TEST(BatchBuilderTest, BadLineLeavesBatchUnchanged) {
  const proto::JobConfig config = Config();
  const proto::ShardMap map = ShardMap(8, 2);
  std::unique_ptr<BatchBuilder> builder_owner = *BatchBuilder::Create(config, map, 2);
  BatchBuilder& builder = *builder_owner;
  std::vector<std::string> good = {"1\tu1\ti1\ti2\t1"};
  ASSERT_TRUE(builder.AddLine(good[0]).ok());
  // Fails late (the dense column is last), after keys were hashed.
  absl::Status st = builder.AddLine("0\tu7\ti7\ti8,i9\tnope");
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(st.message(), "column 'price' (#5): 'nope' is not a number");
  EXPECT_FALSE(builder.AddLine("0\tu7").ok());
  EXPECT_EQ(builder.size(), 1);
  good.push_back("0\tu2\ti1\t\t2");
  ASSERT_TRUE(builder.AddLine(good[1]).ok());
  models::Batch b = builder.Finish();
  CheckBatch(b, good, config, map, 2);
  EXPECT_EQ(b.tables[0].keys.size(), 2u);  // u7 never made it in
  EXPECT_EQ(b.tables[1].keys.size(), 2u);
}

TEST(BatchBuilderTest, EmptyBatch) {
  const proto::JobConfig config = Config();
  std::unique_ptr<BatchBuilder> builder_owner = *BatchBuilder::Create(config, ShardMap(4, 2), 2);
  BatchBuilder& builder = *builder_owner;
  models::Batch b = builder.Finish();
  CheckBatch(b, {}, config, ShardMap(4, 2), 2);
  EXPECT_EQ(b.sparse[0].offsets, (std::vector<uint32_t>{0}));
}

TEST(BatchBuilderTest, ClearDropsPending) {
  const proto::JobConfig config = Config();
  const proto::ShardMap map = ShardMap(4, 1);
  std::unique_ptr<BatchBuilder> builder_owner = *BatchBuilder::Create(config, map, 1);
  BatchBuilder& builder = *builder_owner;
  ASSERT_TRUE(builder.AddLine("1\tu1\ti1\ti2\t1").ok());
  builder.Clear();
  EXPECT_EQ(builder.size(), 0);
  ASSERT_TRUE(builder.AddLine("1\tu2\ti3\t\t1").ok());
  models::Batch b = builder.Finish();
  CheckBatch(b, {"1\tu2\ti3\t\t1"}, config, map, 1);
}

std::vector<std::string> RandomLines(std::mt19937_64& rng, int n, int vocab) {
  std::vector<std::string> lines;
  for (int i = 0; i < n; ++i) {
    std::string hist;
    const int len = rng() % 7;
    for (int k = 0; k < len; ++k) absl::StrAppend(&hist, k ? "," : "", "i", rng() % vocab);
    lines.push_back(absl::StrCat(rng() % 2, "\tu", rng() % vocab, "\t",
                                 rng() % 5 ? absl::StrCat("i", rng() % vocab) : "", "\t", hist,
                                 "\t", rng() % 100));
  }
  return lines;
}

// Many shard counts (one and two radix passes, a single shard), server
// counts and batches through one builder, reusing its buffers, with both
// Finish forms.
TEST(BatchBuilderTest, RandomBatchesOrderedByServerAndShard) {
  const proto::JobConfig config = Config();
  std::mt19937_64 rng(7);
  for (uint32_t shards : {1u, 2u, 7u, 1024u, 4096u, 4097u, 100000u, 1u << 20}) {
    for (int servers : {1, 3, 8}) {
      if (static_cast<uint32_t>(servers) > shards) continue;
      const proto::ShardMap map = ShardMap(shards, servers, shards * 31 + servers);
      absl::StatusOr<std::unique_ptr<BatchBuilder>> builder =
          BatchBuilder::Create(config, map, servers);
      ASSERT_TRUE(builder.ok()) << builder.status();
      models::Batch recycled;
      for (int round = 0; round < 3; ++round) {
        const std::vector<std::string> lines = RandomLines(rng, 1 + rng() % 300, 1 + rng() % 500);
        for (const std::string& l : lines) ASSERT_TRUE((*builder)->AddLine(l).ok()) << l;
        SCOPED_TRACE(absl::StrCat("shards ", shards, " servers ", servers, " round ", round));
        if (round % 2 == 0) {
          CheckBatch((*builder)->Finish(), lines, config, map, servers);
        } else {
          (*builder)->Finish(&recycled);
          CheckBatch(recycled, lines, config, map, servers);
        }
      }
    }
  }
}

TEST(BatchBuilderTest, DeterministicOrder) {
  const proto::JobConfig config = Config();
  const proto::ShardMap map = ShardMap(64, 4);
  std::mt19937_64 rng(3);
  const std::vector<std::string> lines = RandomLines(rng, 200, 50);
  std::unique_ptr<BatchBuilder> a_builder_owner = *BatchBuilder::Create(config, map, 4);
  BatchBuilder& a_builder = *a_builder_owner;
  std::unique_ptr<BatchBuilder> b_builder_owner = *BatchBuilder::Create(config, map, 4);
  BatchBuilder& b_builder = *b_builder_owner;
  BatchBuilder& a = a_builder;
  BatchBuilder& b = b_builder;
  for (const std::string& l : lines) {
    ASSERT_TRUE(a.AddLine(l).ok());
    ASSERT_TRUE(b.AddLine(l).ok());
  }
  models::Batch x = a.Finish(), y = b.Finish();
  EXPECT_EQ(x.tables[1].keys, y.tables[1].keys);
  EXPECT_EQ(x.sparse[2].rows, y.sparse[2].rows);
}

TEST(BatchBuilderTest, CreateRejectsBadShardMaps) {
  const proto::JobConfig config = Config();
  proto::ShardMap map = ShardMap(8, 2);
  EXPECT_TRUE(BatchBuilder::Create(config, map, 2).ok());
  EXPECT_FALSE(BatchBuilder::Create(config, map, 0).ok());
  map.set_server_rank(5, 2);
  absl::StatusOr<std::unique_ptr<BatchBuilder>> b = BatchBuilder::Create(config, map, 2);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().message(), "shard map: shard 5 is on server 2 of only 2");
  map = ShardMap(8, 2);
  map.set_num_logical_shards(9);
  EXPECT_FALSE(BatchBuilder::Create(config, map, 2).ok());
  map.set_num_logical_shards(0);
  map.clear_server_rank();
  EXPECT_FALSE(BatchBuilder::Create(config, map, 2).ok());
  proto::JobConfig bad = config;
  bad.mutable_data()->mutable_columns(1)->set_table("nope");
  EXPECT_FALSE(BatchBuilder::Create(bad, ShardMap(8, 2), 2).ok());
}

// The shard map arrives over the network, so a bad one is a status from
// Create (naming the shard and the problem), never a crash.
TEST(BatchBuilderTest, CreateRefusesABadShardMap) {
  const proto::JobConfig config = Config();
  ASSERT_TRUE(BatchBuilder::Create(config, ShardMap(8, 2), 2).ok());

  proto::ShardMap rank_too_high = ShardMap(8, 2);
  rank_too_high.set_server_rank(3, 5);
  absl::StatusOr<std::unique_ptr<BatchBuilder>> b = BatchBuilder::Create(config, rank_too_high, 2);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(b.status().message().find("shard 3 is on server 5 of only 2"), std::string::npos) << b.status();

  proto::ShardMap short_map = ShardMap(8, 2);
  short_map.mutable_server_rank()->RemoveLast();
  b = BatchBuilder::Create(config, short_map, 2);
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.status().message().find("7 server ranks for 8 logical shards"), std::string::npos) << b.status();

  b = BatchBuilder::Create(config, ShardMap(0, 2), 2);
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.status().message().find("num_logical_shards must be >= 1"), std::string::npos) << b.status();
}

double ThreadSeconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// Prints the rate of AddLine + Finish on lines with 30-item histories;
// asserts nothing about time.
TEST(BatchBuilderThroughputTest, Measure) {
  const proto::JobConfig config = Config();
  proto::JobConfig long_hist = config;
  long_hist.mutable_data()->mutable_columns(3)->set_max_len(30);
  const proto::ShardMap map = ShardMap(1024, 4);
  std::unique_ptr<BatchBuilder> builder_owner = *BatchBuilder::Create(long_hist, map, 4);
  BatchBuilder& builder = *builder_owner;
  std::mt19937_64 rng(5);
  std::vector<std::string> lines;
  for (int i = 0; i < 50000; ++i) {
    std::string hist;
    for (int k = 0; k < 30; ++k) absl::StrAppend(&hist, k ? "," : "", rng() % 200000);
    lines.push_back(absl::StrCat(rng() % 2, "\t", rng() % 100000, "\t", rng() % 200000, "\t", hist,
                                 "\t", rng() % 1000));
  }
  models::Batch batch;
  double best = 1e9;
  for (int rep = 0; rep < 3; ++rep) {
    const double start = ThreadSeconds();
    for (const std::string& l : lines) {
      ASSERT_TRUE(builder.AddLine(l).ok());
      if (builder.size() == 512) builder.Finish(&batch);
    }
    builder.Finish(&batch);
    best = std::min(best, ThreadSeconds() - start);
  }
  std::printf(
      "BatchBuilder: %.0f lines/s per thread (parse + dedup + sort, batches of 512, "
      "32 keys/line)\n",
      lines.size() / best);
}

// Attention views: SIM's hard search keeps the newest top_k items of the
// candidate's category, with their time-gap keys; a DIN block keeps the
// newest last_n; the history columns themselves pull nothing.
const char kSimConfig[] = R"(
tables { name: "item" }
tables { name: "cat" }
tables { name: "gap" }
data {
  train: "x"
  columns { name: "y" type: LABEL }
  columns { name: "item" type: SPARSE table: "item" slot: 2 }
  columns { name: "cat" type: SPARSE table: "cat" slot: 3 }
  columns { name: "t" type: TIME }
  columns { name: "hist_items" type: SEQUENCE table: "item" slot: 2 }
  columns { name: "hist_cats" type: SEQUENCE table: "cat" slot: 3 }
  columns { name: "hist_t" type: TIME_SEQUENCE }
}
model {
  kind: SIM
  attention { name: "long" query: "item" query: "cat" keys: "hist_items" keys: "hist_cats"
              search { kind: HARD top_k: 2 match_query: "cat" match_key: "hist_cats"
                       time: "t" key_times: "hist_t" gap_table: "gap" gap_unit: 10 } }
  attention { name: "short" query: "item" query: "cat" keys: "hist_items" keys: "hist_cats" last_n: 1 }
}
)";

TEST(BatchBuilderTest, AttentionViewsSelectWhatIsPulled) {
  absl::StatusOr<proto::JobConfig> config = proto::ParseJobConfig(kSimConfig, "test");
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_TRUE(proto::ValidateJobConfig(*config).ok()) << proto::ValidateJobConfig(*config);
  auto builder = BatchBuilder::Create(*config, ShardMap(8, 1), 1);
  ASSERT_TRUE(builder.ok()) << builder.status();
  // Items 1..5 with categories a b a a b at times 10..50; sample time 100.
  // Category a: items 1, 3, 4 -> the newest two are 3 and 4 (gaps 70, 60).
  ASSERT_TRUE((*builder)->AddLine("1\t9\ta\t100\t1,2,3,4,5\ta,b,a,a,b\t10,20,30,40,50").ok());
  // Category c matches nothing; the short view still sees the newest item.
  ASSERT_TRUE((*builder)->AddLine("0\t8\tc\t100\t6,7\ta,b\t10,20").ok());
  // Misaligned lines are bad lines naming the columns.
  absl::Status st = (*builder)->AddLine("0\t8\tc\t100\t6,7\ta\t10,20");
  EXPECT_NE(st.message().find("'hist_items' and 'hist_cats' have 2 and 1 values"), std::string::npos) << st;
  st = (*builder)->AddLine("0\t8\tc\t100\t6,7\ta,b\t10");
  EXPECT_NE(st.message().find("times column 'hist_t' has 1"), std::string::npos) << st;
  st = (*builder)->AddLine("0\t8\tc\tnoon\t6,7\ta,b\t10,20");
  EXPECT_NE(st.message().find("not an integer time"), std::string::npos) << st;
  // A history time is read where an item is selected: item 6 (category a).
  st = (*builder)->AddLine("0\t8\ta\t100\t6,7\ta,b\tx,20");
  EXPECT_NE(st.message().find("column 'hist_t': 'x' is not an integer time"), std::string::npos) << st;
  models::Batch b = (*builder)->Finish();
  ASSERT_EQ(b.size, 2);
  // 4 config sparse columns, then long: items, cats, gaps; short: items, cats.
  ASSERT_EQ(b.sparse.size(), 9u);
  auto keys_of = [&](int view, int sample) {
    std::vector<uint64_t> out;
    const models::SparseColumnBatch& v = b.sparse[view];
    for (uint32_t r = v.offsets[sample]; r < v.offsets[sample + 1]; ++r) out.push_back(b.tables[v.table].keys[v.rows[r]]);
    return out;
  };
  auto item = [](const char* v) { return proto::Hash64(2, v); };
  auto cat = [](const char* v) { return proto::Hash64(3, v); };
  auto gap = [](const char* v) { return proto::Hash64(models::kGapSlot, v); };
  EXPECT_TRUE(b.sparse[2].rows.empty());  // hist_items: attention only
  EXPECT_TRUE(b.sparse[3].rows.empty());
  EXPECT_EQ(keys_of(4, 0), (std::vector<uint64_t>{item("3"), item("4")}));
  EXPECT_EQ(keys_of(5, 0), (std::vector<uint64_t>{cat("a"), cat("a")}));
  // Gaps 70 and 60 with unit 10: floor(log2(8)) = 3, floor(log2(7)) = 2.
  EXPECT_EQ(keys_of(6, 0), (std::vector<uint64_t>{gap("3"), gap("2")}));
  EXPECT_TRUE(keys_of(4, 1).empty());
  EXPECT_EQ(keys_of(7, 0), (std::vector<uint64_t>{item("5")}));
  EXPECT_EQ(keys_of(7, 1), (std::vector<uint64_t>{item("7")}));
  EXPECT_EQ(keys_of(8, 1), (std::vector<uint64_t>{cat("b")}));
  // Items 1 and 2 were never selected, so they are not pulled.
  const auto& items = b.tables[0].keys;
  EXPECT_EQ(std::count(items.begin(), items.end(), item("1")), 0);
  EXPECT_EQ(std::count(items.begin(), items.end(), item("2")), 0);
  EXPECT_EQ(items.size(), 6u);  // 9, 8, 3, 4, 5, 7
}

// A batch carries its newest log time (the first TIME column), which pushes
// send for day-based expiry; bad lines do not count, and Finish starts over.
TEST(BatchBuilderTest, BatchCarriesItsNewestLogTime) {
  absl::StatusOr<proto::JobConfig> config = proto::ParseJobConfig(kSimConfig, "test");
  ASSERT_TRUE(config.ok()) << config.status();
  auto builder = BatchBuilder::Create(*config, ShardMap(8, 1), 1);
  ASSERT_TRUE(builder.ok()) << builder.status();
  ASSERT_TRUE((*builder)->AddLine("1\t9\ta\t1700000100\t1,2\ta,b\t10,20").ok());
  ASSERT_TRUE((*builder)->AddLine("0\t8\tc\t1700000900\t6,7\ta,b\t10,20").ok());
  ASSERT_TRUE((*builder)->AddLine("0\t8\tc\t1700000500\t6,7\ta,b\t10,20").ok());
  EXPECT_FALSE((*builder)->AddLine("0\t8\tc\t1800000000\t6,7\ta\t10,20").ok());  // misaligned: bad
  models::Batch b = (*builder)->Finish();
  EXPECT_EQ(b.log_time, 1700000900u);
  ASSERT_TRUE((*builder)->AddLine("1\t9\ta\t1700000001\t1\ta\t10").ok());
  EXPECT_EQ((*builder)->Finish().log_time, 1700000001u);
  EXPECT_EQ((*builder)->Finish().log_time, 0u);  // no lines, no time
}

// Hard search matches whole pieces only: "a" is not "aa", "ba" or "a1",
// wherever they stand in the line (block boundaries included).
TEST(BatchBuilderTest, HardSearchMatchesWholePiecesOnly) {
  absl::StatusOr<proto::JobConfig> config = proto::ParseJobConfig(kSimConfig, "test");
  ASSERT_TRUE(config.ok()) << config.status();
  auto builder = BatchBuilder::Create(*config, ShardMap(8, 1), 1);
  ASSERT_TRUE(builder.ok()) << builder.status();
  // 100 decoys, then a match at item 100, more decoys, a match at item 150.
  std::string items, cats, times;
  for (int i = 0; i < 200; ++i) {
    const char* decoys[] = {"aa", "ba", "a1", "b"};
    const bool match = i == 100 || i == 150;
    absl::StrAppend(&items, i ? "," : "", i);
    absl::StrAppend(&cats, i ? "," : "", match ? "a" : decoys[i % 4]);
    absl::StrAppend(&times, i ? "," : "", i);
  }
  ASSERT_TRUE((*builder)->AddLine(absl::StrCat("1\t9\ta\t1000\t", items, "\t", cats, "\t", times)).ok());
  models::Batch b = (*builder)->Finish();
  const models::SparseColumnBatch& v = b.sparse[4];
  ASSERT_EQ(v.rows.size(), 2u);
  EXPECT_EQ(b.tables[0].keys[v.rows[0]], proto::Hash64(2, "100"));
  EXPECT_EQ(b.tables[0].keys[v.rows[1]], proto::Hash64(2, "150"));
  // Their gaps, 900 and 850 with unit 10: floor(log2(91)) = floor(log2(86)) = 6.
  const models::SparseColumnBatch& g = b.sparse[6];
  ASSERT_EQ(g.rows.size(), 2u);
  EXPECT_EQ(b.tables[2].keys[g.rows[0]], proto::Hash64(models::kGapSlot, "6"));
}

}  // namespace
}  // namespace ember::worker
