// Data file listing and chunk cutting. The cut walks each plain file once,
// memchr from newline to newline, emitting a chunk at the first newline at
// or past each target size.
#include "scheduler/chunks.h"

#include <fcntl.h>
#include <glob.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "storage/fd.h"

namespace ember::scheduler {
namespace {

namespace fs = std::filesystem;

absl::Status ErrorCodeToStatus(const std::error_code& ec, const std::string& message) {
  return absl::ErrnoToStatus(ec.value(), message);
}

bool IsRegularFile(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

absl::StatusOr<std::vector<std::string>> ListDirectory(const std::string& dir) {
  std::vector<std::string> files;
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  if (ec) return ErrorCodeToStatus(ec, absl::StrCat("cannot list data directory ", dir));
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    if (ec) break;
    const std::string name = it->path().filename().string();
    if (name.empty() || name[0] == '.') continue;
    // is_regular_file follows symlinks, so a link to a data file counts.
    std::error_code type_ec;
    if (!it->is_regular_file(type_ec) || type_ec) continue;
    files.push_back(it->path().string());
  }
  if (ec) return ErrorCodeToStatus(ec, absl::StrCat("cannot list data directory ", dir));
  if (files.empty()) {
    return absl::NotFoundError(absl::StrCat("data directory ", dir, " holds no data files"));
  }
  std::sort(files.begin(), files.end());
  return files;
}

absl::StatusOr<std::vector<std::string>> ListGlob(const std::string& pattern) {
  glob_t g;
  std::memset(&g, 0, sizeof(g));
  const int rc = glob(pattern.c_str(), 0, nullptr, &g);
  std::vector<std::string> files;
  if (rc == 0) {
    for (size_t i = 0; i < g.gl_pathc; ++i) {
      if (IsRegularFile(g.gl_pathv[i])) files.push_back(g.gl_pathv[i]);
    }
  }
  globfree(&g);
  if (rc != 0 && rc != GLOB_NOMATCH) {
    return absl::InternalError(
        absl::StrCat("cannot expand data pattern ", pattern,
                     rc == GLOB_NOSPACE ? ": out of memory" : ": read error"));
  }
  if (files.empty()) {
    return absl::NotFoundError(absl::StrCat("no data file matches ", pattern));
  }
  std::sort(files.begin(), files.end());  // glob sorts, but by the locale's collation
  return files;
}

proto::Chunk MakeChunk(uint64_t id, const std::string& path, uint64_t begin, uint64_t end,
                       uint64_t first_line, bool gzip) {
  proto::Chunk c;
  c.set_id(id);
  c.set_path(path);
  c.set_begin(begin);
  c.set_end(end);
  c.set_first_line(first_line);
  c.set_gzip(gzip);
  return c;
}

// Appends the chunks of the plain file `path`.
absl::Status CutPlainFile(const std::string& path, uint64_t chunk_bytes,
                          std::vector<proto::Chunk>* chunks) {
  const storage::Fd owned(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  const int fd = owned.get();
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("cannot open data file ", path));
  posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);  // only a hint

  constexpr size_t kBufferBytes = size_t{4} << 20;
  std::unique_ptr<char[]> buffer(new char[kBufferBytes]);
  uint64_t offset = 0;      // file offset of buffer[0]
  uint64_t begin = 0;       // current chunk
  uint64_t first_line = 1;  // its first line
  uint64_t newlines = 0;    // newlines before the current read position
  while (true) {
    const ssize_t n = read(fd, buffer.get(), kBufferBytes);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, absl::StrCat("cannot read data file ", path));
    }
    if (n == 0) break;
    const char* p = buffer.get();
    const char* end = p + n;
    while (p < end) {
      // The chunk may end after a newline at byte begin + chunk_bytes - 1 or
      // later; newlines before that only need counting.
      const uint64_t cut_from =
          chunk_bytes - 1 > UINT64_MAX - begin ? UINT64_MAX : begin + chunk_bytes - 1;
      const uint64_t here = offset + static_cast<uint64_t>(p - buffer.get());
      if (here < cut_from) {
        const char* stop =
            cut_from - offset < static_cast<uint64_t>(n) ? buffer.get() + (cut_from - offset) : end;
        newlines += static_cast<uint64_t>(std::count(p, stop, '\n'));
        p = stop;
        continue;
      }
      const char* nl = static_cast<const char*>(std::memchr(p, '\n', end - p));
      if (nl == nullptr) break;  // the boundary lies in a later read
      ++newlines;
      const uint64_t cut = offset + static_cast<uint64_t>(nl - buffer.get()) + 1;
      chunks->push_back(MakeChunk(chunks->size(), path, begin, cut, first_line, false));
      begin = cut;
      first_line = newlines + 1;
      p = nl + 1;
    }
    offset += static_cast<uint64_t>(n);
  }
  // The rest of the file, if any: whole lines, plus perhaps one without '\n'.
  if (offset > begin) {
    chunks->push_back(MakeChunk(chunks->size(), path, begin, offset, first_line, false));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ListDataFiles(const std::string& spec) {
  if (spec.empty()) return absl::InvalidArgumentError("empty data path");
  std::error_code ec;
  const fs::file_status status = fs::status(spec, ec);
  if (!ec && fs::is_directory(status)) return ListDirectory(spec);
  if (!ec && fs::exists(status)) {
    if (!fs::is_regular_file(status)) {
      return absl::InvalidArgumentError(absl::StrCat("data path ", spec, " is not a regular file"));
    }
    return std::vector<std::string>{spec};
  }
  // A name that exists is taken literally even if it holds '*'; only a
  // missing one is tried as a pattern.
  if (spec.find_first_of("*?[") != std::string::npos) return ListGlob(spec);
  if (ec && ec != std::errc::no_such_file_or_directory) {
    return ErrorCodeToStatus(ec, absl::StrCat("cannot access data path ", spec));
  }
  return absl::NotFoundError(absl::StrCat("data path ", spec, " does not exist"));
}

absl::StatusOr<std::vector<proto::Chunk>> CutChunks(const std::vector<std::string>& files,
                                                    uint64_t chunk_bytes) {
  if (chunk_bytes == 0) return absl::InvalidArgumentError("chunk_bytes must be >= 1");
  std::vector<proto::Chunk> chunks;
  for (const std::string& path : files) {
    if (absl::EndsWith(path, ".gz")) {
      struct stat st;
      if (stat(path.c_str(), &st) != 0) {
        return absl::ErrnoToStatus(errno, absl::StrCat("cannot stat data file ", path));
      }
      if (st.st_size == 0) continue;
      chunks.push_back(
          MakeChunk(chunks.size(), path, 0, static_cast<uint64_t>(st.st_size), 1, true));
      continue;
    }
    absl::Status st = CutPlainFile(path, chunk_bytes, &chunks);
    if (!st.ok()) return st;
  }
  return chunks;
}

}  // namespace ember::scheduler
