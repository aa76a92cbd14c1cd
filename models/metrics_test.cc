// Tests of the exact metrics against brute-force definitions.
#include "models/metrics.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace ember::models {
namespace {

// P(score of a random positive > score of a random negative), ties 1/2,
// by counting every pair.
double BruteForceAuc(const std::vector<float>& scores, const std::vector<float>& labels) {
  double wins = 0, pairs = 0;
  for (size_t i = 0; i < scores.size(); ++i) {
    if (labels[i] < 0.5f) continue;
    for (size_t j = 0; j < scores.size(); ++j) {
      if (labels[j] >= 0.5f) continue;
      pairs += 1;
      if (scores[i] > scores[j]) wins += 1;
      if (scores[i] == scores[j]) wins += 0.5;
    }
  }
  return wins / pairs;
}

TEST(ExactAucTest, MatchesPairwiseCountWithTies) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 50; ++trial) {
    const int n = 2 + trial * 7;
    // Few distinct scores, so that ties (within and across classes) abound,
    // with labels correlated to the score so the AUC is not always ~0.5.
    std::uniform_int_distribution<int> level(0, trial % 2 == 0 ? 4 : 1000);
    std::uniform_real_distribution<float> u(0, 1);
    std::vector<float> scores(n), labels(n);
    for (int i = 0; i < n; ++i) {
      scores[i] = static_cast<float>(level(rng)) / 4.0f;
      labels[i] = u(rng) < 0.3f + 0.1f * std::min(scores[i], 4.0f) ? 1.0f : 0.0f;
    }
    labels[0] = 1;  // both classes present
    labels[1] = 0;
    EXPECT_NEAR(ExactAuc(scores, labels), BruteForceAuc(scores, labels), 1e-12)
        << "trial " << trial;
  }
}

TEST(ExactAucTest, KnownValues) {
  EXPECT_DOUBLE_EQ(ExactAuc(std::vector<float>{0.1f, 0.9f}, std::vector<float>{0, 1}), 1.0);
  EXPECT_DOUBLE_EQ(ExactAuc(std::vector<float>{0.9f, 0.1f}, std::vector<float>{0, 1}), 0.0);
  EXPECT_DOUBLE_EQ(ExactAuc(std::vector<float>{0.5f, 0.5f}, std::vector<float>{0, 1}), 0.5);
  // 0.7 as a label counts as positive, 0.2 as negative.
  EXPECT_DOUBLE_EQ(ExactAuc(std::vector<float>{0.2f, 0.8f}, std::vector<float>{0.2f, 0.7f}), 1.0);
}

TEST(ExactAucTest, NanForASingleClass) {
  EXPECT_TRUE(
      std::isnan(ExactAuc(std::vector<float>{0.1f, 0.5f, 0.9f}, std::vector<float>{1, 1, 1})));
  EXPECT_TRUE(std::isnan(ExactAuc(std::vector<float>{0.1f, 0.5f}, std::vector<float>{0, 0})));
  EXPECT_TRUE(std::isnan(ExactAuc(std::vector<float>{}, std::vector<float>{})));
}

TEST(GroupAucTest, WeightsByImpressionsAndSkipsOneClassGroups) {
  // Group 1: 4 samples, perfectly ranked (AUC 1). Group 2: 2 samples, inverted
  // (AUC 0). Group 3: positives only (skipped). GAUC = (4*1 + 2*0) / 6.
  std::vector<float> scores = {0.9f, 0.8f, 0.2f, 0.1f, 0.3f, 0.7f, 0.5f};
  std::vector<float> labels = {1, 1, 0, 0, 1, 0, 1};
  std::vector<uint64_t> groups = {1, 1, 1, 1, 2, 2, 3};
  EXPECT_DOUBLE_EQ(GroupAuc(scores, labels, groups), 4.0 / 6.0);
  // One group only: GAUC is that group's AUC.
  std::vector<uint64_t> one(7, 9);
  EXPECT_DOUBLE_EQ(GroupAuc(scores, labels, one), ExactAuc(scores, labels));
  // No group with both classes.
  EXPECT_TRUE(std::isnan(GroupAuc({0.1f, 0.2f}, {1, 0}, std::vector<uint64_t>{1, 2})));
}

