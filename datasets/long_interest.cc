// gen-data's mode long_interest: a log for long-sequence models such as SIM,
// described at the end of the comment atop gen_data.h.
#include <algorithm>
#include <atomic>
#include <charconv>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "datasets/gen_data_internal.h"
#include "datasets/random.h"

namespace ember::datasets::internal {
namespace {

// Lines are ~20 KB at the default history of 1000, so buffer more per write.
constexpr size_t kFlushBytes = size_t{4} << 20;
// Sample times: uniform over the 90 days from 2024-01-01T00:00:00Z. A
// history's oldest item is a uniform 60 to 720 days (in seconds) older.
constexpr int64_t kTimeOrigin = 1704067200;
constexpr int64_t kDay = 86400;
constexpr int64_t kSampleWindow = 90 * kDay;
constexpr int64_t kMinHistorySpan = 60 * kDay;
constexpr int64_t kMaxHistorySpan = 720 * kDay;

// Mode long_interest's click model (atop gen_data.h). Immutable; keeps a
// reference to `o`, which must be valid options and outlive the model.
class LongInterestModel : public PartGenerator {
 public:
  // Generates and writes one part (PartGenerator).
  void Generate(const Part& part, DistinctIds* distinct, const std::atomic<bool>& cancelled,
                PartResult* result) const override;

  explicit LongInterestModel(const GenDataOptions& o)
      : o_(o),
        items_in_category_((o.num_items + o.num_categories - 1) / o.num_categories, o.item_zipf) {}

  uint32_t Category(uint64_t item) const { return static_cast<uint32_t>(item % o_.num_categories); }

  // An item of `category` by Zipf popularity within it (ids c, c + C, ...).
  uint64_t DrawItem(uint32_t category, Random& rng) const {
    for (;;) {  // rank 1 always exists (category < num_categories <= num_items)
      const uint64_t item = (items_in_category_.Sample(rng) - 1) * o_.num_categories + category;
      if (item < o_.num_items) return item;
    }
  }

  // n_old: how many of the history's old part (all but the newest
  // recent_window items) have category `category`.
  uint32_t OldMatches(uint32_t category, const uint32_t* hist_cats, size_t history) const {
    const size_t old = history > o_.recent_window ? history - o_.recent_window : 0;
    uint32_t n = 0;
    for (size_t j = 0; j < old; ++j) n += hist_cats[j] == category;
    return n;
  }

  // The logit without the old-part term: all a model blind to it can use.
  double BaseLogit(uint64_t item, uint32_t category) const {
    double logit = o_.base_logit;
    logit += o_.item_effect * NormalFromHash(EntityHash(o_.seed, kItemEffect, item));
    logit += o_.category_effect * NormalFromHash(EntityHash(o_.seed, kCategoryEffect, category));
    return logit;
  }

  double Logit(double base_logit, uint32_t old_matches) const {
    const double cap = o_.interest_cap;
    return base_logit + o_.interest_strength * std::min<double>(old_matches, cap) / cap;
  }

  // E[p | everything but the old part]: a deep hit with probability
  // deep_share, then n_old uniform in [deep_min_items, deep_max_items];
  // otherwise n_old = 0.
  float RecentOnlyProbability(double base_logit) const {
    const uint32_t lo = o_.deep_min_items, hi = o_.deep_max_items, cap = o_.interest_cap;
    double deep = 0;
    for (uint32_t n = lo; n <= hi && n < cap; ++n) deep += Sigmoid(Logit(base_logit, n));
    if (hi >= cap) deep += (hi - std::max(lo, cap) + 1) * Sigmoid(Logit(base_logit, cap));
    deep /= hi - lo + 1;
    return static_cast<float>(o_.deep_share * deep + (1 - o_.deep_share) * Sigmoid(base_logit));
  }

  static double Sigmoid(double logit) { return 1.0 / (1.0 + std::exp(-logit)); }

