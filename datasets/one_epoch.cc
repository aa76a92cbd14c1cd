// gen-data's mode one_epoch: a log whose many rare ids and id crosses let a
// second pass memorise the training labels, described in the comment atop
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

constexpr size_t kFlushBytes = size_t{1} << 20;
// The separator of the two ids in a cross column ("user_item" = "17_4242").
constexpr char kCrossSeparator = '_';

// Mode one_epoch's click model (atop gen_data.h). Immutable; keeps a
// reference to `o`, which must be valid options and outlive the model.
class OneEpochModel : public PartGenerator {
 public:
  // Generates and writes one part (PartGenerator).
  void Generate(const Part& part, DistinctIds* distinct, const std::atomic<bool>& cancelled,
                PartResult* result) const override;

  explicit OneEpochModel(const GenDataOptions& o)
      : o_(o), users_(o.num_users, o.user_zipf), items_(o.num_items, o.item_zipf) {
    const double phase = 24 * UnitFromHash(EntityHash(o.seed, kHourPhase, 0));
    for (int h = 0; h < 24; ++h) {
      hour_logit_[h] = o.hour_effect * std::sin(2 * kPi * (h + phase) / 24);
    }
  }

  uint64_t DrawUser(Random& rng) const { return users_.Sample(rng) - 1; }
  uint64_t DrawItem(Random& rng) const { return items_.Sample(rng) - 1; }
  uint64_t Group(uint64_t user) const {
    return EntityHash(o_.seed, kUserGroup, user) % o_.num_user_groups;
  }
  uint32_t Category(uint64_t item) const { return static_cast<uint32_t>(item % o_.num_categories); }

  double Logit(uint64_t user, uint64_t group, uint64_t item, uint32_t category,
               uint32_t hour) const {
    double logit = o_.base_logit;
    logit += o_.user_effect * NormalFromHash(EntityHash(o_.seed, kUserEffect, user));
    logit += o_.group_effect * NormalFromHash(EntityHash(o_.seed, kGroupEffect, group));
    logit += o_.item_effect * NormalFromHash(EntityHash(o_.seed, kItemEffect, item));
    logit += o_.category_effect * NormalFromHash(EntityHash(o_.seed, kCategoryEffect, category));
    logit += hour_logit_[hour];
    logit += o_.cross_effect *
             NormalFromHash(EntityHash(o_.seed, kGroupCategoryEffect, group, category));
    return logit;
  }

 private:
  const GenDataOptions& o_;
  ZipfSampler users_;
  ZipfSampler items_;
  double hour_logit_[24];
};

void AppendUint(uint64_t v, std::string* out) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  out->append(buf, end);
}

void AppendCross(uint64_t a, uint64_t b, std::string* out) {
  AppendUint(a, out);
  out->push_back(kCrossSeparator);
  AppendUint(b, out);
}

void OneEpochModel::Generate(const Part& part, DistinctIds* distinct,
                             const std::atomic<bool>& cancelled, PartResult* result) const {
  const GenDataOptions& o = o_;
  const OneEpochModel& model = *this;
  Random rng(EntityHash(o.seed, kOneEpochStream, part.test ? 2 : 1, part.index));
  if (part.test) {
    result->p.reserve(part.rows);
    result->labels.reserve(part.rows);
  }
  WritePart(o, part, kFlushBytes, cancelled, result, [&](std::string* out) {
    std::string& buf = *out;
    const uint64_t user = model.DrawUser(rng);
    const uint64_t group = model.Group(user);
    const uint64_t item = model.DrawItem(rng);
    const uint32_t category = model.Category(item);
    const uint32_t hour = static_cast<uint32_t>(rng.Below(24));
    const float p = Probability(model.Logit(user, group, item, category, hour));
    const bool label = rng.Uniform() < p;

    result->Add(p, label, 0, part.test);
    if (distinct != nullptr) {
      distinct->users.Set(user);
      distinct->items.Set(item);
      distinct->categories.Set(category);
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
    AppendUint(hour, &buf);
    buf.push_back('\t');
    AppendCross(group, category, &buf);
    buf.push_back('\t');
    AppendCross(user, item, &buf);
    buf.push_back('\t');
    AppendCross(user, category, &buf);
    buf.push_back('\n');
  });
}

}  // namespace

std::unique_ptr<PartGenerator> MakeOneEpochGenerator(const GenDataOptions& o) {
  return std::make_unique<OneEpochModel>(o);
}

absl::StatusOr<float> OneEpochClickProbability(const GenDataOptions& o, std::string_view line) {
  const std::vector<absl::string_view> f = absl::StrSplit(Av(line), '\t');
  const auto& columns = kGenDataOneEpochColumns;
  if (f.size() != columns.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected ", columns.size(), " tab-separated columns, got ", f.size()));
  }
  auto bad = [&](size_t column, std::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("column ", Av(columns[column]), ": ", Av(why)));
  };
  auto id = [&](size_t column, uint64_t limit, uint64_t* out) -> absl::Status {
    if (!absl::SimpleAtoi(f[column], out) || *out >= limit) {
      return bad(column, absl::StrCat("'", f[column], "' is not an id below ", limit));
    }
    return absl::OkStatus();
  };
  const OneEpochModel model(o);
  uint64_t user, group, item, category, hour;
  absl::Status st;
  if (st = id(1, o.num_users, &user); !st.ok()) return st;
  if (st = id(2, o.num_user_groups, &group); !st.ok()) return st;
  if (st = id(3, o.num_items, &item); !st.ok()) return st;
  if (st = id(4, o.num_categories, &category); !st.ok()) return st;
  if (st = id(5, 24, &hour); !st.ok()) return st;
  // Derived columns must agree, or these are not the file's options.
  if (group != model.Group(user)) {
    return bad(2, "is not this user's group under these options (another seed?)");
  }
  if (category != model.Category(item)) return bad(4, "is not item_id % num_categories");
  const std::pair<uint64_t, uint64_t> crosses[] = {
      {group, category}, {user, item}, {user, category}};
  for (size_t k = 0; k < 3; ++k) {
    const std::string want =
        absl::StrCat(crosses[k].first, std::string(1, kCrossSeparator), crosses[k].second);
    if (f[6 + k] != want) return bad(6 + k, absl::StrCat("'", f[6 + k], "' is not '", want, "'"));
  }
  return Probability(
      model.Logit(user, group, item, static_cast<uint32_t>(category), static_cast<uint32_t>(hour)));
}

}  // namespace ember::datasets::internal
