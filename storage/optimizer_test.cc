#include "storage/optimizer.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "storage/initializer.h"

namespace ember::storage {
namespace {

proto::OptimizerConfig Config(proto::OptimizerConfig::Kind kind, float lr) {
  proto::OptimizerConfig c;
  c.set_kind(kind);
  c.set_learning_rate(lr);
  return c;
}

TEST(OptimizerTest, SgdAndClip) {
  auto c = Config(proto::OptimizerConfig::SGD, 0.5f);
  c.set_grad_clip(1.0f);
  OptimizerRule r(c);
  EXPECT_EQ(r.StateFloats(4), 0u);
  float w[2] = {1, 1}, g[2] = {0.5f, 10};
  r.Apply(w, nullptr, g, 2);
  EXPECT_FLOAT_EQ(w[0], 0.75f);
  EXPECT_FLOAT_EQ(w[1], 0.5f);  // clipped to 1
}

TEST(OptimizerTest, AdagradMatchesHandComputation) {
  auto c = Config(proto::OptimizerConfig::ADAGRAD, 0.1f);
  c.set_initial_accumulator(0.1f);
  OptimizerRule r(c);
  float w[1] = {1.0f}, s[1];
  r.InitState(w, s, 1);
  EXPECT_FLOAT_EQ(s[0], 0.1f);
  float g[1] = {2.0f};
  r.Apply(w, s, g, 1);
  EXPECT_NEAR(s[0], 4.1f, 1e-6);
  EXPECT_NEAR(w[0], 1.0f - 0.1f * 2.0f / std::sqrt(4.1f), 1e-6);
}

TEST(OptimizerTest, AdamBiasCorrectedFirstStepIsLr) {
  auto c = Config(proto::OptimizerConfig::ADAM, 0.01f);
  OptimizerRule r(c);
  ASSERT_EQ(r.StateFloats(3), 8u);
  std::vector<float> w = {0, 0, 0}, s(8), g = {1, -2, 0.5f};
  r.InitState(w.data(), s.data(), 3);
  r.Apply(w.data(), s.data(), g.data(), 3);
  // After one step, m_hat = g and v_hat = g^2, so each weight moves by lr * sign(g).
  EXPECT_NEAR(w[0], -0.01f, 1e-5);
  EXPECT_NEAR(w[1], 0.01f, 1e-5);
  EXPECT_NEAR(w[2], -0.01f, 1e-5);
  r.Apply(w.data(), s.data(), g.data(), 3);
  EXPECT_NEAR(w[0], -0.02f, 1e-5);
}

TEST(OptimizerTest, FtrlKeepsInitialWeightsAndFollowsProximalRule) {
  auto c = Config(proto::OptimizerConfig::FTRL, 0.1f);
  c.set_l1(0.01f);
  c.set_l2(0.1f);
  c.set_ftrl_beta(1.0f);
  OptimizerRule r(c);
  std::vector<float> w = {0.3f, -0.2f}, s(4);
  r.InitState(w.data(), s.data(), 2);
  // A zero gradient leaves weights where the initialiser put them.
  std::vector<float> zero = {0, 0};
  r.Apply(w.data(), s.data(), zero.data(), 2);
  EXPECT_NEAR(w[0], 0.3f, 1e-5);
  EXPECT_NEAR(w[1], -0.2f, 1e-5);
  // Hand computation of one step for weight 0.
  const float z0 = s[0], n0 = s[2], g = 0.5f;
  const float sigma = (std::sqrt(n0 + g * g) - std::sqrt(n0)) / 0.1f;
  const float z1 = z0 + g - sigma * w[0];
  const float n1 = n0 + g * g;
  const float expect = -(z1 - std::copysign(0.01f, z1)) / ((1.0f + std::sqrt(n1)) / 0.1f + 0.1f);
  std::vector<float> grad = {g, 0};
  r.Apply(w.data(), s.data(), grad.data(), 2);
  EXPECT_NEAR(w[0], expect, 1e-5);
}

TEST(InitializerTest, DeterministicPerKeyAndStream) {
  proto::InitializerConfig c;
  c.set_kind(proto::InitializerConfig::NORMAL);
  c.set_scale(0.5f);
  std::vector<float> a(16), b(16), d(16);
  InitWeights(c, 42, 0, a.data(), 16);
  InitWeights(c, 42, 0, b.data(), 16);
  InitWeights(c, 42, 1, d.data(), 16);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, d);
  // Moments over many keys.
  double sum = 0, sq = 0;
  const int n = 20000;
  for (int k = 0; k < n; ++k) {
    float v;
    InitWeights(c, k, 0, &v, 1);
    sum += v;
    sq += v * v;
  }
  EXPECT_NEAR(sum / n, 0, 0.02);
  EXPECT_NEAR(std::sqrt(sq / n), 0.5, 0.02);
  c.set_kind(proto::InitializerConfig::UNIFORM);
  for (int k = 0; k < 1000; ++k) {
    float v;
    InitWeights(c, k, 0, &v, 1);
    ASSERT_LE(std::abs(v), 0.5f);
  }
}

}  // namespace
}  // namespace ember::storage
