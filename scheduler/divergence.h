// DivergenceWatch: tells from the scheduler's progress reports that training
// has diverged (a non-finite loss, a loss far above the start) or collapsed
// (a training AUC stuck at 0.5), by the rules of proto::DivergenceConfig.
//
// Thread safety: none; the scheduler's loop owns it.
#ifndef EMBER_SCHEDULER_DIVERGENCE_H_
#define EMBER_SCHEDULER_DIVERGENCE_H_

#include <string>

#include "proto/config.pb.h"

namespace ember::scheduler {

class DivergenceWatch {
 public:
  explicit DivergenceWatch(const proto::DivergenceConfig& config) : config_(config) {}

  // One progress report: `loss`, the mean loss of the samples since the
  // report before; `train_auc`, the windowed training AUC (NaN while
  // undefined); `seconds`, training time so far. Returns why training has
  // diverged ("loss is nan", "loss 4.31 > 3 x the start's 0.69 for 3
  // reports", "train AUC 0.5003 within 0.01 of 0.5 for 15 s"), or "" while
  // it has not. Once it has returned a reason it returns the same one. A
  // disabled watch always returns "".
  std::string Observe(double loss, double train_auc, double seconds);

 private:
  proto::DivergenceConfig config_;
  std::string diverged_;
  double first_loss_ = -1;  // the start's loss: min(first report's, ln 2); < 0 until then
  uint32_t high_reports_ = 0;
  double stuck_since_ = -1;  // training seconds when the AUC came within the margin; < 0 if it is not
};

}  // namespace ember::scheduler

#endif  // EMBER_SCHEDULER_DIVERGENCE_H_
