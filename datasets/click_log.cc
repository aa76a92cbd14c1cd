// gen-data's default mode: the click log and click model described atop
// gen_data.h.
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

// Share of a user's rows on their usual device; the rest are uniform. Fixed:
// the device effect's strength is the knob that matters.
constexpr double kUsualDeviceShare = 0.8;
// Buffered bytes per file before a write: large enough that write calls cost
// nothing, small enough that many threads stay within a few MiB.
constexpr size_t kFlushBytes = size_t{1} << 20;

// ---------------------------------------------------------------------------
// The click model: who sees what, and the true click probability.

// Immutable after construction; shared by the generator threads. Keeps a
// reference to `o`, which must be valid options and outlive the model.
class ClickModel : public PartGenerator {
 public:
  // Generates and writes one part (PartGenerator).
  void Generate(const Part& part, DistinctIds* distinct, const std::atomic<bool>& cancelled,
                PartResult* result) const override;

  explicit ClickModel(const GenDataOptions& o)
      : o_(o),
        users_(o.num_users, o.user_zipf),
        items_(o.num_items, o.item_zipf),
        items_in_category_((o.num_items + o.num_categories - 1) / o.num_categories, o.item_zipf) {
    const double phase = 24 * UnitFromHash(EntityHash(o.seed, kHourPhase, 0));
    for (int h = 0; h < 24; ++h) {
      hour_logit_[h] = o.hour_effect * std::sin(2 * kPi * (h + phase) / 24);
    }
    for (size_t d = 0; d < kDevices.size(); ++d) {
      device_logit_[d] = o.device_effect * NormalFromHash(EntityHash(o.seed, kDeviceEffect, d));
    }
  }

  uint64_t DrawUser(Random& rng) const { return users_.Sample(rng) - 1; }
  uint64_t Group(uint64_t user) const {
    return EntityHash(o_.seed, kUserGroup, user) % o_.num_user_groups;
  }
  uint32_t Category(uint64_t item) const { return static_cast<uint32_t>(item % o_.num_categories); }
  uint32_t Topic(uint32_t category) const { return category % o_.num_topics; }
  uint32_t UsualDevice(uint64_t user) const {
    return EntityHash(o_.seed, kUserDevice, user) % kDevices.size();
  }

  // With probability `focus` an item of a topic `user` likes (a uniform
  // category of that topic, then Zipf popularity within the category), else
  // an item by global popularity. Item ids are popularity ranks in both, since
  // the items of category c are c, c + C, c + 2C, ...
  uint64_t DrawItem(uint64_t user, double focus, Random& rng) const {
    if (rng.Uniform() >= focus) return items_.Sample(rng) - 1;
    const uint32_t topic = static_cast<uint32_t>(
        EntityHash(o_.seed, kUserTopic, user, rng.Below(o_.topics_per_user)) % o_.num_topics);
    const uint32_t categories_in_topic = (o_.num_categories - 1 - topic) / o_.num_topics + 1;
    const uint64_t category = topic + uint64_t{o_.num_topics} * rng.Below(categories_in_topic);
    for (;;) {  // rank 1 always exists (category < num_categories <= num_items)
      const uint64_t item = (items_in_category_.Sample(rng) - 1) * o_.num_categories + category;
      if (item < o_.num_items) return item;
    }
  }

