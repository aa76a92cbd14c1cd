// The synthetic click-log generator behind `ember gen-data`; the click model
// is described atop gen_data.h.
#include "launch/gen_data.h"

#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <thread>
#include <variant>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "glog/logging.h"
#include "models/metrics.h"
#include "ps/keys.h"

namespace ember::launch {
namespace {

namespace fs = std::filesystem;

// Debian's absl has its own string_view type; this is the bridge.
absl::string_view Av(std::string_view s) { return absl::string_view(s.data(), s.size()); }

constexpr double kPi = 3.14159265358979323846;
constexpr uint64_t kMaxEntities = uint64_t{1} << 40;
constexpr uint64_t kMaxRows = uint64_t{1} << 40;
constexpr uint64_t kMaxDistinctBits = uint64_t{1} << 35;
constexpr std::array<std::string_view, 3> kDevices = {"ios", "android", "web"};
// Share of a user's rows on their usual device; the rest are uniform. Fixed:
// the device effect's strength is the knob that matters.
constexpr double kUsualDeviceShare = 0.8;
// Buffered bytes per file before a write: large enough that write calls cost
// nothing, small enough that many threads stay within a few MiB.
constexpr size_t kFlushBytes = size_t{1} << 20;
constexpr std::string_view kFormat = "ember-gen-data-1";
// Mode long_interest: lines are ~20 KB at the default history of 1000, so
// buffer more per write.
constexpr size_t kLongInterestFlushBytes = size_t{4} << 20;
// Sample times: uniform over the 90 days from 2024-01-01T00:00:00Z. A
// history's oldest item is a uniform 60 to 720 days (in seconds) older.
constexpr int64_t kTimeOrigin = 1704067200;
constexpr int64_t kDay = 86400;
constexpr int64_t kSampleWindow = 90 * kDay;
constexpr int64_t kMinHistorySpan = 60 * kDay;
constexpr int64_t kMaxHistorySpan = 720 * kDay;
// Limits of mode long_interest's options.
constexpr uint32_t kMaxInterests = 64;
constexpr uint32_t kMaxLongHistory = 100000;

bool IsLongInterest(const GenDataOptions& o) { return o.mode == kGenDataLongInterestMode; }

// ---------------------------------------------------------------------------
// Stateless per-entity randomness.

// Hash domains: each per-entity quantity draws from its own, so that e.g. a
// user's bias and group are independent.
enum Domain : uint64_t {
  kUserEffect = 1,
  kUserGroup,
  kGroupEffect,
  kItemEffect,
  kCategoryEffect,
  kUserTopic,
  kUserDevice,
  kDeviceEffect,
  kHourPhase,
  kStream,
  kLongInterestStream,
};

uint64_t EntityHash(uint64_t seed, Domain domain, uint64_t id, uint64_t j = 0) {
  uint64_t h = ps::Mix64(seed + domain * 0x9e3779b97f4a7c15ULL);
  h = ps::Mix64(h ^ id);
  return ps::Mix64(h ^ (j * 0xd6e8feb86659fd93ULL + 0x632be59bd9b4e019ULL));
}

double UnitFromHash(uint64_t h) { return static_cast<double>(h >> 11) * 0x1.0p-53; }

// A standard normal that is a pure function of `h` (Box-Muller on two
// uniforms derived from it).
double NormalFromHash(uint64_t h) {
  const double u1 = (static_cast<double>(h >> 11) + 0.5) * 0x1.0p-53;  // (0, 1)
  const double u2 = UnitFromHash(ps::Mix64(h ^ 0xa0761d6478bd642fULL));
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2 * kPi * u2);
}

// ---------------------------------------------------------------------------
// The click model: who sees what, and the true click probability.

// Immutable after construction; shared by the generator threads. Keeps a
// reference to `o`, which must be valid options and outlive the model.
class ClickModel {
 public:
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

  static float Probability(double logit) {
    return static_cast<float>(1.0 / (1.0 + std::exp(-logit)));
  }

