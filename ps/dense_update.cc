#include "ps/dense_update.h"

#include <algorithm>
#include <cmath>
#include <utility>

namespace ember::ps {
namespace {

uint32_t Average(const proto::DenseUpdateConfig& config, uint32_t num_workers) {
  return config.average_pushes() != 0 ? config.average_pushes() : std::max<uint32_t>(1, (num_workers + 1) / 2);
}

// The rule with its learning rate scaled for a step of `average` pushes.
proto::OptimizerConfig Scaled(proto::OptimizerConfig rule, const proto::DenseUpdateConfig& config,
                              uint32_t average) {
  if (average > 1 && config.lr_scale_power() > 0) {
    rule.set_learning_rate(static_cast<float>(rule.learning_rate() * std::pow(average, config.lr_scale_power())));
  }
  return rule;
}

}  // namespace

DenseUpdater::DenseUpdater(const proto::OptimizerConfig& rule, const proto::DenseUpdateConfig& config,
                           uint32_t num_workers, std::vector<float> weights, size_t trained, float state_rate)
    : rule_(Scaled(rule, config, Average(config, num_workers))),
      staleness_aware_(config.staleness_aware()),
      average_(Average(config, num_workers)),
      state_rate_(state_rate),
      trained_(std::min(trained, weights.size())),
      w_(std::move(weights)) {
  state_.resize(rule_.StateFloats(trained_));
  rule_.InitState(w_.data(), state_.data(), trained_);
  sum_.assign(trained_, 0.0f);
}

uint64_t DenseUpdater::Push(const float* g, uint64_t version) {
  const uint64_t tau = version != 0 && version < version_ ? version_ - version : 0;
  for (size_t i = trained_; i < w_.size(); ++i) w_[i] += state_rate_ * g[i];
  const float weight = staleness_aware_ ? 1.0f / static_cast<float>(1 + tau) : 1.0f;
  for (size_t i = 0; i < trained_; ++i) sum_[i] += weight * g[i];
  if (++pending_ >= average_) Step();
  return tau;
}

void DenseUpdater::Flush() {
  if (pending_ > 0) Step();
}

void DenseUpdater::Step() {
  const float inv = 1.0f / static_cast<float>(pending_);
  for (float& x : sum_) x *= inv;
  rule_.Apply(w_.data(), state_.data(), sum_.data(), trained_);
  std::fill(sum_.begin(), sum_.end(), 0.0f);
  pending_ = 0;
  ++version_;
}

void DenseUpdater::Reset(std::vector<float> weights, std::vector<float> state) {
  w_ = std::move(weights);
  state_ = std::move(state);
  std::fill(sum_.begin(), sum_.end(), 0.0f);
  pending_ = 0;
  ++version_;
}

}  // namespace ember::ps
