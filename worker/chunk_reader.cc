// Chunk reading: one growable buffer refilled by pread (plain) or gzread
// (gzip); lines are views into it, found with memchr.
#include "worker/chunk_reader.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/memory/memory.h"
#include "absl/strings/str_cat.h"

namespace ember::worker {

// Implementation detail: yields the raw bytes of a chunk in order.
class ChunkReader::Source {
 public:
  virtual ~Source() = default;
  // Reads up to `n` > 0 bytes into `dst`. Returns the count, 0 at the end,
  // or an error naming the file.
  virtual absl::StatusOr<size_t> Read(char* dst, size_t n) = 0;
};

namespace {

absl::Status OpenError(int err, const std::string& path) {
  return absl::ErrnoToStatus(err, absl::StrCat("cannot open data file ", path));
}

// The bytes [begin, end) of a plain file.
class PreadSource : public ChunkReader::Source {
 public:
  PreadSource(int fd, std::string path, uint64_t begin, uint64_t end)
      : fd_(fd), path_(std::move(path)), offset_(begin), end_(end) {}
  ~PreadSource() override { close(fd_); }

  absl::StatusOr<size_t> Read(char* dst, size_t n) override {
    if (offset_ >= end_) return 0;
    const size_t want = static_cast<size_t>(std::min<uint64_t>(n, end_ - offset_));
    while (true) {
      const ssize_t r = pread(fd_, dst, want, static_cast<off_t>(offset_));
      if (r < 0) {
        if (errno == EINTR) continue;
        return absl::InternalError(
            absl::StrCat(path_, ": read at byte ", offset_, " failed: ", std::strerror(errno)));
      }
      if (r == 0) {
        // The scheduler cut the chunk from a longer file.
        return absl::DataLossError(absl::StrCat(path_, ": file ends at byte ", offset_,
                                                " but the chunk runs to byte ", end_,
                                                "; was the file truncated or replaced?"));
      }
      offset_ += static_cast<uint64_t>(r);
      return static_cast<size_t>(r);
    }
  }

 private:
  int fd_;
  std::string path_;
  uint64_t offset_;
  uint64_t end_;
};

// A whole gzip file, decompressed.
class GzipSource : public ChunkReader::Source {
 public:
  GzipSource(gzFile gz, std::string path) : gz_(gz), path_(std::move(path)) {}
  ~GzipSource() override { gzclose(gz_); }

  absl::StatusOr<size_t> Read(char* dst, size_t n) override {
    const unsigned want = static_cast<unsigned>(std::min<size_t>(n, 1u << 30));
    const int r = gzread(gz_, dst, want);
    if (r > 0) return static_cast<size_t>(r);
    // At the end gzread returns 0 and keeps any error: a stream cut short
    // reports Z_BUF_ERROR ("unexpected end of file"), bad data Z_DATA_ERROR.
    int err = Z_OK;
    const char* message = gzerror(gz_, &err);
    if (r < 0 || err != Z_OK) {
      if (err == Z_ERRNO) {
        return absl::InternalError(absl::StrCat(path_, ": read failed: ", std::strerror(errno)));
      }
      return absl::DataLossError(
          absl::StrCat(path_, ": corrupt or truncated gzip: ", message != nullptr ? message : "?"));
    }
    return 0;
  }

