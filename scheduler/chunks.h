// Finding the data files of a job and cutting them into chunks: line-aligned
// byte ranges of plain files, whole files for gzip. The scheduler hands the
// chunks out to workers, which read them with worker::ChunkReader.
#ifndef EMBER_SCHEDULER_CHUNKS_H_
#define EMBER_SCHEDULER_CHUNKS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "proto/wire.pb.h"

namespace ember::scheduler {

// The data files named by `spec` (DataConfig.train / .test):
//  - a directory: its regular files whose names do not start with '.', not
//    recursing, sorted by name (symlinks to regular files count);
//  - a pattern with *, ? or [ : the regular files glob(3) matches, sorted;
//  - otherwise a single file, which must exist and not be a directory.
// Returns NotFound naming `spec` if nothing matches or it does not exist,
// InvalidArgument for an empty spec, and the errno's status if a directory
// cannot be read. Blocks on the filesystem; thread-safe.
[[nodiscard]] absl::StatusOr<std::vector<std::string>> ListDataFiles(const std::string& spec);

// Cuts `files` into chunks with ids 0..n-1 in file order.
//
// A plain file becomes line-aligned byte ranges of about `chunk_bytes`: each
// boundary is moved forward to just after the next '\n' (a chunk is shorter
// than chunk_bytes only at the end of a file, and longer by at most one
// line), and first_line is the 1-based number of the chunk's first line.
// Together the chunks cover every byte of the file exactly once; a final line
// without '\n' belongs to the last chunk. A file whose name ends in ".gz" is
// one chunk (gzip = true, begin 0, end = file size, first_line 1). Empty
// files yield no chunk.
//
// Reads each plain file once, sequentially, to find the newlines: about the
// speed of the disk. Returns InvalidArgument if chunk_bytes is 0, and an
// error naming the file if one cannot be opened or read. Thread-safe.
[[nodiscard]] absl::StatusOr<std::vector<proto::Chunk>> CutChunks(
    const std::vector<std::string>& files, uint64_t chunk_bytes);

}  // namespace ember::scheduler

#endif  // EMBER_SCHEDULER_CHUNKS_H_
