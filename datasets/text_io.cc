// Line and CSV readers and the plain/gzip writer shared by gen-data and the
// converters.
#include "datasets/text_io.h"

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"

namespace ember::datasets {
namespace {

namespace fs = std::filesystem;

constexpr size_t kReadBytes = size_t{1} << 20;

// Whether `s` ends inside a quoted CSV field: the record continues on the
// next line.
bool InsideQuotes(std::string_view s) {
  bool inside = false;
  for (char c : s) {
    if (c == '"') inside = !inside;
  }
  return inside;
}

}  // namespace

// ---------------------------------------------------------------------------
// Reading.

LineReader::LineReader(std::string path, gzFile f)
    : path_(std::move(path)), file_(f), buf_(kReadBytes, '\0') {}

LineReader::~LineReader() {
  if (file_ != nullptr) gzclose(file_);
}

absl::StatusOr<std::unique_ptr<LineReader>> LineReader::Open(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) {
    return absl::NotFoundError(absl::StrCat(path, ": no such file"));
  }
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  }
  gzbuffer(f, 1 << 18);
  return std::unique_ptr<LineReader>(new LineReader(path, f));
}

bool LineReader::Next(std::string_view* line) {
  for (;;) {
    const size_t avail = end_ - pos_;
    const char* nl = static_cast<const char*>(std::memchr(buf_.data() + pos_, '\n', avail));
    if (nl != nullptr) {
      const size_t len = nl - (buf_.data() + pos_);
      *line = std::string_view(buf_.data() + pos_, len);
      pos_ += len + 1;
      return Finish(line);
    }
    if (eof_) {
      if (avail == 0) return false;
      *line = std::string_view(buf_.data() + pos_, avail);
      pos_ = end_;
      return Finish(line);
    }
    // Move the partial line to the front and read more behind it.
    std::memmove(buf_.data(), buf_.data() + pos_, avail);
    pos_ = 0;
    end_ = avail;
    if (buf_.size() - end_ < kReadBytes / 2) buf_.resize(buf_.size() * 2);
    const int n = gzread(file_, buf_.data() + end_, static_cast<unsigned>(buf_.size() - end_));
    if (n < 0) {
      int err = 0;
      const char* msg = gzerror(file_, &err);
      status_ = absl::DataLossError(absl::StrCat(path_, ": read error: ", msg));
      return false;
    }
    if (n == 0) eof_ = true;
    end_ += n;
  }
}

bool LineReader::Finish(std::string_view* line) {
  if (!line->empty() && line->back() == '\r') line->remove_suffix(1);
  ++line_number_;
  return true;
}

bool SplitCsv(std::string_view rec, std::vector<std::string>* fields) {
  fields->clear();
  size_t i = 0;
  for (;;) {
    std::string field;
    if (i < rec.size() && rec[i] == '"') {
      ++i;
      for (;;) {
        if (i >= rec.size()) return false;  // unterminated quote
        if (rec[i] == '"') {
          if (i + 1 < rec.size() && rec[i + 1] == '"') {
            field.push_back('"');
            i += 2;
            continue;
          }
          ++i;
          break;
        }
        field.push_back(rec[i++]);
      }
      if (i < rec.size() && rec[i] != ',') return false;  // text after the closing quote
    } else {
      const size_t comma = rec.find(',', i);
      const size_t stop = comma == std::string_view::npos ? rec.size() : comma;
      field.assign(rec.substr(i, stop - i));
      if (field.find('"') != std::string::npos) return false;
      i = stop;
    }
    fields->push_back(std::move(field));
    if (i >= rec.size()) return true;
    ++i;  // the comma
    if (i == rec.size()) {
      fields->emplace_back();
      return true;
    }
  }
}

void SplitOn(std::string_view s, char sep, std::vector<std::string_view>* f) {
  f->clear();
  for (size_t i = 0;;) {
    const size_t p = s.find(sep, i);
    if (p == std::string_view::npos) {
      f->push_back(s.substr(i));
      return;
    }
    f->push_back(s.substr(i, p - i));
    i = p + 1;
  }
}

bool CsvReader::Next(std::string* record) {
  std::string_view line;
  if (!in_->Next(&line)) return false;
  record_line_ = in_->line_number();
  record->assign(line);
  while (InsideQuotes(*record)) {
    if (!in_->Next(&line)) break;  // SplitCsv reports the open quote
    record->push_back('\n');
    record->append(line);
  }
  return true;
}

// ---------------------------------------------------------------------------
// Writing.

OutputFile::~OutputFile() {
  if (plain_ != nullptr) std::fclose(plain_);
  if (gz_ != nullptr) gzclose(gz_);
}

absl::StatusOr<std::unique_ptr<OutputFile>> OutputFile::Open(const std::string& path, bool gzip,
                                                             int level) {
  std::unique_ptr<OutputFile> f(new OutputFile(path));
  if (gzip) {
    const std::string mode = absl::StrCat("wb", level);
    f->gz_ = gzopen(path.c_str(), mode.c_str());
    if (f->gz_ == nullptr) return absl::InternalError(absl::StrCat("cannot create ", path));
    gzbuffer(f->gz_, 256 * 1024);
  } else {
    f->plain_ = std::fopen(path.c_str(), "wb");
    if (f->plain_ == nullptr) {
      return absl::InternalError(absl::StrCat("cannot create ", path, ": ", std::strerror(errno)));
    }
  }
  return f;
}

absl::Status OutputFile::Write(std::string_view data) {
  if (data.empty()) return absl::OkStatus();
  if (plain_ != nullptr) {
    if (std::fwrite(data.data(), 1, data.size(), plain_) != data.size()) {
      return absl::InternalError(
          absl::StrCat("write failed on ", path_, ": ", std::strerror(errno)));
    }
  } else if (gzwrite(gz_, data.data(), static_cast<unsigned>(data.size())) !=
             static_cast<int>(data.size())) {
    int err = 0;
    const char* msg = gzerror(gz_, &err);
    return absl::InternalError(absl::StrCat("write failed on ", path_, ": ", msg));
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> OutputFile::Close() {
  if (plain_ != nullptr) {
    const int rc = std::fclose(plain_);
    plain_ = nullptr;
    if (rc != 0) {
      return absl::InternalError(
          absl::StrCat("close failed on ", path_, ": ", std::strerror(errno)));
    }
  } else if (gz_ != nullptr) {
    const int rc = gzclose(gz_);
    gz_ = nullptr;
    if (rc != Z_OK) {
      return absl::InternalError(absl::StrCat("close failed on ", path_, " (zlib ", rc, ")"));
    }
  }
  std::error_code ec;
  const uint64_t size = fs::file_size(path_, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot stat ", path_, ": ", ec.message()));
  return size;
}

absl::Status WriteFileAtomically(const std::string& path, std::string_view text) {
  const std::string tmp = path + ".tmp";
  absl::StatusOr<std::unique_ptr<OutputFile>> file = OutputFile::Open(tmp);
  if (!file.ok()) return file.status();
  absl::Status st = (*file)->Write(text);
  if (!st.ok()) return st;
  absl::StatusOr<uint64_t> closed = (*file)->Close();
  if (!closed.ok()) return closed.status();
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot rename ", tmp, " to ", path, ": ", ec.message()));
  }
  return absl::OkStatus();
}

}  // namespace ember::datasets