TEST(LogLossTest, KnownValuesAndClipping) {
  EXPECT_NEAR(LogLoss(std::vector<float>{0.5f, 0.5f}, std::vector<float>{0, 1}), std::log(2.0),
              1e-7);
  const double expect = -(std::log(0.8) + std::log(1 - 0.3)) / 2;
  EXPECT_NEAR(LogLoss(std::vector<float>{0.8f, 0.3f}, std::vector<float>{1, 0}), expect, 1e-6);
  // Soft labels: -(y log p + (1 - y) log(1 - p)).
  EXPECT_NEAR(LogLoss(std::vector<float>{0.6f}, std::vector<float>{0.25f}),
              -(0.25 * std::log(0.6) + 0.75 * std::log(0.4)), 1e-6);
  // Certain and wrong is clipped to -log(1e-7), not infinity.
  const double clipped = LogLoss(std::vector<float>{0.0f, 1.0f}, std::vector<float>{1, 0});
  EXPECT_NEAR(clipped, -std::log(1e-7), 1e-3);
  EXPECT_TRUE(std::isfinite(clipped));
  EXPECT_TRUE(std::isnan(LogLoss(std::vector<float>{}, std::vector<float>{})));
}

TEST(WindowAucTest, KeepsOnlyTheLastCapacityPairsAcrossWraparound) {
  WindowAuc window(4);
  EXPECT_TRUE(std::isnan(window.Auc()));
  window.Add(0.9f, 1);
  EXPECT_TRUE(std::isnan(window.Auc())) << "one class only";
  window.Add(0.1f, 0);
  EXPECT_DOUBLE_EQ(window.Auc(), 1.0);
  window.Add(0.8f, 1);
  window.Add(0.2f, 0);
  EXPECT_EQ(window.size(), 4u);
  EXPECT_DOUBLE_EQ(window.Auc(), 1.0);
  // Two inverted pairs evict the first two: the window is now
  // {0.8:1, 0.2:0, 0.3:1, 0.7:0}: 3 wins out of 4 pairs (0.3 < 0.7).
  window.Add(0.3f, 1);
  window.Add(0.7f, 0);
  EXPECT_EQ(window.size(), 4u);
  EXPECT_DOUBLE_EQ(window.Auc(), 0.75);

  // Long random stream against ExactAuc of the tail (wraps several times).
  std::mt19937_64 rng(3);
  std::uniform_real_distribution<float> u(0, 1);
  WindowAuc w(37);
  std::vector<float> scores, labels;
  for (int i = 0; i < 200; ++i) {
    scores.push_back(u(rng));
    labels.push_back(u(rng) < scores.back() ? 1.0f : 0.0f);
    w.Add(scores.back(), labels.back());
    if (i >= 36) {
      std::vector<float> s(scores.end() - 37, scores.end()), l(labels.end() - 37, labels.end());
      const double expect = ExactAuc(s, l);
      if (std::isnan(expect)) {
        EXPECT_TRUE(std::isnan(w.Auc()));
      } else {
        EXPECT_DOUBLE_EQ(w.Auc(), expect) << "after " << i + 1;
      }
    }
  }
  EXPECT_EQ(w.size(), 37u);
}

TEST(WindowAucTest, ZeroCapacityActsAsOne) {
  WindowAuc w(0);
  w.Add(0.5f, 1);
  w.Add(0.5f, 0);
  EXPECT_EQ(w.size(), 1u);
  EXPECT_TRUE(std::isnan(w.Auc()));
}

}  // namespace
}  // namespace ember::models