 private:
  const GenDataOptions& o_;
  ZipfSampler items_in_category_;  // ranks within one category
};

// Writes v's decimal digits at p; returns the end.
char* PutUint(uint64_t v, char* p) { return std::to_chars(p, p + 24, v).ptr; }

void LongInterestModel::Generate(const Part& part, DistinctIds* distinct,
                                 const std::atomic<bool>& cancelled, PartResult* result) const {
  const GenDataOptions& o = o_;
  const LongInterestModel& model = *this;
  Random rng(EntityHash(o.seed, kLongInterestStream, part.test ? 2 : 1, part.index));
  if (part.test) {
    result->p.reserve(part.rows);
    result->labels.reserve(part.rows);
    result->p_recent.reserve(part.rows);
  }
  const size_t history = o.long_history;
  const size_t old = history - o.recent_window;  // validated >= 2 * deep items
  const uint32_t num_categories = o.num_categories;
  std::vector<uint64_t> hist_items(history);
  std::vector<uint32_t> hist_cats(history);
  std::vector<int64_t> hist_times(history);
  std::vector<double> spacings(history);
  std::vector<uint8_t> is_deep(old, 0);
  std::vector<size_t> deep_positions;
  uint32_t recent[kMaxInterests], deep[kMaxInterests];
  // The longest line: ids up to 2^40 (13 digits), categories below 2^24 (8),
  // times below 10^11 (11), each with a separator.
  const size_t max_line = 128 + history * (14 + 9 + 12);
  std::unique_ptr<char[]> line(new char[max_line]);
  auto taken = [&](uint32_t c, uint32_t recent_n, uint32_t deep_n) {
    return std::find(recent, recent + recent_n, c) != recent + recent_n ||
           std::find(deep, deep + deep_n, c) != deep + deep_n;
  };
  uint64_t user = part.first_row;

  WritePart(o, part, kFlushBytes, cancelled, result, [&](std::string* out) {
    // Interests: R, then D outside R, each deep category with its count.
    for (uint32_t i = 0; i < o.recent_interests; ++i) {
      uint32_t c;
      do c = static_cast<uint32_t>(rng.Below(num_categories));
      while (taken(c, i, 0));
      recent[i] = c;
    }
    for (uint32_t i = 0; i < o.deep_interests; ++i) {
      uint32_t c;
      do c = static_cast<uint32_t>(rng.Below(num_categories));
      while (taken(c, o.recent_interests, i));
      deep[i] = c;
    }
    // The candidate: a deep interest, or a category outside R and D.
    uint32_t category;
    if (rng.Uniform() < o.deep_share) {
      category = deep[rng.Below(o.deep_interests)];
    } else {
      do category = static_cast<uint32_t>(rng.Below(num_categories));
      while (taken(category, o.recent_interests, o.deep_interests));
    }
    const uint64_t item = model.DrawItem(category, rng);

    // Times: the k-th newest item (k = 1..history) is k + floor(S_k / S_n *
    // (span - history)) seconds old, S_k the sum of k Exp(1) spacings: sorted
    // uniform ages, strictly increasing, the oldest exactly span old.
    const int64_t timestamp = kTimeOrigin + static_cast<int64_t>(rng.Below(kSampleWindow));
    const int64_t span =
        kMinHistorySpan + static_cast<int64_t>(rng.Below(kMaxHistorySpan - kMinHistorySpan + 1));
    double sum = 0;
    for (size_t k = 0; k < history; ++k) spacings[k] = sum += -std::log(1 - rng.Uniform());
    const double scale = static_cast<double>(span - static_cast<int64_t>(history)) / sum;
    for (size_t k = 0; k < history; ++k) {
      const int64_t age = static_cast<int64_t>(k + 1) +
                          (k + 1 == history ? span - static_cast<int64_t>(history)
                                            : static_cast<int64_t>(spacings[k] * scale));
      hist_times[history - 1 - k] = timestamp - age;
    }

    // Categories: the old part from R with the deep items at random
    // positions, the newest recent_window from R; then items.
    for (size_t j = 0; j < old; ++j) hist_cats[j] = recent[rng.Below(o.recent_interests)];
    for (uint32_t i = 0; i < o.deep_interests; ++i) {
      const uint32_t n = o.deep_min_items +
                         static_cast<uint32_t>(rng.Below(o.deep_max_items - o.deep_min_items + 1));
      for (uint32_t k = 0; k < n; ++k) {
        size_t pos;
        do pos = rng.Below(old);
        while (is_deep[pos]);
        is_deep[pos] = 1;
        deep_positions.push_back(pos);
        hist_cats[pos] = deep[i];
      }
    }
    for (size_t pos : deep_positions) is_deep[pos] = 0;
    deep_positions.clear();
    for (size_t j = old; j < history; ++j) hist_cats[j] = recent[rng.Below(o.recent_interests)];
    for (size_t j = 0; j < history; ++j) hist_items[j] = model.DrawItem(hist_cats[j], rng);

    const double base_logit = model.BaseLogit(item, category);
    const float p =
        Probability(model.Logit(base_logit, model.OldMatches(category, hist_cats.data(), history)));
    const bool label = rng.Uniform() < p;

    result->Add(p, label, history, part.test);
    if (part.test) result->p_recent.push_back(model.RecentOnlyProbability(base_logit));
    if (distinct != nullptr) {
      distinct->users.Set(user);
      distinct->items.Set(item);
      distinct->categories.Set(category);
      for (size_t j = 0; j < history; ++j) {
        distinct->items.Set(hist_items[j]);
        distinct->categories.Set(hist_cats[j]);
      }
    }

    char* w = line.get();
    *w++ = label ? '1' : '0';
    *w++ = '\t';
    w = PutUint(user, w);
    *w++ = '\t';
    w = PutUint(item, w);
    *w++ = '\t';
    w = PutUint(category, w);
    *w++ = '\t';
    w = PutUint(static_cast<uint64_t>(timestamp), w);
    *w++ = '\t';
    for (size_t j = 0; j < history; ++j) {
      w = PutUint(hist_items[j], w);
      *w++ = ',';
    }
    w[-1] = '\t';  // history >= 2 (validated), so there was a ','
    for (size_t j = 0; j < history; ++j) {
      w = PutUint(hist_cats[j], w);
      *w++ = ',';
    }
    w[-1] = '\t';
    for (size_t j = 0; j < history; ++j) {
      w = PutUint(static_cast<uint64_t>(hist_times[j]), w);
      *w++ = ',';
    }
    w[-1] = '\n';
    out->append(line.get(), w);
    ++user;
  });
}

}  // namespace

std::unique_ptr<PartGenerator> MakeLongInterestGenerator(const GenDataOptions& o) {
  return std::make_unique<LongInterestModel>(o);
}

absl::StatusOr<float> LongInterestClickProbability(const GenDataOptions& o, std::string_view line) {
  const std::vector<absl::string_view> f = absl::StrSplit(Av(line), '\t');
  const auto& columns = kGenDataLongInterestColumns;
  if (f.size() != columns.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected ", columns.size(), " tab-separated columns, got ", f.size()));
  }
  auto bad = [&](size_t column, std::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("column ", Av(columns[column]), ": ", Av(why)));
  };
  const LongInterestModel model(o);
  uint64_t user, item, category;
  int64_t timestamp;
  if (!absl::SimpleAtoi(f[1], &user)) return bad(1, absl::StrCat("'", f[1], "' is not an id"));
  if (!absl::SimpleAtoi(f[2], &item) || item >= o.num_items) {
    return bad(2, absl::StrCat("'", f[2], "' is not an id below ", o.num_items));
  }
  if (!absl::SimpleAtoi(f[3], &category) || category != model.Category(item)) {
    return bad(3, "is not item_id % num_categories");
  }
  if (!absl::SimpleAtoi(f[4], &timestamp)) {
    return bad(4, absl::StrCat("'", f[4], "' is not a time"));
  }
  const std::vector<absl::string_view> items = absl::StrSplit(f[5], ',');
  const std::vector<absl::string_view> cats = absl::StrSplit(f[6], ',');
  const size_t times = 1 + std::count(f[7].begin(), f[7].end(), ',');
  for (size_t column : {5, 6, 7}) {
    const size_t n = column == 5 ? items.size() : column == 6 ? cats.size() : times;
    if (n != o.long_history) {
      return bad(column, absl::StrCat("has ", n, " values, not long_history = ", o.long_history));
    }
  }
  std::vector<uint32_t> hist_cats(cats.size());
  for (size_t j = 0; j < cats.size(); ++j) {
    uint64_t hist_item;
    if (!absl::SimpleAtoi(items[j], &hist_item) || hist_item >= o.num_items) {
      return bad(5, absl::StrCat("'", items[j], "' is not an id below ", o.num_items));
    }
    hist_cats[j] = model.Category(hist_item);
    uint32_t c;
    if (!absl::SimpleAtoi(cats[j], &c) || c != hist_cats[j]) {
      return bad(6, absl::StrCat("'", cats[j], "' is not the category of item ", items[j]));
    }
  }
  const uint32_t matches =
      model.OldMatches(static_cast<uint32_t>(category), hist_cats.data(), hist_cats.size());
  return Probability(model.Logit(model.BaseLogit(item, static_cast<uint32_t>(category)), matches));
}

}  // namespace ember::datasets::internal