  // The formula atop gen_data.h. `hist_categories` holds the history's
  // categories; only their count of matches with `category` matters.
  double Logit(uint64_t user, uint64_t group, uint64_t item, uint32_t category,
               const uint32_t* hist_categories, size_t history, uint32_t hour, uint32_t device,
               double dense0, double dense1) const {
    const uint32_t topic = Topic(category);
    uint32_t same_topic = 0, same_category = 0;
    for (size_t j = 0; j < history; ++j) {
      same_topic += Topic(hist_categories[j]) == topic;
      same_category += hist_categories[j] == category;
    }
    const double cap = o_.interest_cap;
    double logit = o_.base_logit;
    logit += o_.user_effect * NormalFromHash(EntityHash(o_.seed, kUserEffect, user));
    logit += o_.group_effect * NormalFromHash(EntityHash(o_.seed, kGroupEffect, group));
    logit += o_.item_effect * NormalFromHash(EntityHash(o_.seed, kItemEffect, item));
    logit += o_.category_effect * NormalFromHash(EntityHash(o_.seed, kCategoryEffect, category));
    logit += hour_logit_[hour] + device_logit_[device];
    logit += o_.dense_weight * dense0;
    logit += o_.dense_weight * (1 - 8 * (dense1 - 0.5) * (dense1 - 0.5));
    logit += o_.interest_strength * std::min<double>(same_topic, cap) / cap;
    logit += o_.category_match_strength * std::min<double>(same_category, cap) / cap;
    return logit;
  }

 private:
  const GenDataOptions& o_;
  ZipfSampler users_;
  ZipfSampler items_;
  ZipfSampler items_in_category_;  // ranks within one category
  double hour_logit_[24];
  double device_logit_[kDevices.size()];
};

// Dense values are rounded to what the file shows before p is computed, so
// that ClickProbability recomputes p bit for bit from the text.
double RoundToPrinted(double x) {
  const double r = std::round(x * 1e4) / 1e4;
  return r == 0 ? 0.0 : r;  // no "-0.0000"
}

void AppendUint(uint64_t v, std::string* out) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  out->append(buf, end);
}

void AppendFixed4(double v, std::string* out) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::fixed, 4);
  out->append(buf, end);
}

void ClickModel::Generate(const Part& part, DistinctIds* distinct,
                          const std::atomic<bool>& cancelled, PartResult* result) const {
  const GenDataOptions& o = o_;
  const ClickModel& model = *this;
  Random rng(EntityHash(o.seed, kStream, part.test ? 2 : 1, part.index));
  if (part.test) {
    result->p.reserve(part.rows);
    result->labels.reserve(part.rows);
  }
  std::vector<uint64_t> hist_items(o.max_history);
  std::vector<uint32_t> hist_cats(o.max_history);
  const uint32_t history_span = o.max_history - o.min_history + 1;

  WritePart(o, part, kFlushBytes, cancelled, result, [&](std::string* out) {
    std::string& buf = *out;
    const uint64_t user = model.DrawUser(rng);
    const uint64_t group = model.Group(user);
    const size_t history = o.min_history + rng.Below(history_span);
    for (size_t j = 0; j < history; ++j) {
      hist_items[j] = model.DrawItem(user, o.history_focus, rng);
      hist_cats[j] = model.Category(hist_items[j]);
    }
    const uint64_t item = model.DrawItem(user, o.candidate_focus, rng);
    const uint32_t category = model.Category(item);
    const uint32_t hour = static_cast<uint32_t>(rng.Below(24));
    const uint32_t device = rng.Uniform() < kUsualDeviceShare
                                ? model.UsualDevice(user)
                                : static_cast<uint32_t>(rng.Below(kDevices.size()));
    const double dense0 = RoundToPrinted(rng.Normal());
    const double dense1 = RoundToPrinted(rng.Uniform());
    const float p = Probability(model.Logit(user, group, item, category, hist_cats.data(), history,
                                            hour, device, dense0, dense1));
    const bool label = rng.Uniform() < p;

    result->Add(p, label, history, part.test);
    if (distinct != nullptr) {
      distinct->users.Set(user);
      distinct->items.Set(item);
      distinct->categories.Set(category);
      for (size_t j = 0; j < history; ++j) {
        distinct->items.Set(hist_items[j]);
        distinct->categories.Set(hist_cats[j]);
      }
    }

    buf.push_back(label ? '1' : '0');
    buf.push_back('\t');
    AppendUint(user, &buf);
    buf.push_back('\t');
    AppendUint(group, &buf);
    buf.push_back('\t');
    AppendUint(item, &buf);
    buf.push_back('\t');
    AppendUint(category, &buf);
    buf.push_back('\t');
    for (size_t j = 0; j < history; ++j) {
      if (j > 0) buf.push_back(',');
      AppendUint(hist_items[j], &buf);
    }
    buf.push_back('\t');
    for (size_t j = 0; j < history; ++j) {
      if (j > 0) buf.push_back(',');
      AppendUint(hist_cats[j], &buf);
    }
    buf.push_back('\t');
    AppendUint(hour, &buf);
    buf.push_back('\t');
    buf.append(kDevices[device]);
    buf.push_back('\t');
    AppendFixed4(dense0, &buf);
    buf.push_back('\t');
    AppendFixed4(dense1, &buf);
    buf.push_back('\n');
  });
}

}  // namespace

