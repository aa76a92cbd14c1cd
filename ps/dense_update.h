// DenseUpdater: a server's slice of the dense parameters and the rule that
// turns the workers' gradient pushes into optimizer steps
// (train.dense_update, docs/scaling.md).
//
// Each step of the slice has a version (1, 2, ...). A worker pulls the
// weights with their version and pushes its gradient with that version; the
// push's staleness is how many steps the slice took in between. Pushes are
// averaged, `average_pushes` at a time, into one optimizer step (0: half
// the job's worker count, rounded up); with `staleness_aware` a push of staleness tau enters
// the average with weight 1 / (1 + tau), so the step's gradient is
//   sum_i g_i / (1 + tau_i)  /  pushes,
// and the step's learning rate is the rule's times
// average_pushes ^ lr_scale_power.
// With average_pushes 1 and staleness_aware off every push is one step, as
// before this rule existed. Entries from `trained` on are model state
// (Dice's moving averages), moved by state_rate x g on every push.
//
// Flush applies a partial round at once, so that what the workers had
// acknowledged is in the weights: before a checkpoint is cut and before an
// evaluation reads them.
//
// Thread-compatible: the server calls it from its I/O thread only.
#ifndef EMBER_PS_DENSE_UPDATE_H_
#define EMBER_PS_DENSE_UPDATE_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "proto/config.pb.h"
#include "storage/optimizer.h"

namespace ember::ps {

class DenseUpdater {
 public:
  // `weights`: the slice's initial values; [0, trained) are optimized by
  // `rule`, the rest is state. `num_workers` resolves average_pushes 0.
  DenseUpdater(const proto::OptimizerConfig& rule, const proto::DenseUpdateConfig& config, uint32_t num_workers,
               std::vector<float> weights, size_t trained, float state_rate);

  const std::vector<float>& weights() const { return w_; }
  const std::vector<float>& state() const { return state_; }
  size_t trained() const { return trained_; }
  size_t size() const { return w_.size(); }
  uint64_t version() const { return version_; }
  uint32_t average_pushes() const { return average_; }
  // The rule steps are taken with (its learning rate scaled).
  const storage::OptimizerRule& rule() const { return rule_; }

  // Takes one push of size() floats computed from weights of `version`
  // (0: unknown, taken as fresh). Returns its staleness.
  uint64_t Push(const float* g, uint64_t version);
  // Applies the pushes of a partial round, if any, as one step.
  void Flush();
  // Replaces weights and optimizer state (a restore) and drops any partial
  // round; the version goes on increasing so that pushes computed before
  // the restore count as stale.
  void Reset(std::vector<float> weights, std::vector<float> state);

 private:
  void Step();

  storage::OptimizerRule rule_;
  bool staleness_aware_;
  uint32_t average_;
  float state_rate_;
  size_t trained_;
  std::vector<float> w_, state_;
  std::vector<float> sum_;  // weighted sum of the round's gradients, trained_ floats
  uint32_t pending_ = 0;    // pushes in sum_
  uint64_t version_ = 1;
};

}  // namespace ember::ps

#endif  // EMBER_PS_DENSE_UPDATE_H_
