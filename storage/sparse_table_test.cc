#include "storage/sparse_table.h"

#include <cstring>

#include "absl/container/flat_hash_map.h"
#include "gtest/gtest.h"

namespace ember::storage {
namespace {

proto::TableConfig Adagrad(uint32_t dim) {
  proto::TableConfig t;
  t.set_name("t");
  t.set_dim(dim);
  t.mutable_optimizer()->set_kind(proto::OptimizerConfig::ADAGRAD);
  return t;
}

TEST(SparseTableTest, RowLayout) {
  TableSpec spec(Adagrad(3));
  EXPECT_EQ(spec.state_floats(), 3u);
  EXPECT_EQ(spec.row_bytes(), 32u + 24u);
  TableSpec odd(Adagrad(1));
  EXPECT_EQ(odd.row_bytes(), 40u);  // 32 + 4 + 4
}

TEST(SparseTableTest, CreateFindEraseAcrossSlabs) {
  TableSpec spec(Adagrad(4));
  ShardTable table(&spec);
  const int n = 300000;  // spans the doubling slabs and big slabs
  absl::flat_hash_map<uint64_t, uint8_t*> rows;
  for (int i = 0; i < n; ++i) {
    bool created;
    uint8_t* row = table.FindOrCreate(i * 2654435761ULL, 0, &created);
    ASSERT_TRUE(created);
    TableSpec::Weights(row)[0] = static_cast<float>(i);
    rows[i * 2654435761ULL] = row;
  }
  EXPECT_EQ(table.size(), static_cast<size_t>(n));
  // Pointers are stable and contents intact.
  for (int i = 0; i < n; i += 997) {
    uint8_t* row = table.Find(i * 2654435761ULL);
    ASSERT_EQ(row, rows[i * 2654435761ULL]);
    EXPECT_EQ(TableSpec::Weights(row)[0], static_cast<float>(i));
    EXPECT_EQ(TableSpec::Meta(row)->key, i * 2654435761ULL);
  }
  bool created;
  uint8_t* again = table.FindOrCreate(5 * 2654435761ULL, 0, &created);
  EXPECT_FALSE(created);
  EXPECT_EQ(TableSpec::Weights(again)[0], 5.0f);

  EXPECT_TRUE(table.Erase(5 * 2654435761ULL));
  EXPECT_FALSE(table.Erase(5 * 2654435761ULL));
  EXPECT_EQ(table.Find(5 * 2654435761ULL), nullptr);
  // The freed slot is reused, freshly initialised.
  uint8_t* reused = table.FindOrCreate(77, 0, &created);
  EXPECT_TRUE(created);
  EXPECT_EQ(reused, again);
  EXPECT_EQ(TableSpec::Meta(reused)->key, 77u);
  EXPECT_NE(TableSpec::Weights(reused)[0], 5.0f);

  size_t seen = 0;
  table.ForEach([&](uint64_t key, uint8_t* row) {
    EXPECT_EQ(TableSpec::Meta(row)->key, key);
    ++seen;
  });
  EXPECT_EQ(seen, table.size());
  EXPECT_GT(table.MemoryBytes(), n * spec.row_bytes());
}

TEST(SparseTableTest, NewRowIsInitialisedFromKey) {
  proto::TableConfig c = Adagrad(8);
  c.mutable_initializer()->set_scale(0.1f);
  c.mutable_optimizer()->set_initial_accumulator(0.25f);
  TableSpec spec(c);
  ShardTable a(&spec), b(&spec);
  bool created;
  uint8_t* ra = a.FindOrCreate(123, 0, &created);
  uint8_t* rb = b.FindOrCreate(123, 0, &created);
  EXPECT_EQ(std::memcmp(TableSpec::Weights(ra), TableSpec::Weights(rb), 8 * sizeof(float)), 0);
  EXPECT_EQ(spec.State(ra)[7], 0.25f);
  uint8_t* other_generation = b.FindOrCreate(124, 3, &created);
  EXPECT_EQ(TableSpec::Meta(other_generation)->generation, 3u);
}

}  // namespace
}  // namespace ember::storage