std::unique_ptr<PartGenerator> MakeClickLogGenerator(const GenDataOptions& o) {
  return std::make_unique<ClickModel>(o);
}

absl::StatusOr<float> ClickLogClickProbability(const GenDataOptions& o, std::string_view line) {
  absl::Status st;
  const std::vector<absl::string_view> f = absl::StrSplit(Av(line), '\t');
  if (f.size() != kGenDataColumns.size()) {
    return absl::InvalidArgumentError(absl::StrCat("expected ", kGenDataColumns.size(),
                                                   " tab-separated columns, got ", f.size()));
  }
  auto bad = [](size_t column, std::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("column ", Av(kGenDataColumns[column]), ": ", Av(why)));
  };
  auto id = [&](size_t column, uint64_t limit, uint64_t* out) -> absl::Status {
    if (!absl::SimpleAtoi(f[column], out) || *out >= limit) {
      return bad(column, absl::StrCat("'", f[column], "' is not an id below ", limit));
    }
    return absl::OkStatus();
  };
  const ClickModel model(o);
  uint64_t user, group, item, category, hour;
  if (st = id(1, o.num_users, &user); !st.ok()) return st;
  if (st = id(2, o.num_user_groups, &group); !st.ok()) return st;
  if (st = id(3, o.num_items, &item); !st.ok()) return st;
  if (st = id(4, o.num_categories, &category); !st.ok()) return st;
  if (st = id(7, 24, &hour); !st.ok()) return st;
  // Derived columns must agree, or these are not the file's options.
  if (group != model.Group(user)) {
    return bad(2, "is not this user's group under these options (another seed?)");
  }
  if (category != model.Category(item)) return bad(4, "is not item_id % num_categories");
  std::vector<uint32_t> hist_cats;
  if (!f[6].empty()) {
    for (absl::string_view c : absl::StrSplit(f[6], ',')) {
      uint32_t v;
      if (!absl::SimpleAtoi(c, &v) || v >= o.num_categories) {
        return bad(6, absl::StrCat("'", c, "' is not a category below ", o.num_categories));
      }
      hist_cats.push_back(v);
    }
  }
  const std::string_view device_name(f[8].data(), f[8].size());
  const auto device = std::find(kDevices.begin(), kDevices.end(), device_name);
  if (device == kDevices.end()) return bad(8, absl::StrCat("unknown device '", f[8], "'"));
  double dense[2];
  for (int k = 0; k < 2; ++k) {
    const absl::string_view text = f[9 + k];
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), dense[k]);
    if (ec != std::errc() || end != text.data() + text.size()) {
      return bad(9 + k, absl::StrCat("'", text, "' is not a number"));
    }
  }
  return Probability(model.Logit(user, group, item, static_cast<uint32_t>(category),
                                 hist_cats.data(), hist_cats.size(), static_cast<uint32_t>(hour),
                                 static_cast<uint32_t>(device - kDevices.begin()), dense[0],
                                 dense[1]));
}

}  // namespace ember::datasets::internal
