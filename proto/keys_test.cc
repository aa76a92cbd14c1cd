// The key hash and shard function: their behaviour, and golden values that
// pin them (keys and shards are part of the wire and checkpoint formats).
#include "proto/keys.h"

#include <string_view>
#include <vector>

#include "gtest/gtest.h"

namespace ember::proto {
namespace {

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
}  // namespace ember::proto
