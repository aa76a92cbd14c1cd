#include "ps/routing.h"

#include <random>
#include <set>

#include "gtest/gtest.h"
#include "ps/keys.h"

namespace ember::ps {
namespace {

TEST(RoutingTest, GroupsByServerThenShard) {
  proto::ShardMap map;
  const uint32_t L = 64, S = 3;
  map.set_num_logical_shards(L);
  std::mt19937_64 rng(1);
  for (uint32_t s = 0; s < L; ++s) map.add_server_rank(rng() % S);  // arbitrary ownership
  KeyRouter router(map, S);
  std::vector<uint64_t> keys(5000);
  for (auto& k : keys) k = rng();
  std::vector<uint64_t> grouped;
  std::vector<uint32_t> begin, perm;
  router.Group(keys, &grouped, &begin, &perm);
  ASSERT_EQ(begin.size(), S + 1);
  EXPECT_EQ(begin[0], 0u);
  EXPECT_EQ(begin[S], keys.size());
  for (uint32_t s = 0; s < S; ++s) {
    uint32_t prev_shard = 0;
    for (uint32_t i = begin[s]; i < begin[s + 1]; ++i) {
      const uint32_t shard = ShardOf(grouped[i], L);
      EXPECT_EQ(map.server_rank(shard), s);
      EXPECT_GE(shard, prev_shard);
      prev_shard = shard;
      EXPECT_EQ(keys[perm[i]], grouped[i]);
    }
  }
  std::multiset<uint64_t> a(keys.begin(), keys.end()), b(grouped.begin(), grouped.end());
  EXPECT_EQ(a, b);
}

TEST(RoutingTest, ServerWithoutKeysGetsEmptyRange) {
  proto::ShardMap map;
  map.set_num_logical_shards(4);
  for (int i = 0; i < 4; ++i) map.add_server_rank(i < 2 ? 0 : 2);  // server 1 owns nothing
  KeyRouter router(map, 3);
  std::vector<uint64_t> keys = {1, 2, 3, 4, 5, 6, 7, 8}, grouped;
  std::vector<uint32_t> begin;
  router.Group(keys, &grouped, &begin, nullptr);
  EXPECT_EQ(begin[1], begin[2]);
  EXPECT_LE(begin[0], begin[1]);
}

TEST(KeysTest, ShardsSpreadSequentialKeys) {
  std::vector<int> count(16);
  for (uint64_t k = 0; k < 16000; ++k) ++count[ShardOf(k, 16)];
  for (int c : count) EXPECT_NEAR(c, 1000, 150);
  EXPECT_EQ(Hash64(1, "abc"), Hash64(1, "abc"));
  EXPECT_NE(Hash64(1, "abc"), Hash64(2, "abc"));
  EXPECT_NE(Hash64(1, "abc"), Hash64(1, "abd"));
  EXPECT_NE(Hash64(1, ""), Hash64(1, std::string_view("\0", 1)));
}

// Keys and shards are part of the checkpoint format: these values must never
// change.
TEST(KeysTest, GoldenValues) {
  struct {
    uint32_t slot;
    const char* value;
    uint64_t key;
  } golden[] = {
      {3, "", 0x038196b5b0c91985ULL},
      {3, "a", 0x2f74f4b47fe394e5ULL},
      {3, "abc", 0x91c0e23274d3b0eeULL},
      {3, "12345678", 0x5e749ec3806778cdULL},
      {3, "item_4711", 0xc9f3b1ed515e3cb9ULL},
      {3, "a somewhat longer value", 0xe34f22f6abab00a6ULL},
  };
  for (const auto& g : golden) EXPECT_EQ(Hash64(g.slot, g.value), g.key) << g.value;
  EXPECT_EQ(ShardOf(0, 1024), 0u);
  EXPECT_EQ(ShardOf(123456789, 1024), 761u);
}

}  // namespace
}  // namespace ember::ps
