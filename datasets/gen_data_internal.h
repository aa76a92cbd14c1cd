// What gen-data's modes (click_log.cc: the default log; long_interest.cc;
// one_epoch.cc) share with the driver (gen_data.cc): per-entity hashing, output parts and
// their results, distinct-id counting, and one interface per mode. Internal
// to datasets/.
#ifndef EMBER_DATASETS_GEN_DATA_INTERNAL_H_
#define EMBER_DATASETS_GEN_DATA_INTERNAL_H_

#include <array>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "datasets/gen_data.h"
#include "datasets/text_io.h"
#include "proto/keys.h"

namespace ember::datasets::internal {

constexpr double kPi = 3.14159265358979323846;
constexpr std::array<std::string_view, 3> kDevices = {"ios", "android", "web"};
// Limits of mode long_interest's options.
constexpr uint32_t kMaxInterests = 64;
constexpr uint32_t kMaxLongHistory = 100000;

inline bool IsLongInterest(const GenDataOptions& o) { return o.mode == kGenDataLongInterestMode; }
inline bool IsOneEpoch(const GenDataOptions& o) { return o.mode == kGenDataOneEpochMode; }

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
  kGroupCategoryEffect,
  kOneEpochStream,
};

inline uint64_t EntityHash(uint64_t seed, Domain domain, uint64_t id, uint64_t j = 0) {
  uint64_t h = proto::Mix64(seed + domain * 0x9e3779b97f4a7c15ULL);
  h = proto::Mix64(h ^ id);
  return proto::Mix64(h ^ (j * 0xd6e8feb86659fd93ULL + 0x632be59bd9b4e019ULL));
}

inline double UnitFromHash(uint64_t h) { return static_cast<double>(h >> 11) * 0x1.0p-53; }

// A standard normal that is a pure function of `h` (Box-Muller on two
// uniforms derived from it).
inline double NormalFromHash(uint64_t h) {
  const double u1 = (static_cast<double>(h >> 11) + 0.5) * 0x1.0p-53;  // (0, 1)
  const double u2 = UnitFromHash(proto::Mix64(h ^ 0xa0761d6478bd642fULL));
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2 * kPi * u2);
}

// The click probability of a logit, as the generator draws labels from it.
inline float Probability(double logit) {
  return static_cast<float>(1.0 / (1.0 + std::exp(-logit)));
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
  absl::StatusOr<std::unique_ptr<OutputFile>> file =
      OutputFile::Open(part.path, o.gzip, o.gzip_level);
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

// One mode's generator. Immutable after construction, so Generate may run on
// many threads at once (each with its own part and result).
class PartGenerator {
 public:
  virtual ~PartGenerator() = default;
  // Generates and writes one part. Its content depends only on (options,
  // split, index): the random stream is seeded from them, never shared.
  // Sets result's status (Cancelled when `cancelled` turned true), rows,
  // bytes and figures; counts ids into `distinct` unless null.
  virtual void Generate(const Part& part, DistinctIds* distinct, const std::atomic<bool>& cancelled,
                        PartResult* result) const = 0;
};

// The modes, each in its own file. `o` must be valid options and outlive
// the generator.
std::unique_ptr<PartGenerator> MakeClickLogGenerator(const GenDataOptions& o);
std::unique_ptr<PartGenerator> MakeLongInterestGenerator(const GenDataOptions& o);
std::unique_ptr<PartGenerator> MakeOneEpochGenerator(const GenDataOptions& o);

// ClickProbability of each mode; `o` is valid and of that mode.
absl::StatusOr<float> ClickLogClickProbability(const GenDataOptions& o, std::string_view line);
absl::StatusOr<float> LongInterestClickProbability(const GenDataOptions& o, std::string_view line);
absl::StatusOr<float> OneEpochClickProbability(const GenDataOptions& o, std::string_view line);

}  // namespace ember::datasets::internal

#endif  // EMBER_DATASETS_GEN_DATA_INTERNAL_H_
