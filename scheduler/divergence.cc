// DivergenceWatch: the rules of proto::DivergenceConfig over progress reports.
#include "scheduler/divergence.h"

#include <cmath>

#include "absl/strings/str_format.h"

namespace ember::scheduler {

std::string DivergenceWatch::Observe(double loss, double train_auc, double seconds) {
  if (!config_.enabled() || !diverged_.empty()) return diverged_;
  if (!std::isfinite(loss)) {
    diverged_ = absl::StrFormat("loss is %f", loss);
    return diverged_;
  }
  if (first_loss_ < 0) {
    first_loss_ = loss;
  } else if (loss > config_.loss_ratio() * first_loss_) {
    if (++high_reports_ >= config_.loss_reports()) {
      diverged_ = absl::StrFormat("loss %.4f > %g x the first report's %.4f for %d reports in a row", loss,
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
