// Loading and validating the job config (proto/config.proto).
#ifndef EMBER_PROTO_CONFIG_H_
#define EMBER_PROTO_CONFIG_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "absl/status/statusor.h"
#include "proto/config.pb.h"

namespace ember::proto {

// Parses `text` (protobuf text format). On a syntax error the status names
// `source` with line and column. Does not validate; see ValidateJobConfig.
[[nodiscard]] absl::StatusOr<JobConfig> ParseJobConfig(const std::string& text,
                                                       const std::string& source);

// Reads and parses the file at `path`, then validates it.
[[nodiscard]] absl::StatusOr<JobConfig> LoadJobConfig(const std::string& path);

// Checks every field against its documented range and the cross-references
// (columns -> tables, label presence, ...). On failure the message names the
// field path, e.g. "data.columns[3].table: unknown table 'itm'".
[[nodiscard]] absl::Status ValidateJobConfig(const JobConfig& config);

// Index of the table named `name` in config.tables, or -1.
int FindTable(const JobConfig& config, const std::string& name);

// The key namespace of column `index` (ColumnConfig.slot, or index + 1).
uint32_t ColumnSlot(const JobConfig& config, int index);

// The bad-line budget of data.max_bad_lines and data.max_bad_fraction, one
// rule for the scheduler (job totals) and the workers (their own counts, so a
// worker stops at the budget instead of reading on). OK within the budget;
// otherwise DataLoss naming the field that ran out, with up to three of
// `examples` ("path:line: reason") so the cause is on the console. The
// fraction applies once `lines` >= 1000.
[[nodiscard]] absl::Status CheckBadLineBudget(const DataConfig& data, uint64_t bad, uint64_t lines,
                                              absl::Span<const std::string> examples);

}  // namespace ember::proto

#endif  // EMBER_PROTO_CONFIG_H_
