// `ember predict`: scoring log files with a Predictor, one output line per
// input line, with training's bad-line rules (docs/log_schema.md).
#ifndef EMBER_SERVING_PREDICT_FILES_H_
#define EMBER_SERVING_PREDICT_FILES_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "serving/predictor.h"

namespace ember::serving {

struct PredictFilesOptions {
  std::vector<std::string> inputs;  // plain or .gz log files, scored in this order
  // Output: one line per input line, the tasks' scores separated by tabs
  // ("%.9g"); an empty line for a line that does not parse. Must not exist
  // yet: it is written to out + ".tmp" and renamed when complete.
  std::string out;
  size_t batch_size = 1024;  // lines per Predict call
  // The bad-line budget, as the job's data.max_bad_lines / max_bad_fraction:
  // more than max_bad_lines malformed lines, or more than max_bad_fraction
  // of the lines read (checked once 1000 lines were read), fails the run.
  uint64_t max_bad_lines = 1000;
  double max_bad_fraction = 0.01;
  // Called for each of the first log_bad_lines_limit malformed lines with
  // "file:line: reason".
  uint32_t log_bad_lines_limit = 20;
  std::function<void(const std::string&)> on_bad;
};

struct TaskSummary {
  std::string name;
  double auc = 0;      // NaN unless both classes occur among the labels read
  double logloss = 0;  // NaN without labels
};

struct PredictFilesSummary {
  uint64_t lines = 0;
  uint64_t bad_lines = 0;
  uint64_t labelled = 0;  // scored lines whose LABEL fields parse as numbers
  std::vector<TaskSummary> tasks;  // per task, from the LABEL fields of the input
  double seconds = 0;
};

// Scores every line of options.inputs into options.out. On an error (a file
// that cannot be read, the budget exceeded, the output not writable) removes
// its partial output and returns the error, naming the file (and line).
[[nodiscard]] absl::StatusOr<PredictFilesSummary> PredictFiles(const Predictor& predictor,
                                                               const PredictFilesOptions& options);

}  // namespace ember::serving

#endif  // EMBER_SERVING_PREDICT_FILES_H_
