#include "ps/routing.h"

#include <random>
#include <set>

#include "gtest/gtest.h"
#include "proto/keys.h"

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
      const uint32_t shard = proto::ShardOf(grouped[i], L);
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

}  // namespace
}  // namespace ember::ps
