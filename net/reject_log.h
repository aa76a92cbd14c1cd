// RejectLog: rate-limited logging of rejected input (bad frames, refused
// requests, unauthenticated peers). A hostile or broken peer can send
// thousands of bad messages a second; each is still counted and answered,
// but only the first `burst` per interval reach the log, and the next line
// that does says how many were left out.
//
// Thread-safe.
#ifndef EMBER_NET_REJECT_LOG_H_
#define EMBER_NET_REJECT_LOG_H_

#include <cstdint>
#include "absl/strings/string_view.h"

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace ember::net {

class RejectLog {
 public:
  explicit RejectLog(absl::Duration interval = absl::Seconds(10), int burst = 10)
      : interval_(interval), burst_(burst) {}

  // Counts one rejection and logs `what` at WARNING if this interval's burst
  // is not spent, appending how many were suppressed since the last line.
  void Warn(absl::string_view what);

  // Rejections counted so far (logged or not).
  uint64_t total() const;

 private:
  const absl::Duration interval_;
  const int burst_;
  mutable absl::Mutex mu_;
  absl::Time window_start_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  int logged_in_window_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t suppressed_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t total_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace ember::net

#endif  // EMBER_NET_REJECT_LOG_H_
