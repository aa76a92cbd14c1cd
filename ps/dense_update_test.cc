#include "ps/dense_update.h"

#include <vector>

#include "gtest/gtest.h"

namespace ember::ps {
namespace {

proto::OptimizerConfig Adam() {
  proto::OptimizerConfig c;
  c.set_kind(proto::OptimizerConfig::ADAM);
  c.set_learning_rate(0.01f);
  return c;
}

proto::DenseUpdateConfig Update(uint32_t average, bool staleness_aware) {
  proto::DenseUpdateConfig c;
  c.set_average_pushes(average);
  c.set_staleness_aware(staleness_aware);
  c.set_lr_scale_power(0);  // the rule's own rate, to compare with it
  return c;
}

// The reference: the optimizer rule applied to one gradient.
std::vector<float> Stepped(const std::vector<float>& w0, const std::vector<float>& g) {
  storage::OptimizerRule rule(Adam());
  std::vector<float> w = w0, state(rule.StateFloats(w.size()));
  rule.InitState(w.data(), state.data(), w.size());
  rule.Apply(w.data(), state.data(), g.data(), w.size());
  return w;
}

TEST(DenseUpdaterTest, OnePushOneStepIsTheRuleItself) {
  const std::vector<float> w0 = {0.5f, -0.25f, 1.0f};
  DenseUpdater d(Adam(), Update(1, false), 8, w0, 3, 0.01f);
  EXPECT_EQ(d.average_pushes(), 1u);
  const std::vector<float> g = {0.3f, -0.2f, 0.0f};
  EXPECT_EQ(d.Push(g.data(), 1), 0u);
  EXPECT_EQ(d.weights(), Stepped(w0, g));
  EXPECT_EQ(d.version(), 2u);
}

TEST(DenseUpdaterTest, ARoundOfPushesIsOneStepOfTheirMean) {
  const std::vector<float> w0 = {0.5f, -0.25f};
  DenseUpdater d(Adam(), Update(0, false), 5, w0, 2, 0.01f);
  EXPECT_EQ(d.average_pushes(), 3u);  // 0: half the worker count, rounded up
  const std::vector<float> a = {0.3f, -0.6f}, b = {0.9f, 0.0f}, c = {-0.3f, 0.3f};
  d.Push(a.data(), 1);
  d.Push(b.data(), 1);
  EXPECT_EQ(d.weights(), w0) << "no step before the round is complete";
  EXPECT_EQ(d.version(), 1u);
  d.Push(c.data(), 1);
  EXPECT_EQ(d.version(), 2u);
  const std::vector<float> mean = {(0.3f + 0.9f - 0.3f) / 3, (-0.6f + 0.0f + 0.3f) / 3};
  const std::vector<float> want = Stepped(w0, mean);
  ASSERT_EQ(d.weights().size(), 2u);
  for (size_t i = 0; i < 2; ++i) EXPECT_FLOAT_EQ(d.weights()[i], want[i]) << i;
}

TEST(DenseUpdaterTest, StalePushesCountForLess) {
  const std::vector<float> w0 = {0.0f};
  DenseUpdater d(Adam(), Update(2, true), 2, w0, 1, 0.01f);
  const std::vector<float> g = {1.0f};
  // Two rounds: version 1 -> 2 -> 3.
  for (int i = 0; i < 4; ++i) EXPECT_EQ(d.Push(g.data(), d.version()), 0u);
  ASSERT_EQ(d.version(), 3u);
  const std::vector<float> before = d.weights();
  // A push computed on version 1 is two steps stale: weight 1/3. With a
  // fresh one the round's gradient is (1/3 + 1) / 2 of g, and Adam's moving
  // averages see that smaller gradient (compare with an unweighted twin).
  EXPECT_EQ(d.Push(g.data(), 1), 2u);
  EXPECT_EQ(d.Push(g.data(), 3), 0u);
  DenseUpdater twin(Adam(), Update(2, false), 2, w0, 1, 0.01f);
  for (int i = 0; i < 4; ++i) twin.Push(g.data(), twin.version());
  twin.Push(g.data(), 1);
  twin.Push(g.data(), 3);
  EXPECT_LT(d.weights()[0], before[0]) << "still a step down the gradient";
  EXPECT_GT(d.weights()[0], twin.weights()[0]) << "but a shorter one than without the staleness weights";
}

TEST(DenseUpdaterTest, TheAveragedStepsRateGrowsWithThePushesAveraged) {
  proto::DenseUpdateConfig c;  // defaults: average half the worker count, power 0.5
  EXPECT_FLOAT_EQ(DenseUpdater(Adam(), c, 32, {0.0f}, 1, 0.01f).rule().config().learning_rate(), 0.04f);
  EXPECT_EQ(DenseUpdater(Adam(), c, 32, {0.0f}, 1, 0.01f).average_pushes(), 16u);
  EXPECT_FLOAT_EQ(DenseUpdater(Adam(), c, 2, {0.0f}, 1, 0.01f).rule().config().learning_rate(), 0.01f);
  c.set_lr_scale_power(0.25);
  c.set_average_pushes(16);
  EXPECT_FLOAT_EQ(DenseUpdater(Adam(), c, 2, {0.0f}, 1, 0.01f).rule().config().learning_rate(), 0.02f);
}

TEST(DenseUpdaterTest, UnknownOrFutureVersionsAreFresh) {
  DenseUpdater d(Adam(), Update(4, true), 4, {0.0f}, 1, 0.01f);
  const float g = 1.0f;
  EXPECT_EQ(d.Push(&g, 0), 0u);
  EXPECT_EQ(d.Push(&g, 99), 0u);  // e.g. pulled from a server since replaced
}

TEST(DenseUpdaterTest, FlushAppliesAPartialRoundOnly) {
  const std::vector<float> w0 = {0.5f, -0.25f};
  DenseUpdater d(Adam(), Update(8, false), 8, w0, 2, 0.01f);
  d.Flush();
  EXPECT_EQ(d.version(), 1u) << "nothing pending, no step";
  EXPECT_EQ(d.weights(), w0);
  const std::vector<float> a = {0.2f, 0.4f}, b = {0.4f, 0.0f};
  d.Push(a.data(), 1);
  d.Push(b.data(), 1);
  d.Flush();
  EXPECT_EQ(d.version(), 2u);
  const std::vector<float> want = Stepped(w0, {0.3f, 0.2f});
  for (size_t i = 0; i < 2; ++i) EXPECT_FLOAT_EQ(d.weights()[i], want[i]) << i;
  d.Flush();
  EXPECT_EQ(d.version(), 2u);
}

TEST(DenseUpdaterTest, StateEntriesMoveOnEveryPush) {
  // [0, 1) optimized, [1, 3) state (Dice's moving averages).
  DenseUpdater d(Adam(), Update(4, false), 4, {0.0f, 1.0f, 2.0f}, 1, 0.5f);
  const std::vector<float> g = {0.0f, 1.0f, -2.0f};
  d.Push(g.data(), 1);
  EXPECT_EQ(d.version(), 1u);
  EXPECT_FLOAT_EQ(d.weights()[1], 1.5f);
  EXPECT_FLOAT_EQ(d.weights()[2], 1.0f);
  EXPECT_EQ(d.state().size(), 2u * 1 + 2) << "Adam state for the optimized entry only";
}

TEST(DenseUpdaterTest, ResetDropsThePartialRoundAndAdvancesTheVersion) {
  DenseUpdater d(Adam(), Update(2, false), 2, {0.0f}, 1, 0.01f);
  const float g = 1.0f;
  d.Push(&g, 1);
  std::vector<float> state(d.state());
  d.Reset({7.0f}, state);
  EXPECT_EQ(d.version(), 2u);
  EXPECT_EQ(d.weights(), std::vector<float>{7.0f});
  // The pre-restore push is gone: one more push does not complete a round.
  EXPECT_EQ(d.Push(&g, 1), 1u);
  EXPECT_EQ(d.weights(), std::vector<float>{7.0f});
}

}  // namespace
}  // namespace ember::ps
