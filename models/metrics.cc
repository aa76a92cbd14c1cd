#include "models/metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace ember::models {

double ExactAuc(absl::Span<const float> scores, absl::Span<const float> labels) {
  const size_t n = scores.size();
  // A diverged model's NaN scores have no order; sorting them would be undefined.
  for (float s : scores) {
    if (std::isnan(s)) return std::numeric_limits<double>::quiet_NaN();
  }
  std::vector<uint32_t> order(n);
  std::iota(order.begin(), order.end(), 0u);
  std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return scores[a] < scores[b]; });
  // Sum of positive ranks, ties given their average rank.
  double pos_rank_sum = 0;
  double num_pos = 0;
  size_t i = 0;
  while (i < n) {
    size_t j = i;
    double pos_in_group = 0;
    while (j < n && scores[order[j]] == scores[order[i]]) {
      pos_in_group += labels[order[j]] >= 0.5f ? 1 : 0;
      ++j;
    }
    const double avg_rank = (static_cast<double>(i) + static_cast<double>(j) + 1) / 2;  // 1-based
    pos_rank_sum += pos_in_group * avg_rank;
    num_pos += pos_in_group;
    i = j;
  }
  const double num_neg = static_cast<double>(n) - num_pos;
  if (num_pos == 0 || num_neg == 0) return std::numeric_limits<double>::quiet_NaN();
  return (pos_rank_sum - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg);
}

double GroupAuc(absl::Span<const float> scores, absl::Span<const float> labels, absl::Span<const uint64_t> groups) {
  const size_t n = scores.size();
  std::vector<uint32_t> order(n);
  std::iota(order.begin(), order.end(), 0u);
  std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return groups[a] < groups[b]; });
  double weighted = 0, weight = 0;
  std::vector<float> s, l;
  for (size_t i = 0; i < n;) {
    size_t j = i;
    s.clear();
    l.clear();
    for (; j < n && groups[order[j]] == groups[order[i]]; ++j) {
      s.push_back(scores[order[j]]);
      l.push_back(labels[order[j]]);
    }
    const double auc = ExactAuc(s, l);
    for (float x : s) {
      if (std::isnan(x)) return std::numeric_limits<double>::quiet_NaN();
    }
    if (!std::isnan(auc)) {
      weighted += auc * static_cast<double>(j - i);
      weight += static_cast<double>(j - i);
    }
    i = j;
  }
  return weight > 0 ? weighted / weight : std::numeric_limits<double>::quiet_NaN();
}

double LogLoss(absl::Span<const float> scores, absl::Span<const float> labels) {
  if (scores.empty()) return std::numeric_limits<double>::quiet_NaN();
  double sum = 0;
  for (size_t i = 0; i < scores.size(); ++i) {
    const double p = std::clamp<double>(scores[i], 1e-7, 1 - 1e-7);
    const double y = labels[i];
    sum -= y * std::log(p) + (1 - y) * std::log(1 - p);
  }
  return sum / static_cast<double>(scores.size());
}

WindowAuc::WindowAuc(size_t capacity) : capacity_(std::max<size_t>(capacity, 1)) {
  scores_.reserve(capacity_);
  labels_.reserve(capacity_);
}

void WindowAuc::Add(float score, float label) {
  if (scores_.size() < capacity_) {
    scores_.push_back(score);
    labels_.push_back(label);
    return;
  }
  scores_[next_] = score;
  labels_[next_] = label;
  next_ = (next_ + 1) % capacity_;
}

double WindowAuc::Auc() const { return ExactAuc(scores_, labels_); }

}  // namespace ember::models
