// The driver of `ember gen-data`: options by name and their checks, the
// split into parts run on a thread pool (one generator per mode:
// click_log.cc, long_interest.cc, one_epoch.cc), and meta.txt. The click models are
// described atop gen_data.h.
#include "datasets/gen_data.h"

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <memory>
#include <thread>
#include <variant>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "datasets/data_dir.h"
#include "datasets/gen_data_internal.h"
#include "models/metrics.h"

namespace ember::datasets {
namespace {

namespace fs = std::filesystem;
using internal::ClickLogClickProbability;
using internal::DistinctIds;
using internal::IsLongInterest;
using internal::IsOneEpoch;
using internal::kMaxInterests;
using internal::kMaxLongHistory;
using internal::LongInterestClickProbability;
using internal::MakeClickLogGenerator;
using internal::MakeLongInterestGenerator;
using internal::MakeOneEpochGenerator;
using internal::OneEpochClickProbability;
using internal::Part;
using internal::PartGenerator;
using internal::PartResult;

constexpr uint64_t kMaxEntities = uint64_t{1} << 40;
constexpr uint64_t kMaxRows = uint64_t{1} << 40;
constexpr uint64_t kMaxDistinctBits = uint64_t{1} << 35;
constexpr std::string_view kFormat = "ember-gen-data-1";

// Shortest text that reads back as the same double ("nan" for NaN).
std::string FormatDouble(double v) {
  if (std::isnan(v)) return "nan";
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, end);
}

std::vector<Part> PlanParts(const GenDataOptions& o) {
  std::vector<Part> parts;
  const char* ext = o.gzip ? ".tsv.gz" : ".tsv";
  uint64_t first_row = 0;
  auto add = [&](bool test, uint64_t rows, uint32_t files) {
    if (rows == 0) return;
    for (uint32_t i = 0; i < files; ++i) {
      Part p;
      p.test = test;
      p.index = i;
      p.rows = rows / files + (i < rows % files ? 1 : 0);
      p.first_row = first_row;
      first_row += p.rows;
      char name[32];
      std::snprintf(name, sizeof(name), "part-%05u%s", i, ext);
      p.path = (fs::path(o.out_dir) / (test ? "test" : "train") / name).string();
      parts.push_back(std::move(p));
    }
  };
  add(false, o.train_rows, o.train_files);
  add(true, o.test_rows, o.test_files);
  return parts;
}

// ---------------------------------------------------------------------------
// Options by name.

using Member = std::variant<std::string GenDataOptions::*, uint64_t GenDataOptions::*,
                            uint32_t GenDataOptions::*, int GenDataOptions::*,
                            double GenDataOptions::*, bool GenDataOptions::*>;
// Which modes an option applies to, one bit per mode: GenDataOptionValues
// (so meta.txt) lists only those of the options' mode, and the default mode's
// list is the one it had before the other modes existed.
enum Applies : uint8_t {
  kDefault = 1,
  kLong = 2,
  kOneEpoch = 4,
  kNotLong = kDefault | kOneEpoch,
  kNotOneEpoch = kDefault | kLong,
  kNotDefault = kLong | kOneEpoch,
  kAll = 7,
};
struct Field {
  std::string_view name;
  Member member;
  Applies applies = kAll;
};

Applies ModeBit(const GenDataOptions& o) {
  return IsLongInterest(o) ? kLong : IsOneEpoch(o) ? kOneEpoch : kDefault;
}

// The defaults of `mode`, which must be a valid mode.
GenDataOptions ModeDefaults(std::string_view mode) {
  if (mode == kGenDataLongInterestMode) return LongInterestDefaults();
  if (mode == kGenDataOneEpochMode) return OneEpochDefaults();
  return GenDataOptions();
}

bool IsMode(std::string_view mode) {
  return mode == kGenDataDefaultMode || mode == kGenDataLongInterestMode ||
         mode == kGenDataOneEpochMode;
}

constexpr std::string_view kModes = "'default', 'long_interest' or 'one_epoch'";

// Declaration order of GenDataOptions.
const std::vector<Field>& Fields() {
  using O = GenDataOptions;
  static const std::vector<Field>* fields = new std::vector<Field>{
      {"mode", &O::mode, kNotDefault},
      {"out_dir", &O::out_dir},
      {"seed", &O::seed},
      {"train_rows", &O::train_rows},
      {"test_rows", &O::test_rows},
      {"train_files", &O::train_files},
      {"test_files", &O::test_files},
      {"threads", &O::threads},
      {"gzip", &O::gzip},
      {"gzip_level", &O::gzip_level},
      {"overwrite", &O::overwrite},
      {"count_distinct", &O::count_distinct},
      {"num_users", &O::num_users, kNotLong},
      {"num_user_groups", &O::num_user_groups, kNotLong},
      {"num_items", &O::num_items},
      {"num_categories", &O::num_categories},
      {"num_topics", &O::num_topics, kDefault},
      {"user_zipf", &O::user_zipf, kNotLong},
      {"item_zipf", &O::item_zipf},
      {"topics_per_user", &O::topics_per_user, kDefault},
      {"min_history", &O::min_history, kDefault},
      {"max_history", &O::max_history, kDefault},
      {"history_focus", &O::history_focus, kDefault},
      {"candidate_focus", &O::candidate_focus, kDefault},
      {"base_logit", &O::base_logit},
      {"user_effect", &O::user_effect, kNotLong},
      {"group_effect", &O::group_effect, kNotLong},
      {"item_effect", &O::item_effect},
      {"category_effect", &O::category_effect},
      {"hour_effect", &O::hour_effect, kNotLong},
      {"device_effect", &O::device_effect, kDefault},
      {"dense_weight", &O::dense_weight, kDefault},
      {"interest_strength", &O::interest_strength, kNotOneEpoch},
      {"category_match_strength", &O::category_match_strength, kDefault},
      {"interest_cap", &O::interest_cap, kNotOneEpoch},
      {"long_history", &O::long_history, kLong},
      {"recent_window", &O::recent_window, kLong},
      {"recent_interests", &O::recent_interests, kLong},
      {"deep_interests", &O::deep_interests, kLong},
      {"deep_min_items", &O::deep_min_items, kLong},
      {"deep_max_items", &O::deep_max_items, kLong},
      {"deep_share", &O::deep_share, kLong},
      {"cross_effect", &O::cross_effect, kOneEpoch},
  };
  return *fields;
}

absl::Status Bad(std::string_view option, std::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("gen-data option ", Av(option), ": ", Av(why)));
}

