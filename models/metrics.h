// Exact evaluation metrics over (score, label) pairs: AUC and logloss.
#ifndef EMBER_MODELS_METRICS_H_
#define EMBER_MODELS_METRICS_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/types/span.h"

namespace ember::models {

// Area under the ROC curve, exactly: the probability that a random positive
// scores above a random negative, ties counting one half (average ranks).
// Labels >= 0.5 are positives. Returns NaN when either class is empty.
// O(n log n); `scores` and `labels` must have the same size.
double ExactAuc(absl::Span<const float> scores, absl::Span<const float> labels);

// GAUC: the AUC of each group (user) with both classes, averaged with the
// group's number of samples as weight; groups with one class are skipped.
// NaN when no group has both classes or any score is NaN. O(n log n).
double GroupAuc(absl::Span<const float> scores, absl::Span<const float> labels, absl::Span<const uint64_t> groups);

// Mean binary cross-entropy of probabilities `scores` (clipped to
// [1e-7, 1 - 1e-7]) against `labels` in [0, 1]. NaN when empty.
double LogLoss(absl::Span<const float> scores, absl::Span<const float> labels);

// Exact AUC over the last `capacity` pairs added: the training AUC a worker
// reports. Not thread-safe.
class WindowAuc {
 public:
  explicit WindowAuc(size_t capacity);
  void Add(float score, float label);
  // O(n log n) over the window; NaN until both classes are present.
  double Auc() const;
  size_t size() const { return scores_.size(); }

 private:
  size_t capacity_;
  size_t next_ = 0;
  std::vector<float> scores_;
  std::vector<float> labels_;
};

}  // namespace ember::models

#endif  // EMBER_MODELS_METRICS_H_
