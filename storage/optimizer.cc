#include "storage/optimizer.h"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>

namespace ember::storage {
namespace {

using Arr = Eigen::Map<Eigen::ArrayXf>;
using ConstArr = Eigen::Map<const Eigen::ArrayXf>;

}  // namespace

OptimizerRule::OptimizerRule(const proto::OptimizerConfig& config) : config_(config) {}

size_t OptimizerRule::StateFloats(size_t n) const {
  switch (config_.kind()) {
    case proto::OptimizerConfig::SGD:
      return 0;
    case proto::OptimizerConfig::ADAGRAD:
      return n;
    case proto::OptimizerConfig::ADAM:
      return 2 * n + 2;
    case proto::OptimizerConfig::FTRL:
      return 2 * n;
  }
  return 0;
}

void OptimizerRule::InitState(const float* w, float* state, size_t n) const {
  switch (config_.kind()) {
    case proto::OptimizerConfig::SGD:
      return;
    case proto::OptimizerConfig::ADAGRAD:
      std::fill(state, state + n, config_.initial_accumulator());
      return;
    case proto::OptimizerConfig::ADAM:
      std::fill(state, state + 2 * n, 0.0f);
      state[2 * n] = 1.0f;  // beta1^t at t = 0
      state[2 * n + 1] = 1.0f;
      return;
    case proto::OptimizerConfig::FTRL: {
      // With n_acc = 0 the rule gives w = -(z - sign(z) l1) / (beta / alpha + l2);
      // invert it so that the initial weights survive until the first update.
      const float denom = config_.ftrl_beta() / config_.learning_rate() + config_.l2();
      for (size_t i = 0; i < n; ++i) {
        const float zi = -w[i] * denom;
        state[i] = zi == 0 ? 0 : zi + (zi > 0 ? config_.l1() : -config_.l1());
        state[n + i] = 0;
      }
      return;
    }
  }
}

void OptimizerRule::Apply(float* w_ptr, float* state, const float* g_ptr, size_t n) const {
  Arr w(w_ptr, n);
  ConstArr g_in(g_ptr, n);
  const float lr = config_.learning_rate();
  const float clip = config_.grad_clip();
  // Clipping is rare; only then do we pay for a temporary.
  Eigen::ArrayXf clipped;
  if (clip > 0) clipped = g_in.max(-clip).min(clip);
  ConstArr g(clip > 0 ? clipped.data() : g_ptr, n);
  switch (config_.kind()) {
    case proto::OptimizerConfig::SGD:
      w -= lr * g;
      return;
    case proto::OptimizerConfig::ADAGRAD: {
      Arr acc(state, n);
      acc += g.square();
      // sqrt and division are exact in both Eigen's packet and scalar paths
      // (rsqrt is not), so a row's update does not depend on its alignment.
      w -= lr * g / acc.sqrt();
      return;
    }
    case proto::OptimizerConfig::ADAM: {
      Arr m(state, n), v(state + n, n);
      const float b1 = config_.beta1(), b2 = config_.beta2();
      float& b1t = state[2 * n];
      float& b2t = state[2 * n + 1];
      b1t *= b1;
      b2t *= b2;
      m = b1 * m + (1 - b1) * g;
      v = b2 * v + (1 - b2) * g.square();
      const float step = lr * std::sqrt(1 - b2t) / (1 - b1t);
      w -= step * m / (v.sqrt() + config_.epsilon());
      return;
    }
    case proto::OptimizerConfig::FTRL: {
      Arr z(state, n), nacc(state + n, n);
      const float alpha = lr, beta = config_.ftrl_beta(), l1 = config_.l1(), l2 = config_.l2();
      const Eigen::ArrayXf n_new = nacc + g.square();
      const Eigen::ArrayXf sigma = (n_new.sqrt() - nacc.sqrt()) / alpha;
      z += g - sigma * w;
      nacc = n_new;
      for (size_t i = 0; i < n; ++i) {
        const float zi = z[i];
        w[i] = std::abs(zi) <= l1 ? 0.0f
                                  : -(zi - std::copysign(l1, zi)) / ((beta + std::sqrt(nacc[i])) / alpha + l2);
      }
      return;
    }
  }
}

}  // namespace ember::storage
