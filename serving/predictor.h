// serving::Predictor: scores log lines with an exported model (a bundle,
// docs/export_format.md), outside the training cluster. It runs the same
// models:: forward code as training's evaluation, in inference mode (Dice
// reads its moving averages), on embedding rows read from the bundle's
// memory-mapped tables; a key without a row gets its table's default value
// (TableConfig.admission.default_value, 0 unless set), exactly as an
// evaluation pull on the servers does.
//
// Live updates: Update() applies a delta bundle, or switches to a newer full
// one, while Predict calls go on. Each Predict call takes the current model
// once at its start, so it sees the old model or the new one, never a mix.
//
// Thread safety: every method may be called concurrently. Predict reuses
// per-call contexts (model scratch, batch builder, row buffers) from a pool:
// once warm (as many contexts as concurrent callers, buffers grown to the
// largest request), a call allocates nothing but what grows `scores` or
// `errors` beyond their capacity.
#ifndef EMBER_SERVING_PREDICTOR_H_
#define EMBER_SERVING_PREDICTOR_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "proto/config.pb.h"
#include "proto/export.pb.h"

namespace ember::serving {

// The model a Predictor serves now.
struct ModelVersion {
  uint64_t version = 0;       // the bundle's version (its directory name)
  uint64_t full_version = 0;  // the full bundle its chain starts from
  uint64_t checkpoint_id = 0;
  uint64_t global_step = 0;
  std::string dir;            // the bundle's directory
  int64_t loaded_unix_ms = 0; // when it became current
};

// A line Predict could not score: its index in the call's `lines`, and why
// (the parser's message, e.g. "column 3 (item): ...").
struct LineError {
  size_t index = 0;
  std::string reason;
};

class Predictor {
 public:
  // Loads the bundle in `dir`: a full bundle, or a delta whose chain of bases
  // (<root>/<base_version>, ...) down to a full bundle is in the same root.
  // Every file's size and CRC-32C are checked first; a missing, damaged or
  // mismatched file is refused with an error naming it. `dir` may also be an
  // export root: its newest complete bundle is loaded.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<Predictor>> Load(const std::string& dir);
  ~Predictor();
  Predictor(const Predictor&) = delete;
  Predictor& operator=(const Predictor&) = delete;

  // The job config of the current model: columns (the log schema), tables,
  // model. Stays the same across updates (a bundle of another layout is
  // refused by Update).
  const proto::JobConfig& config() const;
  // The model's outputs, one per task (the LABEL columns it was trained on).
  const std::vector<std::string>& tasks() const;
  ModelVersion version() const;

  // Scores `lines`, each a log line in the job's schema (docs/log_schema.md;
  // LABEL fields are not read and may hold anything, even nothing). Resizes
  // *scores to lines.size() x tasks().size(), row-major, each a probability.
  // A line that does not parse gets NaN scores and an entry in *errors
  // (cleared first); the other lines are scored as usual.
  // If `version` is not null it gets the version of the model that scored
  // the call.
  void Predict(absl::Span<const std::string_view> lines, std::vector<float>* scores,
               std::vector<LineError>* errors, uint64_t* version = nullptr) const;

  // Makes a log line from column values: `values[i]` is the text of column
  // `names[i]` (for MULTI_SPARSE / SEQUENCE / TIME_SEQUENCE, the pieces
  // already joined with the column's separator). Columns not named are left
  // empty (a missing value; LABEL columns need none). InvalidArgument names
  // an unknown or repeated column, or a value holding a tab or newline.
  [[nodiscard]] absl::Status LineFromColumns(absl::Span<const std::string_view> names,
                                             absl::Span<const std::string_view> values, std::string* line) const;

  // Applies the bundle in `dir`: a delta whose base is the current version,
  // or any newer full bundle (with its deltas, if `dir` is a delta on it). A
  // damaged, incomplete or mismatched bundle (another model layout, a delta
  // on a version this predictor does not hold) is refused, naming the file or
  // the reason, and the current model stays. Blocks the caller while it reads
  // and checks; Predict calls meanwhile use the current model.
  [[nodiscard]] absl::Status Update(const std::string& dir);

  // Brings the predictor to the newest complete bundle under export root
  // `root`, if it is newer than the current one: applies the deltas in
  // between, or loads the newest full bundle and its deltas. Returns whether
  // the version changed. A refused bundle is reported as an error; the
  // current model stays. A bundle refused once is not read again until its
  // MANIFEST changes: the same error is returned at once.
  [[nodiscard]] absl::StatusOr<bool> UpdateFromRoot(const std::string& root);

 private:
  class Impl;
  explicit Predictor(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ember::serving

#endif  // EMBER_SERVING_PREDICTOR_H_
