#include "storage/key_filter.h"

#include <cstdint>

#include "gtest/gtest.h"

namespace ember::storage {
namespace {

TEST(KeyFilterTest, EmptyFilterContainsNothing) {
  KeyFilter f;
  EXPECT_FALSE(f.MayContain(0));
  EXPECT_FALSE(f.MayContain(12345));
  EXPECT_EQ(f.MemoryBytes(), 0u);
}

// Every added key is found, across several layers (first layer of 1000 keys,
// then 4000, 16000, 64000, ...), and unseen keys are rarely claimed.
TEST(KeyFilterTest, NoFalseNegativesAndFewFalsePositivesAcrossLayers) {
  KeyFilter f(1000);
  const uint64_t n = 300000;  // five layers
  for (uint64_t k = 0; k < n; ++k) f.Add(k * 7919);
  for (uint64_t k = 0; k < n; ++k) ASSERT_TRUE(f.MayContain(k * 7919)) << k;
  uint64_t false_positives = 0;
  const uint64_t probes = 200000;
  for (uint64_t k = 0; k < probes; ++k) false_positives += f.MayContain(k * 7919 + 1) ? 1 : 0;
  // About 0.5% per layer; five layers.
  EXPECT_LT(static_cast<double>(false_positives) / probes, 0.04);
  // 16 bits per key of capacity: 1000 + 4000 + ... + 256000 keys.
  EXPECT_LE(f.MemoryBytes(), 2 * (1000 + 4000 + 16000 + 64000 + 256000) + 5 * 64);
}

}  // namespace
}  // namespace ember::storage
