// What the converters (movielens.cc, census.cc, criteo.cc, avazu.cc) share:
// the output of one conversion, bad-line accounting, the row hash of the
// splits, field helpers and the job.conf they emit. Internal to datasets/.
#ifndef EMBER_DATASETS_CONVERT_INTERNAL_H_
#define EMBER_DATASETS_CONVERT_INTERNAL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "datasets/convert.h"
#include "datasets/data_dir.h"
#include "datasets/text_io.h"

namespace ember::datasets::internal {

enum Split { kTrain = 0, kValid = 1, kTest = 2 };

// The output of one conversion. Open claims out_dir (PrepareOutputDir, with
// convert's rules); Finish writes job.conf and then meta.txt. If Open
// succeeded and Finish did not, the destructor removes every file and
// directory this conversion created, so a failed run leaves nothing behind
// (and no old set: that was replaced). Not thread-safe.
class ConvertOutput {
 public:
  ConvertOutput(const ConvertOptions& options, ConvertSummary* summary)
      : o_(options), summary_(summary) {}
  ConvertOutput(const ConvertOutput&) = delete;
  ConvertOutput& operator=(const ConvertOutput&) = delete;
  ~ConvertOutput();

  // Claims out_dir and creates train/, test/ and, when `with_valid`, valid/.
  absl::Status Open(bool with_valid);
  // Appends one row to `split` (kValid only after Open(true)).
  absl::Status Line(Split split, std::string_view line);
  // Closes the data files, checks `conf` (a JobConfig in text form; one that
  // does not validate is a bug here, reported as Internal), writes it as
  // job.conf, then meta.txt. `label_positives`: per LABEL column of `conf`,
  // the rows whose label is 1. Fills the summary's rows, files and labels.
  absl::Status Finish(const std::string& conf, std::vector<uint64_t> label_positives);

 private:
  const ConvertOptions& o_;
  ConvertSummary* summary_;
  bool with_valid_ = false;
  bool finished_ = false;
  std::vector<std::string> created_dirs_;
  std::unique_ptr<SplitWriter> writer_;  // null until Open succeeds
};

// Malformed input lines: skipped and counted until the budget is spent.
class BadLines {
 public:
  BadLines(uint64_t budget, ConvertSummary* summary) : budget_(budget), summary_(summary) {}
  // Records a malformed line (logged and kept as an example while there are
  // few); InvalidArgument "path:line: reason (...)" once more than the
  // budget were seen.
  absl::Status Add(const std::string& path, int64_t line, std::string_view reason);

 private:
  uint64_t budget_;
  ConvertSummary* summary_;
};

// SplitMix64 of x: the row hash of the splits and of the shuffle.
uint64_t Mix(uint64_t x);
// A uniform double in [0, 1) from (seed, row): which split a row goes to.
double RowUnit(uint64_t seed, uint64_t row);
// `v`, or the format's default when v is negative (the options' convention).
inline double Fraction(double v, double format_default) { return v < 0 ? format_default : v; }

// A value that may go into a tab-separated field unchanged.
inline bool FieldSafe(std::string_view s) {
  return s.find_first_of("\t\n\r") == std::string_view::npos;
}
// A finite number.
bool ParseDouble(std::string_view s, double* out);
// A 0/1 label written as 0, 1, 0.0 or 1.0; -1 otherwise.
int ParseBinaryLabel(std::string_view s);
// log(1 + max(x, 0)), 6 significant digits: squeezes counts and money
// amounts of any size into a range an MLP takes well.
void AppendLog1p(double x, std::string* out);

// Pieces of the emitted job.conf.
std::string Quoted(std::string_view s);
// A table with Adagrad, which suits sparse rows seen a few times each.
std::string TableText(std::string_view name, int dim, std::string_view comment);
// The whole config: `comment` ('#' lines, describing the set), name,
// `tables`, a data block reading "train" and "test" in batches of
// `batch_size` with `columns` (its lines), the shared EMBEDDING_MLP model
// and `epochs`.
std::string JobConfText(std::string_view comment, std::string_view name, std::string_view tables,
                        int batch_size, std::string_view columns, int epochs);

// One per format, each in its own file; `o` is valid.
absl::Status ConvertMovielens(const ConvertOptions& o, ConvertSummary* summary);
absl::Status ConvertCensus(const ConvertOptions& o, ConvertSummary* summary);
absl::Status ConvertCriteo(const ConvertOptions& o, ConvertSummary* summary);
absl::Status ConvertAvazu(const ConvertOptions& o, ConvertSummary* summary);

}  // namespace ember::datasets::internal

#endif  // EMBER_DATASETS_CONVERT_INTERNAL_H_
