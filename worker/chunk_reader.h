// Reading one data chunk (a line-aligned byte range of a plain file, or a
// whole gzip file) line by line, and ReadChunk, which drives a BatchBuilder
// over a chunk for the worker's reader thread.
#ifndef EMBER_WORKER_CHUNK_READER_H_
#define EMBER_WORKER_CHUNK_READER_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/batch.h"
#include "proto/wire.pb.h"
#include "worker/batch_builder.h"

namespace ember::worker {

// Reads the lines of one proto::Chunk.
//
// Plain files: exactly the bytes [chunk.begin, chunk.end), read with large
// pread calls. gzip files (chunk.gzip): the whole file, decompressed by zlib
// as a stream; concatenated gzip members are read as one stream, and a file
// that is not gzip at all is read as is (zlib's transparent mode).
//
// Thread safety: none; one reader per thread. Not copyable. Owns its file
// descriptor, closed by the destructor.
class ChunkReader {
 public:
  struct Options {
    // Bytes asked of the file per read. Default 1 MiB; >= 1.
    size_t buffer_bytes = size_t{1} << 20;
    // A longer line (without its '\n') is an error: it is a corrupt or
    // wrongly chosen file, and buffering it whole could exhaust memory.
    // Default 16 MiB; >= 1.
    size_t max_line_bytes = size_t{16} << 20;
  };

  // Opens chunk.path. Returns InvalidArgument for a chunk that cannot be
  // valid (empty path, begin > end, first_line 0, gzip with begin != 0) and
  // NotFound / PermissionDenied / Internal when the file cannot be opened;
  // every message names the file. Does not read yet.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<ChunkReader>> Open(const proto::Chunk& chunk,
                                                                         const Options& options);
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<ChunkReader>> Open(
      const proto::Chunk& chunk) {
    return Open(chunk, Options());
  }

  ~ChunkReader();
  ChunkReader(const ChunkReader&) = delete;
  ChunkReader& operator=(const ChunkReader&) = delete;

  // Reads the next line. On true, `*line` holds it without its '\n' (a
  // '\r' before the '\n' is kept) and stays valid until the next call;
  // `*line_number` is its 1-based line number in the file. A last line
  // without '\n' is still returned. Returns false at the end of the chunk and
  // on an error; status() then tells which. Blocks on file I/O.
  bool Next(std::string_view* line, uint64_t* line_number);

  // OK while reading and at a clean end; otherwise the error that stopped
  // Next, naming the file (and line, for an overlong line): DataLoss for a
  // truncated or corrupt gzip or a file shorter than the chunk,
  // ResourceExhausted for an overlong line, Internal for an I/O error.
  const absl::Status& status() const { return status_; }

  // Bytes of the lines returned so far, each with its newline (if it had
  // one). For gzip these are decompressed bytes.
  uint64_t bytes_consumed() const { return bytes_consumed_; }

  const proto::Chunk& chunk() const { return chunk_; }

  // Where the raw bytes come from (pread over a range, or gzread). Defined
  // and used only in chunk_reader.cc; public so that its implementations
  // there can name it.
  class Source;

 private:
  ChunkReader(const proto::Chunk& chunk, const Options& options, std::unique_ptr<Source> source);

  // Reads more bytes after the partial line at buffer_[pos_, len_).
  // Returns false on an error (status_ set).
  bool Fill();
  bool Fail(absl::Status status);

  proto::Chunk chunk_;
  Options options_;
  std::unique_ptr<Source> source_;
  std::vector<char> buffer_;
  size_t pos_ = 0;   // start of the next line in buffer_
  size_t len_ = 0;   // bytes of buffer_ holding data
  size_t scan_ = 0;  // bytes from pos_ known to hold no '\n'
  bool eof_ = false;
  uint64_t next_line_ = 1;
  uint64_t bytes_consumed_ = 0;
  absl::Status status_;
};

// A malformed line, as reported to ReadChunk's on_bad.
struct BadLine {
  std::string path;
  uint64_t line = 0;   // 1-based line number in the file
  std::string reason;  // the parser's message, e.g. "expected 11 columns, got 9"
};

// Counters ReadChunk adds to.
struct ReadStats {
  uint64_t lines = 0;      // lines read, good and bad
  uint64_t bad_lines = 0;  // lines reported to on_bad
  uint64_t bytes = 0;      // ChunkReader::bytes_consumed, summed over chunks
};

// Reads `chunk`, feeds its lines to `builder`, and calls emit(Batch&&) each
// time batch_size samples are collected and once at the end for the
// remainder. Every emitted batch has chunk_id = chunk.id; last_of_chunk is
// true on the final batch only, which may be empty (size 0) if the chunk
// ended exactly at a batch boundary or had no good lines; it is emitted
// anyway so that the caller can mark the chunk finished. Each batch also
// carries the position after its last line (consumed, next_line; see
// models::Batch). The chunk's first skip_lines lines are read past without
// being counted or parsed. on_bad (may be
// empty) is called for each malformed line: if it returns OK the line is
// skipped and reading goes on; otherwise reading stops at once and ReadChunk
// returns that status (how a caller enforces a bad-line budget).
//
// Returns OK once the final batch has been emitted; the I/O error (missing
// file, truncated or corrupt gzip, overlong line) otherwise, in which case
// no final batch is emitted and the chunk must not count as finished.
// If emit returns false reading stops and Cancelled is returned. `builder`
// must be empty on entry (else FailedPrecondition) and is empty on every
// return, so a batch never spans chunks. batch_size must be >= 1. If `stats`
// is not null the counters are added to it, also when an error stops early.
// Blocks on file I/O; runs emit and on_bad on the calling thread.
[[nodiscard]] absl::Status ReadChunk(const proto::Chunk& chunk, BatchBuilder& builder,
                                     uint32_t batch_size,
                                     const std::function<bool(models::Batch&&)>& emit,
                                     const std::function<absl::Status(const BadLine&)>& on_bad,
                                     ReadStats* stats);

}  // namespace ember::worker

#endif  // EMBER_WORKER_CHUNK_READER_H_