 private:
  const GenDataOptions& o_;
  ZipfSampler users_;
  ZipfSampler items_;
  ZipfSampler items_in_category_;  // ranks within one category
  double hour_logit_[24];
  double device_logit_[kDevices.size()];
};

// Mode long_interest's click model (atop gen_data.h). Immutable; keeps a
// reference to `o`, which must be valid options and outlive the model.
class LongInterestModel {
 public:
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

// Dense values are rounded to what the file shows before p is computed, so
// that ClickProbability recomputes p bit for bit from the text.
double RoundToPrinted(double x) {
  const double r = std::round(x * 1e4) / 1e4;
  return r == 0 ? 0.0 : r;  // no "-0.0000"
}

// ---------------------------------------------------------------------------
// Output.

// One bit per id, set from many threads. Setting reads first so that the hot
// ids (Zipf heads) cost a shared read, not a contended write.
class ConcurrentBitmap {
 public:
  explicit ConcurrentBitmap(uint64_t bits) : words_((bits + 63) / 64) {}
  void Set(uint64_t i) {
    std::atomic<uint64_t>& w = words_[i >> 6];
    const uint64_t bit = uint64_t{1} << (i & 63);
    if ((w.load(std::memory_order_relaxed) & bit) == 0) w.fetch_or(bit, std::memory_order_relaxed);
  }
  uint64_t Count() const {
    uint64_t n = 0;
    for (const auto& w : words_) n += std::popcount(w.load(std::memory_order_relaxed));
    return n;
  }

 private:
  std::vector<std::atomic<uint64_t>> words_;
};

struct DistinctIds {
  // Mode long_interest's user ids are row numbers.
  explicit DistinctIds(const GenDataOptions& o)
      : users(IsLongInterest(o) ? o.train_rows + o.test_rows : o.num_users),
        items(o.num_items),
        categories(o.num_categories) {}
  ConcurrentBitmap users;
  ConcurrentBitmap items;
  ConcurrentBitmap categories;
};

// A data file, plain or gzip, written in large blocks.
class OutputFile {
 public:
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;
  ~OutputFile() {
    if (plain_ != nullptr) std::fclose(plain_);
    if (gz_ != nullptr) gzclose(gz_);
  }

  static absl::StatusOr<std::unique_ptr<OutputFile>> Open(const std::string& path, bool gzip,
                                                          int level) {
    std::unique_ptr<OutputFile> f(new OutputFile(path));
    if (gzip) {
      const std::string mode = absl::StrCat("wb", level);
      f->gz_ = gzopen(path.c_str(), mode.c_str());
      if (f->gz_ == nullptr) return absl::InternalError(absl::StrCat("cannot create ", path));
      gzbuffer(f->gz_, 256 * 1024);
    } else {
      f->plain_ = std::fopen(path.c_str(), "wb");
      if (f->plain_ == nullptr) {
        return absl::InternalError(
            absl::StrCat("cannot create ", path, ": ", std::strerror(errno)));
      }
    }
    return f;
  }

  absl::Status Write(std::string_view data) {
    if (data.empty()) return absl::OkStatus();
    if (plain_ != nullptr) {
      if (std::fwrite(data.data(), 1, data.size(), plain_) != data.size()) {
        return absl::InternalError(
            absl::StrCat("write failed on ", path_, ": ", std::strerror(errno)));
      }
    } else if (gzwrite(gz_, data.data(), static_cast<unsigned>(data.size())) !=
               static_cast<int>(data.size())) {
      int err = 0;
      const char* msg = gzerror(gz_, &err);
      return absl::InternalError(absl::StrCat("write failed on ", path_, ": ", msg));
    }
    return absl::OkStatus();
  }

  // Flushes and closes; the file's size on disk afterwards.
  absl::StatusOr<uint64_t> Close() {
    if (plain_ != nullptr) {
      const int rc = std::fclose(plain_);
      plain_ = nullptr;
      if (rc != 0) {
        return absl::InternalError(
            absl::StrCat("close failed on ", path_, ": ", std::strerror(errno)));
      }
    } else if (gz_ != nullptr) {
      const int rc = gzclose(gz_);
      gz_ = nullptr;
      if (rc != Z_OK) {
        return absl::InternalError(absl::StrCat("close failed on ", path_, " (zlib ", rc, ")"));
      }
    }
    std::error_code ec;
    const uint64_t size = fs::file_size(path_, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot stat ", path_, ": ", ec.message()));
    return size;
  }

 private:
  explicit OutputFile(std::string path) : path_(std::move(path)) {}
  std::string path_;
  std::FILE* plain_ = nullptr;
  gzFile gz_ = nullptr;
};

// Writes v's decimal digits at p; returns the end.
char* PutUint(uint64_t v, char* p) { return std::to_chars(p, p + 24, v).ptr; }

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

// Shortest text that reads back as the same double ("nan" for NaN).
std::string FormatDouble(double v) {
  if (std::isnan(v)) return "nan";
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, end);
}

// One output file: which split, which part, how many rows.
struct Part {
  bool test = false;
  uint32_t index = 0;
  uint64_t rows = 0;
  uint64_t first_row = 0;  // over both splits, train first
  std::string path;
};

struct PartResult {
  absl::Status status;
  uint64_t rows = 0;
  uint64_t positives = 0;
  uint64_t history_items = 0;
  double sum_p = 0;
  uint64_t bytes = 0;
  std::vector<float> p;         // test parts only: the oracle's scores
  std::vector<float> labels;    // and labels
  std::vector<float> p_recent;  // and, in mode long_interest, E[p | recent view]

