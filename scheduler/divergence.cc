// DivergenceWatch: the rules of proto::DivergenceConfig over progress reports.
#include "scheduler/divergence.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"

namespace ember::scheduler {
namespace {
constexpr double kLn2 = 0.69314718055994531;
}  // namespace

std::string DivergenceWatch::Observe(double loss, double train_auc, double seconds) {
  if (!config_.enabled() || !diverged_.empty()) return diverged_;
  if (!std::isfinite(loss)) {
    diverged_ = absl::StrFormat("loss is %f", loss);
    return diverged_;
  }
  // The start: the first report's loss, or ln 2 (the logloss of a model
  // that says 0.5, where training begins) if that is lower, since a job
  // that diverges at once (32 workers pushing their first steps together)
  // already reports a loss far above it.
  if (first_loss_ < 0) first_loss_ = std::min(loss, kLn2);
  if (loss > config_.loss_ratio() * first_loss_) {
    if (++high_reports_ >= config_.loss_reports()) {
      diverged_ = absl::StrFormat("loss %.4f > %g x the start's %.4f for %d reports in a row", loss,
                                  config_.loss_ratio(), first_loss_, high_reports_);
      return diverged_;
    }
  } else {
    high_reports_ = 0;
  }
  if (!std::isnan(train_auc) && std::fabs(train_auc - 0.5) <= config_.auc_margin()) {
    if (stuck_since_ < 0) stuck_since_ = seconds;
    if (seconds - stuck_since_ >= config_.stuck_seconds()) {
      diverged_ = absl::StrFormat("train AUC %.4f within %g of 0.5 for %.0f s of training", train_auc,
                                  config_.auc_margin(), seconds - stuck_since_);
    }
  } else {
    stuck_since_ = -1;
  }
  return diverged_;
}

}  // namespace ember::scheduler