 private:
  gzFile gz_;
  std::string path_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ChunkReader>> ChunkReader::Open(const proto::Chunk& chunk,
                                                               const Options& options) {
  const std::string& path = chunk.path();
  if (path.empty()) return absl::InvalidArgumentError("chunk has no path");
  if (chunk.begin() > chunk.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunk of ", path, ": begin ", chunk.begin(), " is after end ", chunk.end()));
  }
  if (chunk.first_line() == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunk of ", path, ": first_line is 0; lines are numbered from 1"));
  }
  if (chunk.gzip() && chunk.begin() != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunk of ", path, ": a gzip chunk is a whole file but begins at byte ", chunk.begin()));
  }
  if (chunk.begin() > static_cast<uint64_t>(std::numeric_limits<off_t>::max()) ||
      chunk.end() > static_cast<uint64_t>(std::numeric_limits<off_t>::max())) {
    return absl::InvalidArgumentError(absl::StrCat("chunk of ", path, ": offsets out of range"));
  }
  if (options.buffer_bytes == 0 || options.max_line_bytes == 0) {
    return absl::InvalidArgumentError("ChunkReader::Options: sizes must be >= 1");
  }

  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return OpenError(errno, path);
  std::unique_ptr<Source> source;
  if (chunk.gzip()) {
    gzFile gz = gzdopen(fd, "rb");
    if (gz == nullptr) {
      close(fd);
      return absl::ResourceExhaustedError(absl::StrCat("cannot open gzip stream on ", path));
    }
    // zlib reads the file in pieces of this size; bigger means fewer syscalls.
    gzbuffer(gz, 256 * 1024);
    source = std::make_unique<GzipSource>(gz, path);
  } else {
    // Tell the kernel to read ahead; failure only costs speed.
    posix_fadvise(fd, static_cast<off_t>(chunk.begin()),
                  static_cast<off_t>(chunk.end() - chunk.begin()), POSIX_FADV_SEQUENTIAL);
    source = std::make_unique<PreadSource>(fd, path, chunk.begin(), chunk.end());
  }
  return absl::WrapUnique(new ChunkReader(chunk, options, std::move(source)));
}

ChunkReader::ChunkReader(const proto::Chunk& chunk, const Options& options,
                         std::unique_ptr<Source> source)
    : chunk_(chunk),
      options_(options),
      source_(std::move(source)),
      // A small chunk needs no more than its size (+1 so that a read can
      // see the end without growing the buffer).
      buffer_(chunk.gzip() ? options.buffer_bytes
                           : static_cast<size_t>(std::min<uint64_t>(
                                 options.buffer_bytes, chunk.end() - chunk.begin() + 1))),
      next_line_(chunk.first_line()) {}

ChunkReader::~ChunkReader() = default;

bool ChunkReader::Fail(absl::Status status) {
  status_ = std::move(status);
  return false;
}

bool ChunkReader::Fill() {
  // Keep the partial line, moved to the front, and read after it.
  if (pos_ > 0) {
    std::memmove(buffer_.data(), buffer_.data() + pos_, len_ - pos_);
    len_ -= pos_;
    pos_ = 0;
  }
  if (len_ == buffer_.size()) {
    // Next() has checked len_ <= max_line_bytes, so this always grows.
    buffer_.resize(std::min(buffer_.size() * 2, options_.max_line_bytes + 1));
  }
  absl::StatusOr<size_t> n = source_->Read(buffer_.data() + len_, buffer_.size() - len_);
  if (!n.ok()) return Fail(n.status());
  if (*n == 0) {
    eof_ = true;
  } else {
    len_ += *n;
  }
  return true;
}

bool ChunkReader::Next(std::string_view* line, uint64_t* line_number) {
  if (!status_.ok()) return false;
  while (true) {
    const char* start = buffer_.data() + pos_;
    const size_t avail = len_ - pos_;
    const char* newline = static_cast<const char*>(
        avail > scan_ ? std::memchr(start + scan_, '\n', avail - scan_) : nullptr);
    size_t length = newline != nullptr ? static_cast<size_t>(newline - start) : avail;
    if (length > options_.max_line_bytes) {
      return Fail(absl::ResourceExhaustedError(absl::StrCat(chunk_.path(), ":", next_line_,
                                                            ": line longer than ",
                                                            options_.max_line_bytes, " bytes")));
    }
    if (newline == nullptr && !eof_) {
      scan_ = avail;
      if (!Fill()) return false;
      continue;
    }
    if (newline == nullptr && avail == 0) return false;  // clean end
    // A line with its '\n', or the last line of the data without one.
    const size_t consumed = newline != nullptr ? length + 1 : length;
    *line = std::string_view(start, length);
    *line_number = next_line_++;
    pos_ += consumed;
    scan_ = 0;
    bytes_consumed_ += consumed;
    return true;
  }
}

absl::Status ReadChunk(const proto::Chunk& chunk, BatchBuilder& builder, uint32_t batch_size,
                       const std::function<bool(models::Batch&&)>& emit,
                       const std::function<absl::Status(const BadLine&)>& on_bad, ReadStats* stats) {
  if (builder.size() != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("ReadChunk: builder holds ", builder.size(), " samples of another chunk"));
  }
  if (batch_size == 0) return absl::InvalidArgumentError("ReadChunk: batch_size must be >= 1");
  absl::StatusOr<std::unique_ptr<ChunkReader>> reader = ChunkReader::Open(chunk);
  if (!reader.ok()) return reader.status();

  ReadStats local;
  auto finish = [&](absl::Status status) {
    local.bytes = (*reader)->bytes_consumed();
    if (stats != nullptr) {
      stats->lines += local.lines;
      stats->bad_lines += local.bad_lines;
      stats->bytes += local.bytes;
    }
    if (!status.ok()) builder.Clear();
    return status;
  };
  // The position after the last line fully dealt with (added or skipped).
  uint64_t done_bytes = 0, done_line = chunk.first_line();
  auto emit_batch = [&](bool last) {
    models::Batch batch = builder.Finish();
    batch.chunk_id = chunk.id();
    batch.last_of_chunk = last;
    batch.consumed = done_bytes;
    batch.next_line = done_line;
    return emit(std::move(batch));
  };

  std::string_view line;
  uint64_t line_number = 0;
  for (uint64_t skip = chunk.skip_lines(); skip > 0 && (*reader)->Next(&line, &line_number); --skip) {
    done_bytes = (*reader)->bytes_consumed();
    done_line = line_number + 1;
  }
  while ((*reader)->Next(&line, &line_number)) {
    ++local.lines;
    absl::Status st = builder.AddLine(line);
    if (st.code() == absl::StatusCode::kResourceExhausted && builder.size() > 0) {
      // The batch's row indices are full: ship it and start the line afresh.
      if (!emit_batch(false)) return finish(absl::CancelledError("ReadChunk: stopped by emit"));
      st = builder.AddLine(line);
    }
    if (st.code() == absl::StatusCode::kInvalidArgument) {
      ++local.bad_lines;
      if (on_bad) {
        absl::Status stop = on_bad(BadLine{chunk.path(), line_number, std::string(st.message())});
        if (!stop.ok()) return finish(stop);
      }
      done_bytes = (*reader)->bytes_consumed();
      done_line = line_number + 1;
      continue;
    }
    if (!st.ok()) {
      return finish(absl::Status(st.code(),
                                 absl::StrCat(chunk.path(), ":", line_number, ": ", st.message())));
    }
    done_bytes = (*reader)->bytes_consumed();
    done_line = line_number + 1;
    if (static_cast<uint32_t>(builder.size()) >= batch_size && !emit_batch(false)) {
      return finish(absl::CancelledError("ReadChunk: stopped by emit"));
    }
  }
  if (!(*reader)->status().ok()) return finish((*reader)->status());
  done_bytes = (*reader)->bytes_consumed();
  if (!emit_batch(true)) return finish(absl::CancelledError("ReadChunk: stopped by emit"));
  return finish(absl::OkStatus());
}

}  // namespace ember::worker