  // Counts one drawn sample: click probability p, label, history length;
  // test parts also keep (p, label) for the oracle metrics.
  void Add(float prob, bool label, size_t history, bool test) {
    positives += label;
    sum_p += prob;
    history_items += history;
    if (test) {
      p.push_back(prob);
      labels.push_back(label ? 1.0f : 0.0f);
    }
  }
};

// Opens the part's file, appends its rows to a buffer with row(&buffer), one
// call per row, and writes the buffer whenever it holds flush_bytes. Sets
// result's status, bytes and rows.
template <typename RowFn>
void WritePart(const GenDataOptions& o, const Part& part, size_t flush_bytes,
               const std::atomic<bool>& cancelled, PartResult* result, RowFn&& row) {
  auto file = OutputFile::Open(part.path, o.gzip, o.gzip_level);
  if (!file.ok()) {
    result->status = file.status();
    return;
  }
  std::string buf;
  buf.reserve(flush_bytes + 4096);
  for (uint64_t r = 0; r < part.rows; ++r) {
    row(&buf);
    if (buf.size() >= flush_bytes) {
      if (cancelled.load(std::memory_order_relaxed)) {
        result->status = absl::CancelledError("another part failed");
        return;
      }
      result->status = (*file)->Write(buf);
      if (!result->status.ok()) return;
      buf.clear();
    }
  }
  result->status = (*file)->Write(buf);
  if (!result->status.ok()) return;
  auto bytes = (*file)->Close();
  if (!bytes.ok()) {
    result->status = bytes.status();
    return;
  }
  result->bytes = *bytes;
  result->rows = part.rows;
}

// Generates and writes one part. Its content depends only on (options, split,
// index): the random stream is seeded from them, never shared.
void GeneratePart(const GenDataOptions& o, const ClickModel& model, const Part& part,
                  DistinctIds* distinct, const std::atomic<bool>& cancelled, PartResult* result) {
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
    const float p = ClickModel::Probability(model.Logit(
        user, group, item, category, hist_cats.data(), history, hour, device, dense0, dense1));
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

// The same for mode long_interest (atop gen_data.h).
void GenerateLongInterestPart(const GenDataOptions& o, const LongInterestModel& model,
                              const Part& part, DistinctIds* distinct,
                              const std::atomic<bool>& cancelled, PartResult* result) {
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

  WritePart(o, part, kLongInterestFlushBytes, cancelled, result, [&](std::string* out) {
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
    const float p = ClickModel::Probability(
        model.Logit(base_logit, model.OldMatches(category, hist_cats.data(), history)));
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

bool IsOwnDataFile(const std::string& name) {
  // part-<digits>.tsv or part-<digits>.tsv.gz
  std::string_view s = name;
  if (!s.starts_with("part-")) return false;
  s.remove_prefix(5);
  if (s.ends_with(".gz")) s.remove_suffix(3);
  if (!s.ends_with(".tsv")) return false;
  s.remove_suffix(4);
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// Collects into `own` the files of a previous run in `dir` (if it exists), and
// fails on anything a trainer would read that we did not write, or on any
// file at all without `overwrite`.
absl::Status ScanOutputDir(const fs::path& dir, bool overwrite, std::vector<fs::path>* own) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) return absl::OkStatus();
  if (!fs::is_directory(dir, ec)) {
    return absl::FailedPreconditionError(
        absl::StrCat(dir.string(), " exists and is not a directory"));
  }
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (!overwrite) {
      return absl::FailedPreconditionError(
          absl::StrCat(dir.string(), " is not empty (holds ", name,
                       "); pass overwrite=true to replace an earlier gen-data output"));
    }
    if (!IsOwnDataFile(name) || !it->is_regular_file()) {
      return absl::FailedPreconditionError(absl::StrCat(
          dir.string(), " holds ", name,
          ", which gen-data did not write and a trainer would read; remove it or pick another "
          "out_dir"));
    }
    own->push_back(it->path());
  }
  if (ec) {
    return absl::InternalError(absl::StrCat("cannot list ", dir.string(), ": ", ec.message()));
  }
  return absl::OkStatus();
}

absl::Status PrepareOutput(const GenDataOptions& o) {
  const fs::path root(o.out_dir);
  std::vector<fs::path> stale;
  absl::Status st = ScanOutputDir(root / "train", o.overwrite, &stale);
  if (st.ok()) st = ScanOutputDir(root / "test", o.overwrite, &stale);
  if (!st.ok()) return st;
  std::error_code ec;
  const fs::path meta = root / "meta.txt";
  if (fs::exists(meta, ec)) {
    if (!o.overwrite) {
      return absl::FailedPreconditionError(absl::StrCat(
          meta.string(), " exists; pass overwrite=true to replace an earlier gen-data output"));
    }
    stale.insert(stale.begin(), meta);  // first: an interrupted run must not look complete
  }
  for (const fs::path& p : stale) {
    if (!fs::remove(p, ec) && ec) {
      return absl::InternalError(absl::StrCat("cannot remove ", p.string(), ": ", ec.message()));
    }
  }
  for (const char* sub : {"train", "test"}) {
    if (std::string_view(sub) == "test" && o.test_rows == 0) continue;
    fs::create_directories(root / sub, ec);
    if (ec) {
      return absl::InternalError(
          absl::StrCat("cannot create ", (root / sub).string(), ": ", ec.message()));
    }
  }
  return absl::OkStatus();
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

absl::Status WriteMeta(const GenDataOptions& o, const GenDataSummary& s) {
  std::string text;
  auto line = [&](std::string_view k, const std::string& v) {
    absl::StrAppend(&text, Av(k), "=", v, "\n");
  };
  line("format", std::string(kFormat));
  std::vector<absl::string_view> columns;
  if (IsLongInterest(o)) {
    for (std::string_view c : kGenDataLongInterestColumns) columns.push_back(Av(c));
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
  line("distinct_users", absl::StrCat(s.distinct_users));
  line("distinct_items", absl::StrCat(s.distinct_items));
  line("distinct_categories", absl::StrCat(s.distinct_categories));
  line("bytes_written", absl::StrCat(s.bytes_written));
  // Then every option (seed included) but the two already written above.
  for (const auto& [k, v] : GenDataOptionValues(o)) {
    if (k != "train_rows" && k != "test_rows") line(k, v);
  }

  const fs::path meta = fs::path(o.out_dir) / "meta.txt";
  const fs::path tmp = fs::path(o.out_dir) / "meta.txt.tmp";
  auto file = OutputFile::Open(tmp.string(), /*gzip=*/false, 0);
  if (!file.ok()) return file.status();
  absl::Status st = (*file)->Write(text);
  if (!st.ok()) return st;
  auto closed = (*file)->Close();
  if (!closed.ok()) return closed.status();
  std::error_code ec;
  fs::rename(tmp, meta, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot rename ", tmp.string(), " to ", meta.string(), ": ", ec.message()));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Options by name.

using Member = std::variant<std::string GenDataOptions::*, uint64_t GenDataOptions::*,
                            uint32_t GenDataOptions::*, int GenDataOptions::*,
                            double GenDataOptions::*, bool GenDataOptions::*>;
// Which modes an option applies to: GenDataOptionValues (so meta.txt) lists
// only those of the options' mode, and the default mode's list is the one it
// had before mode long_interest existed.
enum Applies : uint8_t { kDefaultOnly = 1, kLongOnly = 2, kBoth = 3 };
struct Field {
  std::string_view name;
  Member member;
  Applies applies = kBoth;
};

Applies ModeBit(const GenDataOptions& o) {
  return o.mode == kGenDataDefaultMode ? kDefaultOnly : kLongOnly;
}

// Declaration order of GenDataOptions.
const std::vector<Field>& Fields() {
  using O = GenDataOptions;
  static const std::vector<Field>* fields = new std::vector<Field>{
      {"mode", &O::mode, kLongOnly},
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
      {"num_users", &O::num_users, kDefaultOnly},
      {"num_user_groups", &O::num_user_groups, kDefaultOnly},
      {"num_items", &O::num_items},
      {"num_categories", &O::num_categories},
      {"num_topics", &O::num_topics, kDefaultOnly},
      {"user_zipf", &O::user_zipf, kDefaultOnly},
      {"item_zipf", &O::item_zipf},
      {"topics_per_user", &O::topics_per_user, kDefaultOnly},
      {"min_history", &O::min_history, kDefaultOnly},
      {"max_history", &O::max_history, kDefaultOnly},
      {"history_focus", &O::history_focus, kDefaultOnly},
      {"candidate_focus", &O::candidate_focus, kDefaultOnly},
      {"base_logit", &O::base_logit},
      {"user_effect", &O::user_effect, kDefaultOnly},
      {"group_effect", &O::group_effect, kDefaultOnly},
      {"item_effect", &O::item_effect},
      {"category_effect", &O::category_effect},
      {"hour_effect", &O::hour_effect, kDefaultOnly},
      {"device_effect", &O::device_effect, kDefaultOnly},
      {"dense_weight", &O::dense_weight, kDefaultOnly},
      {"interest_strength", &O::interest_strength},
      {"category_match_strength", &O::category_match_strength, kDefaultOnly},
      {"interest_cap", &O::interest_cap},
      {"long_history", &O::long_history, kLongOnly},
      {"recent_window", &O::recent_window, kLongOnly},
      {"recent_interests", &O::recent_interests, kLongOnly},
      {"deep_interests", &O::deep_interests, kLongOnly},
      {"deep_min_items", &O::deep_min_items, kLongOnly},
      {"deep_max_items", &O::deep_max_items, kLongOnly},
      {"deep_share", &O::deep_share, kLongOnly},
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
// Random and ZipfSampler.

Random::Random(uint64_t seed) {
  uint64_t x = seed;
  for (uint64_t& s : s_) {  // SplitMix64: never leaves the state all zero
    x += 0x9e3779b97f4a7c15ULL;
    s = ps::Mix64(x);
  }
}

double Random::Normal() {
  const double u1 = (static_cast<double>(Next() >> 11) + 0.5) * 0x1.0p-53;  // (0, 1)
  const double u2 = Uniform();
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2 * kPi * u2);
}

namespace {
// log1p(x) / x and expm1(x) / x, continuous at 0, where exponent 1 puts them.
double Log1pOverX(double x) {
  if (std::abs(x) > 1e-8) return std::log1p(x) / x;
  return 1 - x * (0.5 - x / 3);
}
double Expm1OverX(double x) {
  if (std::abs(x) > 1e-8) return std::expm1(x) / x;
  return 1 + x * (0.5 + x / 6);
}
}  // namespace

ZipfSampler::ZipfSampler(uint64_t n, double exponent) : n_(n), exponent_(exponent) {
  CHECK_GE(n, 1u);
  CHECK_LE(n, uint64_t{1} << 53);
  CHECK(exponent >= 0 && exponent <= 10) << exponent;
  h_x1_ = H(1.5) - 1.0;
  h_n_ = H(static_cast<double>(n) + 0.5);
  squeeze_ = 2 - HInverse(H(2.5) - h(2));
}

// (x^(1-s) - 1) / (1-s), written so that s = 1 (log x) needs no special case.
double ZipfSampler::H(double x) const {
  const double log_x = std::log(x);
  return Expm1OverX((1 - exponent_) * log_x) * log_x;
}

double ZipfSampler::HInverse(double y) const {
  // For s > 1, H is bounded by 1/(s-1); rounding may put y at the bound, where
  // the inverse is +infinity (and Sample clamps to n).
  const double t = std::max((1 - exponent_) * y, -1.0);
  return std::exp(Log1pOverX(t) * y);
}

double ZipfSampler::h(double x) const { return std::exp(-exponent_ * std::log(x)); }

uint64_t ZipfSampler::Sample(Random& rng) const {
  const double n = static_cast<double>(n_);
  for (;;) {
    // u uniform over (h_x1_, h_n_]: the area under the envelope x^-s, where
    // rank k owns [H(k + 1/2) - h(k), H(k + 1/2)] (rank 1 all of its part).
    const double u = h_n_ + rng.Uniform() * (h_x1_ - h_n_);
    const double x = HInverse(u);
    const double k = std::clamp(std::floor(x + 0.5), 1.0, n);
    if (k - x <= squeeze_ || u >= H(k + 0.5) - h(k)) return static_cast<uint64_t>(k);
  }
}

// ---------------------------------------------------------------------------
// Options.

absl::Status ValidateGenDataOptions(const GenDataOptions& o) {
  if (o.mode != kGenDataDefaultMode && o.mode != kGenDataLongInterestMode) {
    return Bad("mode", absl::StrCat("must be ", Av(kGenDataDefaultMode), " or ",
                                    Av(kGenDataLongInterestMode), ", got '", o.mode, "'"));
  }
  if (o.out_dir.empty()) return Bad("out_dir", "must name the output directory");
  const bool li = IsLongInterest(o);  // skips the checks of options it ignores
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
  if (!li) {
    check(InRange<uint32_t>("num_topics", o.num_topics, 1, std::max<uint32_t>(o.num_categories, 1),
                            "num_categories"));
    check(InRange<double>("user_zipf", o.user_zipf, 0, 10));
  }
  check(InRange<double>("item_zipf", o.item_zipf, 0, 10));
  if (!li) {
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
  if (!li) {
    check(InRange<double>("hour_effect", o.hour_effect, 0, 10));
    check(InRange<double>("device_effect", o.device_effect, 0, 10));
    check(InRange<double>("dense_weight", o.dense_weight, -10, 10));
  }
  check(InRange<double>("interest_strength", o.interest_strength, -20, 20));
  if (!li) {
    check(InRange<double>("category_match_strength", o.category_match_strength, -20, 20));
  }
  check(InRange<uint32_t>("interest_cap", o.interest_cap, 1, 100000));
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

absl::Status SetGenDataOption(std::string_view name, std::string_view value,
                              GenDataOptions* options) {
  if (name == "mode") {
    if (value != kGenDataDefaultMode && value != kGenDataLongInterestMode) {
      return Bad(name, absl::StrCat("cannot parse '", Av(value), "': must be ",
                                    Av(kGenDataDefaultMode), " or ", Av(kGenDataLongInterestMode)));
    }
    // Options still at the old mode's default take the new mode's.
    const GenDataOptions from =
        IsLongInterest(*options) ? LongInterestDefaults() : GenDataOptions();
    const GenDataOptions to =
        value == kGenDataLongInterestMode ? LongInterestDefaults() : GenDataOptions();
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

// ---------------------------------------------------------------------------
// Generation.

absl::Status GenerateData(const GenDataOptions& options, GenDataSummary* summary) {
  const auto start = std::chrono::steady_clock::now();
  absl::Status st = ValidateGenDataOptions(options);
  if (!st.ok()) return st;
  st = PrepareOutput(options);
  if (!st.ok()) return st;

  const bool li = IsLongInterest(options);
  const ClickModel model(options);
  const LongInterestModel li_model(options);
  const std::vector<Part> parts = PlanParts(options);
  std::unique_ptr<DistinctIds> distinct;
  if (options.count_distinct) distinct = std::make_unique<DistinctIds>(options);

  std::vector<PartResult> results(parts.size());
  std::atomic<size_t> next{0};
  std::atomic<bool> cancelled{false};
  auto work = [&] {
    for (size_t i; (i = next.fetch_add(1)) < parts.size();) {
      if (li) {
        GenerateLongInterestPart(options, li_model, parts[i], distinct.get(), cancelled,
                                 &results[i]);
      } else {
        GeneratePart(options, model, parts[i], distinct.get(), cancelled, &results[i]);
      }
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
    if (!r.status.ok() && !absl::IsCancelled(r.status)) return r.status;
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
    s.distinct_users = distinct->users.Count();
    s.distinct_items = distinct->items.Count();
    s.distinct_categories = distinct->categories.Count();
  }
  st = WriteMeta(options, s);
  if (!st.ok()) return st;
  s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (summary != nullptr) *summary = std::move(s);
  return absl::OkStatus();
}

namespace {

// ClickProbability for mode long_interest; `o` is valid.
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
  return ClickModel::Probability(
      model.Logit(model.BaseLogit(item, static_cast<uint32_t>(category)), matches));
}

}  // namespace

absl::StatusOr<float> ClickProbability(const GenDataOptions& o, std::string_view line) {
  absl::Status st = ValidateGenDataOptions(o);
  if (!st.ok()) return st;
  if (IsLongInterest(o)) return LongInterestClickProbability(o, line);
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
  return ClickModel::Probability(
      model.Logit(user, group, item, static_cast<uint32_t>(category), hist_cats.data(),
                  hist_cats.size(), static_cast<uint32_t>(hour),
                  static_cast<uint32_t>(device - kDevices.begin()), dense[0], dense[1]));
}

}  // namespace ember::launch
