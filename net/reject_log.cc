// RejectLog: see reject_log.h.
#include "net/reject_log.h"

#include "glog/logging.h"

namespace ember::net {

void RejectLog::Warn(absl::string_view what) {
  uint64_t suppressed = 0;
  {
    absl::MutexLock l(&mu_);
    ++total_;
    const absl::Time now = absl::Now();
    if (now - window_start_ >= interval_) {
      window_start_ = now;
      logged_in_window_ = 0;
    }
    if (logged_in_window_ >= burst_) {
      ++suppressed_;
      return;
    }
    ++logged_in_window_;
    suppressed = suppressed_;
    suppressed_ = 0;
  }
  if (suppressed > 0) {
    LOG(WARNING) << what << " (and " << suppressed << " more rejections not logged)";
  } else {
    LOG(WARNING) << what;
  }
}

uint64_t RejectLog::total() const {
  absl::MutexLock l(&mu_);
  return total_;
}

}  // namespace ember::net