template <typename T>
absl::Status InRange(std::string_view option, T value, T lo, T hi, std::string_view hi_name = "") {
  if (value >= lo && value <= hi) return absl::OkStatus();  // false for NaN
  auto text = [](T v) {
    if constexpr (std::is_floating_point_v<T>) {
      return FormatDouble(v);
    } else {
      return absl::StrCat(v);
    }
  };
  return Bad(option, absl::StrCat("must be in [", text(lo), ", ", Av(hi_name),
                                  hi_name.empty() ? "" : " = ", text(hi), "], got ", text(value)));
}

}  // namespace

// ---------------------------------------------------------------------------
// Options.

absl::Status ValidateGenDataOptions(const GenDataOptions& o) {
  if (!IsMode(o.mode))
    return Bad("mode", absl::StrCat("must be ", Av(kModes), ", got '", o.mode, "'"));
  if (o.out_dir.empty()) return Bad("out_dir", "must name the output directory");
  // Each mode skips the checks of the options it ignores.
  const bool li = IsLongInterest(o);
  const bool oe = IsOneEpoch(o);
  const bool def = !li && !oe;
  absl::Status st;
  auto check = [&st](absl::Status s) {
    if (st.ok()) st = std::move(s);
  };
  check(InRange<uint64_t>("train_rows", o.train_rows, 1, kMaxRows));
  check(InRange<uint64_t>("test_rows", o.test_rows, 0, kMaxRows));
  check(InRange<uint64_t>("train_files", o.train_files, 1, std::min<uint64_t>(100000, o.train_rows),
                          o.train_rows < 100000 ? "train_rows" : ""));
  if (o.test_rows > 0) {
    check(InRange<uint64_t>("test_files", o.test_files, 1, std::min<uint64_t>(100000, o.test_rows),
                            o.test_rows < 100000 ? "test_rows" : ""));
  }
  check(InRange<uint32_t>("threads", o.threads, 0, 1024));
  check(InRange<int>("gzip_level", o.gzip_level, 1, 9));
  if (!li) {
    check(InRange<uint64_t>("num_users", o.num_users, 1, kMaxEntities));
    check(InRange<uint32_t>("num_user_groups", o.num_user_groups, 1,
                            std::numeric_limits<uint32_t>::max()));
  }
  check(InRange<uint64_t>("num_items", o.num_items, 1, kMaxEntities));
  check(InRange<uint64_t>("num_categories", o.num_categories, 1,
                          std::min<uint64_t>(uint64_t{1} << 24, o.num_items),
                          o.num_items < (uint64_t{1} << 24) ? "num_items" : ""));
  if (def) {
    check(InRange<uint32_t>("num_topics", o.num_topics, 1, std::max<uint32_t>(o.num_categories, 1),
                            "num_categories"));
  }
  if (!li) check(InRange<double>("user_zipf", o.user_zipf, 0, 10));
  check(InRange<double>("item_zipf", o.item_zipf, 0, 10));
  if (def) {
    check(InRange<uint32_t>("topics_per_user", o.topics_per_user, 1, 64));
    check(InRange<uint32_t>("max_history", o.max_history, 0, 100000));
    check(InRange<uint32_t>("min_history", o.min_history, 0, o.max_history, "max_history"));
    check(InRange<double>("history_focus", o.history_focus, 0, 1));
    check(InRange<double>("candidate_focus", o.candidate_focus, 0, 1));
  }
  check(InRange<double>("base_logit", o.base_logit, -30, 30));
  if (!li) {
    check(InRange<double>("user_effect", o.user_effect, 0, 10));
    check(InRange<double>("group_effect", o.group_effect, 0, 10));
  }
  check(InRange<double>("item_effect", o.item_effect, 0, 10));
  check(InRange<double>("category_effect", o.category_effect, 0, 10));
  if (!li) check(InRange<double>("hour_effect", o.hour_effect, 0, 10));
  if (def) {
    check(InRange<double>("device_effect", o.device_effect, 0, 10));
    check(InRange<double>("dense_weight", o.dense_weight, -10, 10));
  }
  if (!oe) check(InRange<double>("interest_strength", o.interest_strength, -20, 20));
  if (def) {
    check(InRange<double>("category_match_strength", o.category_match_strength, -20, 20));
  }
  if (!oe) check(InRange<uint32_t>("interest_cap", o.interest_cap, 1, 100000));
  if (oe) check(InRange<double>("cross_effect", o.cross_effect, 0, 10));
  if (li) {
    check(InRange<uint32_t>("recent_interests", o.recent_interests, 1, kMaxInterests));
    if (st.ok()) {  // needs valid num_categories and recent_interests
      // At least one category must stay for the candidates that miss.
      const uint32_t room = o.num_categories > o.recent_interests
                                ? static_cast<uint32_t>(o.num_categories - o.recent_interests - 1)
                                : 0;
      const bool by_categories = room < kMaxInterests;
      check(InRange<uint32_t>("deep_interests", o.deep_interests, 1,
                              by_categories ? room : kMaxInterests,
                              by_categories ? "num_categories - recent_interests - 1" : ""));
    }
    check(InRange<uint32_t>("deep_max_items", o.deep_max_items, 1, kMaxLongHistory));
    check(InRange<uint32_t>("deep_min_items", o.deep_min_items, 1, o.deep_max_items,
                            "deep_max_items"));
    check(InRange<double>("deep_share", o.deep_share, 0, 1));
    check(InRange<uint32_t>("recent_window", o.recent_window, 1, kMaxLongHistory - 1));
    if (st.ok()) {
      // Deep items fill at most half the old part, so their random
      // positions are found in a few tries.
      const uint64_t least = o.recent_window + uint64_t{2} * o.deep_interests * o.deep_max_items;
      if (least > kMaxLongHistory) {
        return Bad("long_history",
                   absl::StrCat("recent_window + 2 * deep_interests * deep_max_items = ", least,
                                " exceed the maximum history of ", kMaxLongHistory));
      }
      check(InRange<uint64_t>("long_history", o.long_history, least, kMaxLongHistory,
                              "recent_window + 2 * deep_interests * deep_max_items"));
    }
  }
  if (!st.ok() || !o.count_distinct) return st;
  if (li) {
    // Validated ranges: no overflow.
    if (o.train_rows + o.test_rows + o.num_items + o.num_categories > kMaxDistinctBits) {
      return Bad("count_distinct",
                 "train_rows + test_rows + num_items + num_categories exceed 2^35 bitmap bits; "
                 "set it to false");
    }
  } else if (o.num_users + o.num_items + o.num_categories > kMaxDistinctBits) {
    return Bad("count_distinct",
               "num_users + num_items + num_categories exceed 2^35 bitmap bits; set it to false");
  }
  return st;
}

