// Text files of the data tools, written once: lines of a plain or gzip
// file, CSV records, and buffered output to a plain or gzip file.
#ifndef EMBER_DATASETS_TEXT_IO_H_
#define EMBER_DATASETS_TEXT_IO_H_

#include <zlib.h>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ember::datasets {

// Debian's absl has its own string_view type; this is the bridge.
inline absl::string_view Av(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Lines of a plain or gzip file (zlib reads both, whatever the name), with
// '\r\n' taken as '\n'. Not thread-safe; owns the open file.
class LineReader {
 public:
  LineReader(const LineReader&) = delete;
  LineReader& operator=(const LineReader&) = delete;
  ~LineReader();

  // NotFound naming `path` when it is not a regular file or cannot be opened.
  static absl::StatusOr<std::unique_ptr<LineReader>> Open(const std::string& path);

  // Next line without its terminator in *line (valid until the next call);
  // false at the end of the file or on a read error (check status() then).
  // line_number() is the 1-based number of that line.
  bool Next(std::string_view* line);

  int64_t line_number() const { return line_number_; }
  const std::string& path() const { return path_; }
  // DataLoss naming the path after a read error, else OK.
  const absl::Status& status() const { return status_; }

 private:
  LineReader(std::string path, gzFile f);
  bool Finish(std::string_view* line);

  std::string path_;
  gzFile file_;
  std::string buf_;
  size_t pos_ = 0;
  size_t end_ = 0;
  bool eof_ = false;
  int64_t line_number_ = 0;
  absl::Status status_;
};

// Splits one CSV record on commas, honouring RFC 4180 quoting ("a, b" is one
// field; "" inside quotes is a quote). False on a stray or unterminated quote.
bool SplitCsv(std::string_view record, std::vector<std::string>* fields);

// Splits `s` on `sep` into views of `s` (no quoting); "" gives one empty field.
void SplitOn(std::string_view s, char sep, std::vector<std::string_view>* fields);

// Whole CSV records, joining lines while a quoted field is open.
// record_line() is the number of the record's first line.
class CsvReader {
 public:
  explicit CsvReader(std::unique_ptr<LineReader> in) : in_(std::move(in)) {}
  bool Next(std::string* record);
  int64_t record_line() const { return record_line_; }
  const std::string& path() const { return in_->path(); }
  const absl::Status& status() const { return in_->status(); }

 private:
  std::unique_ptr<LineReader> in_;
  int64_t record_line_ = 0;
};

// A file written in large blocks, plain or through zlib. Not thread-safe;
// the destructor closes a file not yet closed (errors then go unreported).
class OutputFile {
 public:
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;
  ~OutputFile();

  // Creates (truncates) `path`; gzip at zlib `level` (1..9) when `gzip`.
  // Internal naming the path on failure.
  static absl::StatusOr<std::unique_ptr<OutputFile>> Open(const std::string& path,
                                                          bool gzip = false, int level = 1);

  // Writes `data` as is. Internal naming the path on failure.
  absl::Status Write(std::string_view data);

  // Flushes and closes; the file's size on disk afterwards (compressed size
  // when gzip). Internal naming the path on failure.
  absl::StatusOr<uint64_t> Close();

  const std::string& path() const { return path_; }

 private:
  explicit OutputFile(std::string path) : path_(std::move(path)) {}
  std::string path_;
  std::FILE* plain_ = nullptr;
  gzFile gz_ = nullptr;
};

// Writes `text` to `path` through `path`.tmp and a rename, so that `path`
// is either absent, its old self, or complete. Internal naming the path.
absl::Status WriteFileAtomically(const std::string& path, std::string_view text);

}  // namespace ember::datasets

#endif  // EMBER_DATASETS_TEXT_IO_H_
