// Optimizer rules: the update math for a span of weights with its state, used
// for one embedding row on the servers (n = dim) and for a slice of the dense
// parameters (n = slice length). State layout per kind, for n weights:
//   SGD: none.  Adagrad: accum[n].  Adam: m[n], v[n], beta1^t, beta2^t.
//   FTRL: z[n], n_acc[n]  (weights are a function of z and n_acc).
#ifndef EMBER_STORAGE_OPTIMIZER_H_
#define EMBER_STORAGE_OPTIMIZER_H_

#include <cstddef>
#include <memory>

#include "proto/config.pb.h"

namespace ember::storage {

class OptimizerRule {
 public:
  explicit OptimizerRule(const proto::OptimizerConfig& config);

  // Floats of state that n weights need.
  size_t StateFloats(size_t n) const;
  // Sets the state for freshly initialised weights w[0..n). For FTRL it
  // chooses z so that the weights the rule implies equal w.
  void InitState(const float* w, float* state, size_t n) const;
  // One step: w and state updated in place from gradient g[0..n).
  // Thread-compatible: concurrent calls on disjoint rows are safe.
  void Apply(float* w, float* state, const float* g, size_t n) const;

  const proto::OptimizerConfig& config() const { return config_; }

 private:
  proto::OptimizerConfig config_;
};

}  // namespace ember::storage

#endif  // EMBER_STORAGE_OPTIMIZER_H_
