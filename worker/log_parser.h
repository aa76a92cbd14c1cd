// Schema-driven parsing of one tab-separated log line into labels, dense
// values and hashed sparse keys; the format is described in docs/log_schema.md.
// This is the inner loop of a worker's reader thread, so a line is parsed
// without allocating once the output buffers have grown to size.
#ifndef EMBER_WORKER_LOG_PARSER_H_
#define EMBER_WORKER_LOG_PARSER_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "proto/config.pb.h"

namespace ember::worker {

// One parsed line. The caller keeps one and hands it to every Parse call so
// that its vectors keep their capacity; Parse overwrites every field.
struct ParsedLine {
  // One value per LABEL column, in config order. Each lies in [0, 1].
  std::vector<float> labels;
  // One value per DENSE column, in config order. Finite; 0 for a missing value.
  std::vector<float> dense;
  // Keys of the j-th sparse (SPARSE/MULTI_SPARSE/SEQUENCE) column, in config
  // order, are keys[key_begin[j] .. key_begin[j + 1]). Values of one column
  // keep their order in the line (a SEQUENCE stays in time order) and may
  // repeat.
  std::vector<uint64_t> keys;
  std::vector<uint32_t> key_begin;  // num_sparse() + 1 entries
  // Values of the j-th time (TIME/TIME_SEQUENCE) column, in config order, are
  // times[time_begin[j] .. time_begin[j + 1]): exactly one for TIME, the
  // last max_len in order for TIME_SEQUENCE.
  std::vector<int64_t> times;
  std::vector<uint32_t> time_begin;  // num_times() + 1 entries
  // The raw text of every column, by DataConfig.columns index (views into
  // the line passed to Parse; valid while it is). Positional columns (see
  // SetPositional) are only available this way.
  std::vector<std::string_view> raw;
};

// Parses log lines according to the columns of a JobConfig.
//
// Thread safety: immutable after Create; Parse is const and may be called
// from several threads at once, each with its own ParsedLine.
class LogParser {
 public:
  // Where a sparse column's keys go.
  struct SparseColumn {
    int column = 0;  // index in DataConfig.columns
    int table = 0;   // index in JobConfig.tables
  };

  // Builds a parser for config.data().columns. The config should have passed
  // proto::ValidateJobConfig; the few properties the parser relies on (a
  // sparse column names an existing table, a multi-value separator is one
  // character) are checked again and reported as InvalidArgument naming the
  // column, never by a crash.
  [[nodiscard]] static absl::StatusOr<LogParser> Create(const proto::JobConfig& config);

  // Parses `line` (without its '\n'; a trailing '\r' is ignored) into `*out`.
  //
  // On success every field of `*out` is overwritten. On a malformed line
  // returns InvalidArgument whose message says what is wrong and names the
  // column, e.g. "expected 11 columns, got 9" or
  // "column 'label' (#1): 'x' is not a number"; the caller prefixes file:line.
  // `*out` is then unspecified. Never allocates once `*out` has grown.
  [[nodiscard]] absl::Status Parse(std::string_view line, ParsedLine* out) const;

  int num_columns() const { return static_cast<int>(columns_.size()); }
  int num_labels() const { return num_labels_; }
  int num_dense() const { return num_dense_; }
  int num_sparse() const { return static_cast<int>(sparse_.size()); }
  int num_times() const { return num_times_; }
  // Marks SEQUENCE / TIME_SEQUENCE column i (DataConfig.columns index) as
  // positional: Parse leaves its keys or times empty and only records its
  // raw text, which the batch builder reads piece by piece where an
  // attention block needs it. Used for the aligned columns of attention
  // blocks, so that a long history costs a scan, not a hash per item.
  void SetPositional(int i) { columns_[i].positional = true; }
  char separator(int i) const { return columns_[i].separator; }
  uint32_t slot(int i) const { return columns_[i].slot; }
  uint32_t max_len(int i) const { return columns_[i].max_len; }
  // Name of column i (index in DataConfig.columns).
  const std::string& column_name(int i) const { return columns_[i].name; }
  // The sparse columns in config order; index j matches ParsedLine's j.
  const std::vector<SparseColumn>& sparse_columns() const { return sparse_; }

 private:
  struct Column {
    proto::ColumnConfig::Type type = proto::ColumnConfig::IGNORE;
    std::string name;
    int number = 0;  // 1-based, as messages show it
    uint32_t slot = 0;
    char separator = ',';
    uint32_t max_len = 0;  // 0 = no cap
    std::vector<std::string> missing;
    bool positional = false;
  };

  LogParser() = default;

  bool IsMissing(const Column& c, std::string_view value) const;
  absl::Status ParseLabel(const Column& c, std::string_view value, float* out) const;
  absl::Status ParseDense(const Column& c, std::string_view value, float* out) const;
  void AppendKeys(const Column& c, std::string_view value, std::vector<uint64_t>* keys) const;
  absl::Status AppendTimes(const Column& c, std::string_view value,
                           std::vector<int64_t>* times) const;

  std::vector<Column> columns_;
  std::vector<SparseColumn> sparse_;
  int num_labels_ = 0;
  int num_dense_ = 0;
  int num_times_ = 0;
};

}  // namespace ember::worker

#endif  // EMBER_WORKER_LOG_PARSER_H_
