// `ember inspect`: a human-readable report on one checkpoint directory that
// also verifies every byte of it. The layout it decodes is in
// docs/checkpoint_format.md.
#ifndef EMBER_STORAGE_INSPECT_H_
#define EMBER_STORAGE_INSPECT_H_

#include <ostream>
#include <string>

#include "absl/status/status.h"

namespace ember::storage {

// Prints to `out` the manifest of checkpoint directory `dir` (header fields
// and tables; the counts and first few of its files and blocks), the chain of
// parent checkpoints, per-table rows and bytes summed over the blocks, the
// verification of every data file (size and CRC-32C) and of every block, and
// up to `sample_rows` decoded rows per table from its first non-empty block.
//
// Returns OK if everything verified. Otherwise returns the first problem
// (its message names the file), after printing the whole report; an
// unreadable MANIFEST ends the report early. Reads the whole checkpoint
// twice (files, then blocks); blocking; writes nothing. Thread-safe.
// NotFound ("no such directory") if `dir` does not exist, InvalidArgument if
// it is not a directory; nothing is printed then.
[[nodiscard]] absl::Status InspectCheckpoint(const std::string& dir, int sample_rows, std::ostream& out);

}  // namespace ember::storage

#endif  // EMBER_STORAGE_INSPECT_H_