GenDataOptions LongInterestDefaults() {
  GenDataOptions o;
  o.mode = std::string(kGenDataLongInterestMode);
  o.train_rows = 200000;
  o.test_rows = 20000;
  o.num_items = 20000;
  o.num_categories = 200;
  o.interest_strength = 2.5;
  return o;
}

GenDataOptions OneEpochDefaults() {
  GenDataOptions o;
  o.mode = std::string(kGenDataOneEpochMode);
  o.num_users = 200000;
  o.user_zipf = 0.5;
  o.num_items = 100000;
  o.item_zipf = 0.8;
  o.base_logit = -1.5;
  o.user_effect = 0.5;
  o.group_effect = 0.3;
  o.item_effect = 0.3;
  o.category_effect = 0.3;
  o.hour_effect = 0.3;
  o.cross_effect = 0.8;
  return o;
}

absl::Status SetGenDataOption(std::string_view name, std::string_view value,
                              GenDataOptions* options) {
  if (name == "mode") {
    if (!IsMode(value)) {
      return Bad(name, absl::StrCat("cannot parse '", Av(value), "': must be ", Av(kModes)));
    }
    // Options still at the old mode's default take the new mode's.
    const GenDataOptions from =
        ModeDefaults(IsMode(options->mode) ? options->mode : kGenDataDefaultMode);
    const GenDataOptions to = ModeDefaults(value);
    for (const Field& f : Fields()) {
      if (f.name == "mode" || f.name == "out_dir") continue;
      std::visit(
          [&](auto member) {
            if (options->*member == from.*member) options->*member = to.*member;
          },
          f.member);
    }
    options->mode = std::string(value);
    return absl::OkStatus();
  }
  for (const Field& f : Fields()) {
    if (f.name != name) continue;
    const std::string v(value);
    bool ok = true;
    std::visit(
        [&](auto member) {
          using T = std::remove_reference_t<decltype(options->*member)>;
          if constexpr (std::is_same_v<T, std::string>) {
            options->*member = v;
          } else if constexpr (std::is_same_v<T, bool>) {
            bool b;
            ok = absl::SimpleAtob(v, &b);
            if (ok) options->*member = b;
          } else if constexpr (std::is_same_v<T, double>) {
            double d;
            ok = absl::SimpleAtod(v, &d);
            if (ok) options->*member = d;
          } else {
            T x;
            ok = absl::SimpleAtoi(v, &x);
            if (ok) options->*member = x;
          }
        },
        f.member);
    if (!ok) return Bad(name, absl::StrCat("cannot parse '", Av(value), "'"));
    return absl::OkStatus();
  }
  return Bad(name, "no such option");
}

std::vector<std::pair<std::string, std::string>> GenDataOptionValues(const GenDataOptions& o) {
  std::vector<std::pair<std::string, std::string>> out;
  const Applies mode = ModeBit(o);
  for (const Field& f : Fields()) {
    if ((f.applies & mode) == 0) continue;
    std::string text = std::visit(
        [&](auto member) -> std::string {
          using T = std::remove_cvref_t<decltype(o.*member)>;
          if constexpr (std::is_same_v<T, std::string>) {
            return o.*member;
          } else if constexpr (std::is_same_v<T, bool>) {
            return o.*member ? "true" : "false";
          } else if constexpr (std::is_same_v<T, double>) {
            return FormatDouble(o.*member);
          } else {
            return absl::StrCat(o.*member);
          }
        },
        f.member);
    out.emplace_back(std::string(f.name), std::move(text));
  }
  return out;
}

namespace {

absl::Status WriteGenDataMeta(const GenDataOptions& o, const GenDataSummary& s) {
  std::vector<std::pair<std::string, std::string>> keys;
  auto line = [&](std::string_view k, const std::string& v) { keys.emplace_back(k, v); };
  line("format", std::string(kFormat));
  std::vector<absl::string_view> columns;
  if (IsLongInterest(o)) {
    for (std::string_view c : kGenDataLongInterestColumns) columns.push_back(Av(c));
  } else if (IsOneEpoch(o)) {
    for (std::string_view c : kGenDataOneEpochColumns) columns.push_back(Av(c));
  } else {
    for (std::string_view c : kGenDataColumns) columns.push_back(Av(c));
  }
  line("columns", absl::StrJoin(columns, ","));
  line("train_rows", absl::StrCat(s.train_rows));
  line("test_rows", absl::StrCat(s.test_rows));
  line("train_positives", absl::StrCat(s.train_positives));
  line("test_positives", absl::StrCat(s.test_positives));
  line("positive_rate", FormatDouble(s.positive_rate));
  line("mean_click_probability", FormatDouble(s.mean_click_probability));
  line("oracle_auc", FormatDouble(s.oracle_auc));
  line("oracle_logloss", FormatDouble(s.oracle_logloss));
  if (IsLongInterest(o)) {
    line("recent_only_oracle_auc", FormatDouble(s.recent_only_oracle_auc));
    line("recent_only_oracle_logloss", FormatDouble(s.recent_only_oracle_logloss));
  }
  line("mean_history", FormatDouble(s.mean_history));
  line("distinct_users", absl::StrCat(s.distinct.users));
  line("distinct_items", absl::StrCat(s.distinct.items));
  line("distinct_categories", absl::StrCat(s.distinct.categories));
  line("bytes_written", absl::StrCat(s.bytes_written));
  // Then every option (seed included) but the two already written above.
  for (const auto& [k, v] : GenDataOptionValues(o)) {
    if (k != "train_rows" && k != "test_rows") line(k, v);
  }
  return WriteMeta(o.out_dir, MetaSource(DataTool::kGenData), keys);
}

}  // namespace

// ---------------------------------------------------------------------------
// Generation.

absl::Status GenerateData(const GenDataOptions& options, GenDataSummary* summary) {
  const auto start = std::chrono::steady_clock::now();
  absl::Status st = ValidateGenDataOptions(options);
  if (!st.ok()) return st;
  std::vector<std::string> created;
  std::vector<std::string_view> splits = {"train"};
  if (options.test_rows > 0) splits.push_back("test");
  st = PrepareOutputDir(options.out_dir, DataTool::kGenData, options.overwrite, splits, &created);
  if (!st.ok()) {
    RemoveCreated({}, created);
    return st;
  }
  const std::vector<Part> parts = PlanParts(options);
  // On failure, remove what this run wrote: PrepareOutputDir left none of
  // these paths (or removed the old set's), so every one is ours.
  auto fail = [&](absl::Status status) {
    std::vector<std::string> files = {(fs::path(options.out_dir) / kMetaFile).string() + ".tmp"};
    for (const Part& p : parts) files.push_back(p.path);
    RemoveCreated(files, created);
    return status;
  };

  const bool li = IsLongInterest(options);
  const std::unique_ptr<PartGenerator> generator = li ? MakeLongInterestGenerator(options)
                                                   : IsOneEpoch(options)
                                                       ? MakeOneEpochGenerator(options)
                                                       : MakeClickLogGenerator(options);
  std::unique_ptr<DistinctIds> distinct;
  if (options.count_distinct) distinct = std::make_unique<DistinctIds>(options);

  std::vector<PartResult> results(parts.size());
  std::atomic<size_t> next{0};
  std::atomic<bool> cancelled{false};
  auto work = [&] {
    for (size_t i; (i = next.fetch_add(1)) < parts.size();) {
      generator->Generate(parts[i], distinct.get(), cancelled, &results[i]);
      if (!results[i].status.ok()) cancelled = true;
    }
  };
  size_t threads =
      options.threads != 0 ? options.threads : std::max(1u, std::thread::hardware_concurrency());
  threads = std::min(threads, parts.size());
  std::vector<std::thread> pool;
  for (size_t t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (std::thread& t : pool) t.join();

  // The first real failure in part order (later parts may only be cancelled).
  for (const PartResult& r : results) {
    if (!r.status.ok() && !absl::IsCancelled(r.status)) return fail(r.status);
  }

  GenDataSummary s;
  std::vector<float> test_p, test_labels, test_p_recent;
  test_p.reserve(options.test_rows);
  test_labels.reserve(options.test_rows);
  if (li) test_p_recent.reserve(options.test_rows);
  double sum_p = 0;
  uint64_t history_items = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    const PartResult& r = results[i];
    (parts[i].test ? s.test_rows : s.train_rows) += r.rows;
    (parts[i].test ? s.test_positives : s.train_positives) += r.positives;
    sum_p += r.sum_p;
    history_items += r.history_items;
    s.bytes_written += r.bytes;
    s.files.push_back(parts[i].path);
    test_p.insert(test_p.end(), r.p.begin(), r.p.end());
    test_labels.insert(test_labels.end(), r.labels.begin(), r.labels.end());
    test_p_recent.insert(test_p_recent.end(), r.p_recent.begin(), r.p_recent.end());
  }
  results.clear();
  const double rows = static_cast<double>(s.train_rows + s.test_rows);
  s.positive_rate = static_cast<double>(s.train_positives + s.test_positives) / rows;
  s.mean_click_probability = sum_p / rows;
  s.mean_history = static_cast<double>(history_items) / rows;
  s.oracle_auc = models::ExactAuc(test_p, test_labels);
  s.oracle_logloss = models::LogLoss(test_p, test_labels);
  s.recent_only_oracle_auc = s.recent_only_oracle_logloss = std::nan("");
  if (li) {
    s.recent_only_oracle_auc = models::ExactAuc(test_p_recent, test_labels);
    s.recent_only_oracle_logloss = models::LogLoss(test_p_recent, test_labels);
  }
  if (distinct != nullptr) {
    s.distinct.users = distinct->users.Count();
    s.distinct.items = distinct->items.Count();
    s.distinct.categories = distinct->categories.Count();
  }
  st = WriteGenDataMeta(options, s);
  if (!st.ok()) return fail(st);
  s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (summary != nullptr) *summary = std::move(s);
  return absl::OkStatus();
}

absl::StatusOr<float> ClickProbability(const GenDataOptions& o, std::string_view line) {
  absl::Status st = ValidateGenDataOptions(o);
  if (!st.ok()) return st;
  if (IsLongInterest(o)) return LongInterestClickProbability(o, line);
  if (IsOneEpoch(o)) return OneEpochClickProbability(o, line);
  return ClickLogClickProbability(o, line);
}

}  // namespace ember::datasets
