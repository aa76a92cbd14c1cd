// The data converters behind `ember convert`; formats and output layout are
// described atop convert.h.
#include "launch/convert.h"

#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "glog/logging.h"
#include "proto/config.h"

namespace ember::launch {
namespace {

namespace fs = std::filesystem;

// Debian's absl has its own string_view type; this is the bridge.
absl::string_view Av(std::string_view s) { return absl::string_view(s.data(), s.size()); }

constexpr size_t kReadBytes = size_t{1} << 20;
constexpr size_t kFlushBytes = size_t{1} << 20;
constexpr size_t kMaxBadLineExamples = 10;
// Tables of the emitted configs: Adagrad suits sparse rows that are seen a
// few times each.
constexpr std::string_view kAdagrad =
    "optimizer { kind: ADAGRAD learning_rate: 0.05 initial_accumulator: 0.1 }";
constexpr std::string_view kModel =
    "model {\n"
    "  kind: EMBEDDING_MLP\n"
    "  hidden: 64\n"
    "  hidden: 32\n"
    "  dense_optimizer { kind: ADAM learning_rate: 0.002 }\n"
    "}\n";

// SplitMix64's finaliser: the row hash of the splits and of the shuffle.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

double RowUnit(uint64_t seed, uint64_t row) {
  return static_cast<double>(Mix(Mix(seed) ^ row) >> 11) * 0x1.0p-53;
}

// ---------------------------------------------------------------------------
// Input: lines of a plain or gzip file (zlib reads both), '\r\n' tolerated.

class LineReader {
 public:
  LineReader(const LineReader&) = delete;
  LineReader& operator=(const LineReader&) = delete;
  ~LineReader() {
    if (file_ != nullptr) gzclose(file_);
  }

  static absl::StatusOr<std::unique_ptr<LineReader>> Open(const std::string& path) {
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

  // Next line without its terminator in *line; false at the end of the file
  // (check status() then). line_number() is the 1-based number of that line.
  bool Next(std::string_view* line) {
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

  int64_t line_number() const { return line_number_; }
  const std::string& path() const { return path_; }
  const absl::Status& status() const { return status_; }

 private:
  LineReader(std::string path, gzFile f)
      : path_(std::move(path)), file_(f), buf_(kReadBytes, '\0') {}

  bool Finish(std::string_view* line) {
    if (!line->empty() && line->back() == '\r') line->remove_suffix(1);
    ++line_number_;
    return true;
  }

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
// field; "" inside quotes is a quote). False on a stray quote.
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

// Whether `s` ends inside a quoted CSV field: the record continues on the
// next line.
bool InsideQuotes(std::string_view s) {
  bool inside = false;
  for (char c : s) {
    if (c == '"') inside = !inside;
  }
  return inside;
}

// Reads whole CSV records, joining lines while a quoted field is open.
// record_line() is the number of the record's first line.
class CsvReader {
 public:
  explicit CsvReader(std::unique_ptr<LineReader> in) : in_(std::move(in)) {}
  bool Next(std::string* record) {
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
  int64_t record_line() const { return record_line_; }
  const std::string& path() const { return in_->path(); }
  const absl::Status& status() const { return in_->status(); }

 private:
  std::unique_ptr<LineReader> in_;
  int64_t record_line_ = 0;
};

// ---------------------------------------------------------------------------
// Bad lines: skipped and counted until the budget is spent.

class BadLines {
 public:
  BadLines(uint64_t budget, ConvertSummary* summary) : budget_(budget), summary_(summary) {}

  // Records a malformed line; an error once more than the budget were seen.
  absl::Status Add(const std::string& path, int64_t line, std::string_view reason) {
    std::string msg = absl::StrCat(path, ":", line, ": ", Av(reason));
    ++summary_->bad_lines;
    if (summary_->bad_lines > budget_) {
      return absl::InvalidArgumentError(absl::StrCat(msg, " (bad line ", summary_->bad_lines,
                                                     ", more than max_bad_lines = ", budget_, ")"));
    }
    if (summary_->bad_line_examples.size() < kMaxBadLineExamples) {
      LOG(WARNING) << "convert: skipping " << msg;
      summary_->bad_line_examples.push_back(std::move(msg));
    }
    return absl::OkStatus();
  }

 private:
  uint64_t budget_;
  ConvertSummary* summary_;
};

// ---------------------------------------------------------------------------
// Output.

class Writer {
 public:
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;
  ~Writer() {
    if (file_ != nullptr) std::fclose(file_);
  }

  static absl::StatusOr<std::unique_ptr<Writer>> Open(const std::string& path) {
    FILE* f = std::fopen(path.c_str(), "wb");
    if (f == nullptr) {
      return absl::InternalError(absl::StrCat("cannot create ", path, ": ", std::strerror(errno)));
    }
    return std::unique_ptr<Writer>(new Writer(path, f));
  }

  // Appends `line` and a newline.
  absl::Status Line(std::string_view line) {
    buf_.append(line);
    buf_.push_back('\n');
    ++rows_;
    return buf_.size() >= kFlushBytes ? Flush() : absl::OkStatus();
  }

  absl::Status Close() {
    absl::Status st = Flush();
    const int rc = std::fclose(file_);
    file_ = nullptr;
    if (st.ok() && rc != 0) {
      st = absl::InternalError(absl::StrCat("cannot write ", path_, ": ", std::strerror(errno)));
    }
    return st;
  }

  uint64_t rows() const { return rows_; }
  const std::string& path() const { return path_; }

 private:
  Writer(std::string path, FILE* f) : path_(std::move(path)), file_(f) {}

  absl::Status Flush() {
    if (!buf_.empty() && std::fwrite(buf_.data(), 1, buf_.size(), file_) != buf_.size()) {
      return absl::InternalError(absl::StrCat("cannot write ", path_, ": ", std::strerror(errno)));
    }
    buf_.clear();
    return absl::OkStatus();
  }

  std::string path_;
  FILE* file_;
  std::string buf_;
  uint64_t rows_ = 0;
};

enum Split { kTrain = 0, kValid = 1, kTest = 2 };
constexpr const char* kSplitDirs[] = {"train", "valid", "test"};
constexpr const char* kPartName = "part-00000.tsv";

bool IsOwnDataFile(std::string_view name) {
  if (!name.starts_with("part-") || !name.ends_with(".tsv")) return false;
  name.remove_prefix(5);
  name.remove_suffix(4);
  return !name.empty() &&
         std::all_of(name.begin(), name.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// Checks and clears the output directory, then opens one writer per split in
// use (valid only when `with_valid`).
class Outputs {
 public:
  absl::Status Open(const ConvertOptions& o, bool with_valid) {
    const fs::path root(o.out_dir);
    std::vector<fs::path> stale;
    std::error_code ec;
    const fs::path conf = root / "job.conf";
    if (fs::exists(conf, ec)) {
      if (!o.overwrite) {
        return absl::FailedPreconditionError(absl::StrCat(
            conf.string(), " exists; pass overwrite=true to replace an earlier conversion"));
      }
      stale.push_back(conf);  // first: an interrupted run must not look complete
    }
    for (const char* sub : kSplitDirs) {
      const fs::path dir = root / sub;
      if (!fs::exists(dir, ec)) continue;
      if (!fs::is_directory(dir, ec)) {
        return absl::FailedPreconditionError(
            absl::StrCat(dir.string(), " exists and is not a directory"));
      }
      for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
        const std::string name = it->path().filename().string();
        if (!o.overwrite) {
          return absl::FailedPreconditionError(
              absl::StrCat(dir.string(), " is not empty (holds ", name,
                           "); pass overwrite=true to replace an earlier conversion"));
        }
        if (!IsOwnDataFile(name) || !it->is_regular_file()) {
          return absl::FailedPreconditionError(absl::StrCat(
              dir.string(), " holds ", name,
              ", which convert did not write and a trainer would read; remove it or pick "
              "another out_dir"));
        }
        stale.push_back(it->path());
      }
      if (ec) {
        return absl::InternalError(absl::StrCat("cannot list ", dir.string(), ": ", ec.message()));
      }
    }
    for (const fs::path& p : stale) {
      if (!fs::remove(p, ec) && ec) {
        return absl::InternalError(absl::StrCat("cannot remove ", p.string(), ": ", ec.message()));
      }
    }
    for (int s = kTrain; s <= kTest; ++s) {
      if (s == kValid && !with_valid) continue;
      const fs::path dir = root / kSplitDirs[s];
      fs::create_directories(dir, ec);
      if (ec) {
        return absl::InternalError(
            absl::StrCat("cannot create ", dir.string(), ": ", ec.message()));
      }
      absl::StatusOr<std::unique_ptr<Writer>> w = Writer::Open((dir / kPartName).string());
      if (!w.ok()) return w.status();
      writers_[s] = *std::move(w);
    }
    return absl::OkStatus();
  }

  Writer& operator[](Split s) { return *writers_[s]; }

  // Closes every writer and fills the row counts and file list of `summary`.
  absl::Status Close(ConvertSummary* summary) {
    for (int s = kTrain; s <= kTest; ++s) {
      if (writers_[s] == nullptr) continue;
      absl::Status st = writers_[s]->Close();
      if (!st.ok()) return st;
      summary->files.push_back(writers_[s]->path());
    }
    summary->train_rows = writers_[kTrain]->rows();
    summary->valid_rows = writers_[kValid] ? writers_[kValid]->rows() : 0;
    summary->test_rows = writers_[kTest]->rows();
    return absl::OkStatus();
  }

 private:
  std::unique_ptr<Writer> writers_[3];
};

// Parses `text` as the job config it is meant to be, and writes it as
// out_dir/job.conf. A config that does not validate is a bug here, reported
// as Internal rather than written.
absl::Status WriteConfig(const ConvertOptions& o, const std::string& text,
                         ConvertSummary* summary) {
  const std::string path = (fs::path(o.out_dir) / "job.conf").string();
  absl::StatusOr<proto::JobConfig> config = proto::ParseJobConfig(text, path);
  absl::Status st = config.ok() ? proto::ValidateJobConfig(*config) : config.status();
  if (!st.ok()) {
    return absl::InternalError(absl::StrCat("convert built an invalid config: ", st.message()));
  }
  for (const proto::ColumnConfig& c : config->data().columns()) {
    if (c.type() == proto::ColumnConfig::LABEL) summary->label_names.push_back(c.name());
  }
  absl::StatusOr<std::unique_ptr<Writer>> w = Writer::Open(path);
  if (!w.ok()) return w.status();
  std::string_view body(text);
  if (body.ends_with('\n')) body.remove_suffix(1);
  st = (*w)->Line(body);
  if (st.ok()) st = (*w)->Close();
  if (st.ok()) summary->files.push_back(path);
  return st;
}

std::string TableText(std::string_view name, int dim, std::string_view comment) {
  return absl::StrCat("tables {\n  name: \"", Av(name), "\"  # ", Av(comment), "\n  dim: ", dim,
                      "\n  ", Av(kAdagrad), "\n}\n");
}

std::string Quoted(std::string_view s) { return absl::StrCat("\"", Av(s), "\""); }

// A value that may go into a tab-separated field unchanged.
bool FieldSafe(std::string_view s) { return s.find_first_of("\t\n\r") == std::string_view::npos; }

std::string_view Trim(std::string_view s) {
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  while (!s.empty() && s.back() == ' ') s.remove_suffix(1);
  return s;
}

bool ParseDouble(std::string_view s, double* out) {
  return absl::SimpleAtod(Av(s), out) && std::isfinite(*out);
}

// log(1 + max(x, 0)), 6 significant digits: squeezes counts and money
// amounts of any size into a range an MLP takes well.
void AppendLog1p(double x, std::string* out) {
  char buf[32];
  const int n = std::snprintf(buf, sizeof(buf), "%.6g", std::log1p(std::max(x, 0.0)));
  out->append(buf, n);
}

double Fraction(double v, double format_default) { return v < 0 ? format_default : v; }

// ---------------------------------------------------------------------------
// movielens

struct Rating {
  uint32_t user = 0;  // index into the distinct users, in order of first rating
  int64_t movie = 0;
  int64_t timestamp = 0;
  bool positive = false;
};

struct Movie {
  std::string category;  // first genre
  std::string genres;    // '|'-joined, as in movies.csv
};

absl::Status ReadMovies(const std::string& path, BadLines& bad,
                        std::unordered_map<int64_t, Movie>* movies) {
  absl::StatusOr<std::unique_ptr<LineReader>> in = LineReader::Open(path);
  if (!in.ok()) return in.status();
  CsvReader csv(*std::move(in));
  std::string rec;
  std::vector<std::string> f;
  while (csv.Next(&rec)) {
    if (csv.record_line() == 1 && rec.starts_with("movieId,")) continue;  // header
    absl::Status st;
    int64_t id = 0;
    if (!SplitCsv(rec, &f)) {
      st = bad.Add(csv.path(), csv.record_line(), "malformed CSV quoting");
    } else if (f.size() != 3) {
      st =
          bad.Add(csv.path(), csv.record_line(), absl::StrCat("expected 3 fields, got ", f.size()));
    } else if (!absl::SimpleAtoi(f[0], &id)) {
      st = bad.Add(csv.path(), csv.record_line(),
                   absl::StrCat("movieId '", f[0], "' is not an integer"));
    } else if (!FieldSafe(f[2]) || f[2].find(',') != std::string::npos) {
      // Genres go into comma-separated sequence columns.
      st = bad.Add(csv.path(), csv.record_line(), "genres contain a comma, tab or newline");
    } else {
      Movie m;
      m.genres = f[2];
      m.category = m.genres.substr(0, m.genres.find('|'));
      if (m.category.empty()) m.category = "unknown";
      if (!movies->emplace(id, std::move(m)).second) {
        st = bad.Add(csv.path(), csv.record_line(), absl::StrCat("duplicate movieId ", id));
      }
    }
    if (!st.ok()) return st;
  }
  return csv.status();
}

// A rating of a movie missing from movies.csv is a bad line: the catalogue
// and the ratings disagree, and the row would have no category.
absl::Status ReadRatings(const std::string& path, const std::unordered_map<int64_t, Movie>& movies,
                         BadLines& bad, std::vector<Rating>* ratings,
                         std::vector<int64_t>* user_ids) {
  absl::StatusOr<std::unique_ptr<LineReader>> in = LineReader::Open(path);
  if (!in.ok()) return in.status();
  LineReader& r = **in;
  std::unordered_map<int64_t, uint32_t> user_index;
  std::vector<std::string> f;
  std::string_view line;
  while (r.Next(&line)) {
    if (r.line_number() == 1 && line.starts_with("userId,")) continue;  // header
    int64_t user = 0;
    double value = 0;
    Rating rt;
    std::string why;
    if (!SplitCsv(line, &f)) {
      why = "malformed CSV quoting";
    } else if (f.size() != 4) {
      why = absl::StrCat("expected 4 fields, got ", f.size());
    } else if (!absl::SimpleAtoi(f[0], &user)) {
      why = absl::StrCat("userId '", f[0], "' is not an integer");
    } else if (!absl::SimpleAtoi(f[1], &rt.movie)) {
      why = absl::StrCat("movieId '", f[1], "' is not an integer");
    } else if (!ParseDouble(f[2], &value)) {
      why = absl::StrCat("rating '", f[2], "' is not a number");
    } else if (!absl::SimpleAtoi(f[3], &rt.timestamp)) {
      why = absl::StrCat("timestamp '", f[3], "' is not an integer");
    } else if (!movies.contains(rt.movie)) {
      why = absl::StrCat("movieId ", rt.movie, " is not in movies.csv");
    }
    if (!why.empty()) {
      absl::Status st = bad.Add(r.path(), r.line_number(), why);
      if (!st.ok()) return st;
      continue;
    }
    rt.positive = value >= 4;
    auto [it, inserted] = user_index.emplace(user, static_cast<uint32_t>(user_ids->size()));
    if (inserted) user_ids->push_back(user);
    rt.user = it->second;
    ratings->push_back(rt);
  }
  return r.status();
}

absl::Status ConvertMovielens(const ConvertOptions& o, ConvertSummary* summary) {
  BadLines bad(o.max_bad_lines, summary);
  const fs::path dir(o.input);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(
        absl::StrCat(o.input,
                     ": not a directory (movielens wants the one holding ratings.csv and "
                     "movies.csv)"));
  }
  std::unordered_map<int64_t, Movie> movies;
  absl::Status st = ReadMovies((dir / "movies.csv").string(), bad, &movies);
  if (!st.ok()) return st;
  std::vector<Rating> ratings;
  std::vector<int64_t> user_ids;
  st = ReadRatings((dir / "ratings.csv").string(), movies, bad, &ratings, &user_ids);
  if (!st.ok()) return st;

  // Group by user, then time; equal timestamps by movie so that the output
  // does not depend on the input's order.
  std::sort(ratings.begin(), ratings.end(), [&](const Rating& a, const Rating& b) {
    if (a.user != b.user) return user_ids[a.user] < user_ids[b.user];
    if (a.timestamp != b.timestamp) return a.timestamp < b.timestamp;
    return a.movie < b.movie;
  });

  const double test_fraction = Fraction(o.test_fraction, 0.2);
  // Split per user and remember each rating's user range.
  std::vector<uint64_t> train, test;
  std::vector<uint64_t> user_begin(ratings.size());
  for (size_t b = 0; b < ratings.size();) {
    size_t e = b;
    while (e < ratings.size() && ratings[e].user == ratings[b].user) ++e;
    const size_t n = e - b;
    size_t n_test = 0;
    if (n >= 2) {
      n_test = static_cast<size_t>(std::floor(static_cast<double>(n) * test_fraction));
      n_test = std::clamp<size_t>(n_test, test_fraction > 0 ? 1 : 0, n - 1);
    }
    for (size_t i = b; i < e; ++i) {
      user_begin[i] = b;
      (i < e - n_test ? train : test).push_back(i);
    }
    b = e;
  }
  if (o.shuffle_train) {
    const uint64_t salt = Mix(o.seed ^ 0x5bd1e995ULL);
    std::sort(train.begin(), train.end(), [&](uint64_t a, uint64_t b) {
      const uint64_t ha = Mix(salt ^ a), hb = Mix(salt ^ b);
      return ha != hb ? ha < hb : a < b;
    });
  }

  Outputs out;
  st = out.Open(o, /*with_valid=*/false);
  if (!st.ok()) return st;
  auto movie_of = [&](int64_t id) -> const Movie& { return movies.at(id); };
  uint64_t positives = 0;
  std::string line;
  for (Split split : {kTrain, kTest}) {
    for (uint64_t p : split == kTrain ? train : test) {
      const Rating& r = ratings[p];
      const uint64_t b = user_begin[p];
      // History: ratings strictly older than this one. Ratings in the same
      // second are not history: their order within the second is unknown.
      uint64_t q = p;
      while (q > b && ratings[q - 1].timestamp == r.timestamp) --q;
      const uint64_t h0 = q - b > o.max_history ? q - o.max_history : b;
      const Movie& m = movie_of(r.movie);
      positives += r.positive;
      line.clear();
      absl::StrAppend(&line, r.positive ? "1" : "0", "\t", user_ids[r.user], "\t", r.movie, "\t",
                      m.category, "\t", m.genres, "\t");
      for (uint64_t i = h0; i < q; ++i) absl::StrAppend(&line, i > h0 ? "," : "", ratings[i].movie);
      line.push_back('\t');
      for (uint64_t i = h0; i < q; ++i) {
        absl::StrAppend(&line, i > h0 ? "," : "", movie_of(ratings[i].movie).category);
      }
      absl::StrAppend(&line, "\t", r.timestamp, "\t");
      for (uint64_t i = h0; i < q; ++i) {
        absl::StrAppend(&line, i > h0 ? "," : "", ratings[i].timestamp);
      }
      st = out[split].Line(line);
      if (!st.ok()) return st;
    }
  }
  st = out.Close(summary);
  if (!st.ok()) return st;

  const std::string conf = absl::StrCat(
      "# MovieLens as a CTR task (written by `ember convert movielens`): label is\n"
      "# rating >= 4; the behaviour sequence is the user's strictly earlier movies,\n"
      "# oldest first, at most ",
      o.max_history, ". Test = each user's last ", test_fraction * 100,
      "% of ratings by time.\n"
      "# Paths are relative to the working directory; `--data_dir` overrides them.\n"
      "name: \"movielens\"\n\n",
      TableText("user", 16, "user_id"),
      TableText("item", 16, "item_id and hist_items: one row per movie in both"),
      TableText("cat", 8, "genres: item_cat, hist_cats (shared slot), item_genres"),
      "\ndata {\n"
      "  train: \"train\"\n"
      "  test: \"test\"\n"
      "  batch_size: 256\n"
      "  user_column: \"user_id\"  # for GAUC\n"
      "  columns { name: \"label\" type: LABEL }\n"
      "  columns { name: \"user_id\" type: SPARSE table: \"user\" slot: 1 }\n"
      "  # The candidate and the history share table and slot: movie 42 is one row.\n"
      "  columns { name: \"item_id\" type: SPARSE table: \"item\" slot: 2 }\n"
      "  columns { name: \"item_cat\" type: SPARSE table: \"cat\" slot: 3 }\n"
      "  columns {\n"
      "    name: \"item_genres\" type: MULTI_SPARSE table: \"cat\" slot: 4 separator: \"|\"\n"
      "    missing: \"(no genres listed)\"\n"
      "  }\n"
      "  columns { name: \"hist_items\" type: SEQUENCE table: \"item\" slot: 2 separator: \",\" "
      "max_len: ",
      o.max_history,
      " }\n"
      "  columns { name: \"hist_cats\" type: SEQUENCE table: \"cat\" slot: 3 separator: \",\" "
      "max_len: ",
      o.max_history,
      " }\n"
      "  # Unix seconds of the rating and of each history item: for inspection and\n"
      "  # time-aware models; the sum-pooling model reads past them.\n"
      "  columns { name: \"timestamp\" type: IGNORE }\n"
      "  columns { name: \"hist_timestamps\" type: IGNORE }\n"
      "}\n\n",
      Av(kModel), "\ntrain { epochs: 2 }\n");
  st = WriteConfig(o, conf, summary);
  if (!st.ok()) return st;
  summary->label_positives = {positives};
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// census

constexpr int kCensusColumns = 42;
constexpr const char* kCensusNames[kCensusColumns] = {"age",
                                                      "class_worker",
                                                      "det_ind_code",
                                                      "det_occ_code",
                                                      "education",
                                                      "wage_per_hour",
                                                      "hs_college",
                                                      "marital_stat",
                                                      "major_ind_code",
                                                      "major_occ_code",
                                                      "race",
                                                      "hisp_origin",
                                                      "sex",
                                                      "union_member",
                                                      "unemp_reason",
                                                      "full_or_part_emp",
                                                      "capital_gains",
                                                      "capital_losses",
                                                      "stock_dividends",
                                                      "tax_filer_stat",
                                                      "region_prev_res",
                                                      "state_prev_res",
                                                      "det_hh_fam_stat",
                                                      "det_hh_summ",
                                                      "instance_weight",
                                                      "mig_chg_msa",
                                                      "mig_chg_reg",
                                                      "mig_move_reg",
                                                      "mig_same",
                                                      "mig_prev_sunbelt",
                                                      "num_emp",
                                                      "fam_under_18",
                                                      "country_father",
                                                      "country_mother",
                                                      "country_self",
                                                      "citizenship",
                                                      "own_or_self",
                                                      "vet_question",
                                                      "vet_benefits",
                                                      "weeks_worked",
                                                      "year",
                                                      "income_50k"};
constexpr int kAge = 0, kMarital = 7, kWeight = 24, kIncome = 41;

// Continuous columns and how they are scaled: money is heavy-tailed, so
// log1p; the others are bounded and divided by their range's top.
struct DenseSpec {
  int column;
  bool log1p;
  double divisor;
};
constexpr DenseSpec kCensusDense[] = {
    {kAge, false, 100}, {5, true, 1},   {16, true, 1},   {17, true, 1},
    {18, true, 1},      {30, false, 6}, {39, false, 52},
};

bool IsCensusDense(int c) {
  return std::any_of(std::begin(kCensusDense), std::end(kCensusDense),
                     [c](const DenseSpec& d) { return d.column == c; });
}

absl::Status ConvertCensus(const ConvertOptions& o, ConvertSummary* summary) {
  BadLines bad(o.max_bad_lines, summary);
  absl::StatusOr<std::unique_ptr<LineReader>> in = LineReader::Open(o.input);
  if (!in.ok()) return in.status();
  LineReader& r = **in;
  const double test_fraction = Fraction(o.test_fraction, 0.1);
  const double valid_fraction = Fraction(o.valid_fraction, 0.1);
  Outputs out;
  absl::Status st = out.Open(o, /*with_valid=*/true);
  if (!st.ok()) return st;

  uint64_t pos_income = 0, pos_married = 0;
  std::vector<std::string_view> f;
  std::string line;
  std::string_view raw;
  while (r.Next(&raw)) {
    f.clear();
    for (size_t i = 0;;) {
      const size_t comma = raw.find(',', i);
      if (comma == std::string_view::npos) {
        f.push_back(Trim(raw.substr(i)));
        break;
      }
      f.push_back(Trim(raw.substr(i, comma - i)));
      i = comma + 1;
    }
    std::string why;
    int income = -1;
    if (raw.empty()) {
      why = "empty line";
    } else if (f.size() != kCensusColumns) {
      why = absl::StrCat("expected ", kCensusColumns, " fields, got ", f.size());
    } else if (!FieldSafe(raw)) {
      why = "a value contains a tab";
    } else if (f[kIncome] == "50000+.") {
      income = 1;
    } else if (f[kIncome] == "- 50000.") {
      income = 0;
    } else {
      why = absl::StrCat("income_50k '", Av(f[kIncome]), "' is neither '50000+.' nor '- 50000.'");
    }
    line.clear();
    if (why.empty()) {
      const bool married = f[kMarital] == "Never married";
      absl::StrAppend(&line, income, "\t", married ? "1" : "0");
      for (const DenseSpec& d : kCensusDense) {
        double v = 0;
        if (!ParseDouble(f[d.column], &v)) {
          why = absl::StrCat(kCensusNames[d.column], " '", Av(f[d.column]), "' is not a number");
          break;
        }
        line.push_back('\t');
        if (d.log1p) {
          AppendLog1p(v, &line);
        } else {
          char buf[32];
          line.append(buf, std::snprintf(buf, sizeof(buf), "%.6g", v / d.divisor));
        }
      }
      if (why.empty()) {
        for (int c = 0; c < kCensusColumns; ++c) {
          if (c == kMarital || c == kWeight || c == kIncome || IsCensusDense(c)) continue;
          // '?' is the file's missing value; an empty field gives no key.
          absl::StrAppend(&line, "\t", f[c] == "?" ? "" : Av(f[c]));
        }
        pos_income += income;
        pos_married += married;
      }
    }
    if (!why.empty()) {
      st = bad.Add(r.path(), r.line_number(), why);
      if (!st.ok()) return st;
      continue;
    }
    const double u = RowUnit(o.seed, static_cast<uint64_t>(r.line_number()));
    const Split split = u < test_fraction                    ? kTest
                        : u < test_fraction + valid_fraction ? kValid
                                                             : kTrain;
    st = out[split].Line(line);
    if (!st.ok()) return st;
  }
  if (!r.status().ok()) return r.status();
  st = out.Close(summary);
  if (!st.ok()) return st;

  std::string cols =
      "  columns { name: \"income\" type: LABEL }         # income_50k is 50000+.\n"
      "  columns { name: \"never_married\" type: LABEL }  # marital_stat is Never married\n"
      "  # age / 100, log1p of the money columns, num_emp / 6, weeks_worked / 52.\n";
  for (const DenseSpec& d : kCensusDense) {
    absl::StrAppend(&cols, "  columns { name: ", Quoted(kCensusNames[d.column]),
                    " type: DENSE }\n");
  }
  absl::StrAppend(
      &cols, "  # One table; a slot per column keeps equal codes of different columns apart.\n");
  int slot = 1;
  for (int c = 0; c < kCensusColumns; ++c) {
    if (c == kMarital || c == kWeight || c == kIncome || IsCensusDense(c)) continue;
    absl::StrAppend(&cols, "  columns { name: ", Quoted(kCensusNames[c]),
                    " type: SPARSE table: \"feat\" slot: ", slot++, " }\n");
  }
  const std::string conf = absl::StrCat(
      "# UCI census-income with the MMoE paper's two tasks (written by `ember convert\n"
      "# census`). Rows are split by a hash of the row number into train, valid and\n"
      "# test (",
      100 * (1 - test_fraction - valid_fraction), "/", 100 * valid_fraction, "/",
      100 * test_fraction,
      "%); point data.test at \"valid\" for model selection.\n"
      "# Paths are relative to the working directory; `--data_dir` overrides them.\n"
      "name: \"census\"\n\n",
      TableText("feat", 8, "every categorical column, each in its own slot"),
      "\ndata {\n"
      "  train: \"train\"\n"
      "  test: \"test\"\n"
      "  batch_size: 256\n",
      cols, "}\n\n", Av(kModel), "\ntrain { epochs: 2 }\n");
  st = WriteConfig(o, conf, summary);
  if (!st.ok()) return st;
  summary->label_positives = {pos_income, pos_married};
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// criteo

constexpr int kCriteoDense = 13, kCriteoSparse = 26, kCriteoColumns = 1 + 13 + 26;

std::string CriteoHeader() {
  std::string h = "label";
  for (int i = 1; i <= kCriteoDense; ++i) absl::StrAppend(&h, ",I", i);
  for (int i = 1; i <= kCriteoSparse; ++i) absl::StrAppend(&h, ",C", i);
  return h;
}

// Splits `s` on `sep` into `f` (no quoting: neither Criteo form quotes).
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

// A 0/1 label written as 0, 1, 0.0 or 1.0.
int ParseBinaryLabel(std::string_view s) {
  double v = 0;
  if (!ParseDouble(s, &v) || (v != 0 && v != 1)) return -1;
  return static_cast<int>(v);
}

absl::Status ConvertCriteo(const ConvertOptions& o, ConvertSummary* summary) {
  BadLines bad(o.max_bad_lines, summary);
  absl::StatusOr<std::unique_ptr<LineReader>> in = LineReader::Open(o.input);
  if (!in.ok()) return in.status();
  LineReader& r = **in;
  const double test_fraction = Fraction(o.test_fraction, 0.1);
  Outputs out;
  absl::Status st = out.Open(o, /*with_valid=*/false);
  if (!st.ok()) return st;

  const std::string header = CriteoHeader();
  char sep = 0;  // decided by the first line
  uint64_t positives = 0;
  std::vector<std::string_view> f;
  std::string line;
  std::string_view raw;
  while (r.Next(&raw)) {
    if (sep == 0) {
      if (raw == header) {
        sep = ',';
        continue;
      }
      if (raw.find('\t') != std::string_view::npos) {
        sep = '\t';
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat(r.path(),
                         ":1: neither Criteo's TSV (tab-separated label, I1-I13, C1-C26) nor "
                         "DeepCTR's CSV (header '",
                         Av(std::string_view(header).substr(0, 20)), "...')"));
      }
    }
    SplitOn(raw, sep, &f);
    std::string why;
    int label = -1;
    if (f.size() != kCriteoColumns) {
      why = absl::StrCat("expected ", kCriteoColumns, " fields, got ", f.size());
    } else if (sep == ',' && !FieldSafe(raw)) {
      why = "a value contains a tab";
    } else if ((label = ParseBinaryLabel(f[0])) < 0) {
      why = absl::StrCat("label '", Av(f[0]), "' is not 0 or 1");
    }
    if (why.empty()) {
      line.clear();
      absl::StrAppend(&line, label);
      for (int i = 1; i <= kCriteoDense && why.empty(); ++i) {
        line.push_back('\t');
        if (f[i].empty()) continue;  // missing: "" in the config reads it as 0
        double v = 0;
        if (!ParseDouble(f[i], &v)) {
          why = absl::StrCat("I", i, " '", Av(f[i]), "' is not a number");
        } else {
          AppendLog1p(v, &line);
        }
      }
      for (int i = 1 + kCriteoDense; i < kCriteoColumns; ++i) {
        absl::StrAppend(&line, "\t", Av(f[i]));
      }
    }
    if (!why.empty()) {
      st = bad.Add(r.path(), r.line_number(), why);
      if (!st.ok()) return st;
      continue;
    }
    positives += label;
    const double u = RowUnit(o.seed, static_cast<uint64_t>(r.line_number()));
    st = out[u < test_fraction ? kTest : kTrain].Line(line);
    if (!st.ok()) return st;
  }
  if (!r.status().ok()) return r.status();
  st = out.Close(summary);
  if (!st.ok()) return st;

  std::string cols =
      "  columns { name: \"label\" type: LABEL }\n"
      "  # log(1 + max(x, 0)); an empty value reads as 0.\n";
  for (int i = 1; i <= kCriteoDense; ++i) {
    absl::StrAppend(&cols, "  columns { name: \"I", i, "\" type: DENSE missing: \"\" }\n");
  }
  for (int i = 1; i <= kCriteoSparse; ++i) {
    absl::StrAppend(&cols, "  columns { name: \"C", i, "\" type: SPARSE table: \"feat\" slot: ", i,
                    " }\n");
  }
  const std::string conf = absl::StrCat(
      "# Criteo display ads (written by `ember convert criteo`); ", 100 * test_fraction,
      "% of the rows,\n# picked by a hash of the line number, are the test split.\n"
      "# Paths are relative to the working directory; `--data_dir` overrides them.\n"
      "name: \"criteo\"\n\n",
      TableText("feat", 10, "C1-C26, each in its own slot"),
      "\ndata {\n"
      "  train: \"train\"\n"
      "  test: \"test\"\n"
      "  batch_size: 1024\n",
      cols, "}\n\n", Av(kModel), "\ntrain { epochs: 1 }\n");
  st = WriteConfig(o, conf, summary);
  if (!st.ok()) return st;
  summary->label_positives = {positives};
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// avazu

// Hour of day and weekday (0 = Sunday) of Avazu's YYMMDDHH; false when it is
// not a valid date and hour.
bool AvazuTime(std::string_view s, int* hour, int* weekday) {
  if (s.size() != 8 ||
      !std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return false;
  auto two = [&](int i) { return (s[i] - '0') * 10 + (s[i + 1] - '0'); };
  const std::chrono::year_month_day ymd{std::chrono::year(2000 + two(0)),
                                        std::chrono::month(static_cast<unsigned>(two(2))),
                                        std::chrono::day(static_cast<unsigned>(two(4)))};
  *hour = two(6);
  if (!ymd.ok() || *hour > 23) return false;
  *weekday = static_cast<int>(std::chrono::weekday(std::chrono::sys_days(ymd)).c_encoding());
  return true;
}

absl::Status ConvertAvazu(const ConvertOptions& o, ConvertSummary* summary) {
  BadLines bad(o.max_bad_lines, summary);
  absl::StatusOr<std::unique_ptr<LineReader>> in = LineReader::Open(o.input);
  if (!in.ok()) return in.status();
  LineReader& r = **in;
  std::string_view raw;
  if (!r.Next(&raw)) {
    if (!r.status().ok()) return r.status();
    return absl::InvalidArgumentError(absl::StrCat(r.path(), ": empty file, expected a header"));
  }
  std::vector<std::string> header;
  if (!SplitCsv(raw, &header) || header.size() < 4 || header[0] != "id" || header[1] != "click" ||
      header[2] != "hour") {
    return absl::InvalidArgumentError(
        absl::StrCat(r.path(), ":1: expected Avazu's header 'id,click,hour,...'"));
  }
  for (size_t i = 3; i < header.size(); ++i) {
    if (header[i].empty() || !FieldSafe(header[i]) || header[i].find('"') != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(r.path(), ":1: column ", i + 1, " has an unusable name"));
    }
  }
  const double test_fraction = Fraction(o.test_fraction, 0.1);
  Outputs out;
  absl::Status st = out.Open(o, /*with_valid=*/false);
  if (!st.ok()) return st;

  uint64_t positives = 0;
  std::vector<std::string> f;
  std::string line;
  while (r.Next(&raw)) {
    std::string why;
    int label = -1, hour = 0, weekday = 0;
    if (!SplitCsv(raw, &f)) {
      why = "malformed CSV quoting";
    } else if (f.size() != header.size()) {
      why = absl::StrCat("expected ", header.size(), " fields, got ", f.size());
    } else if (!FieldSafe(raw)) {
      why = "a value contains a tab";
    } else if ((label = ParseBinaryLabel(f[1])) < 0) {
      why = absl::StrCat("click '", f[1], "' is not 0 or 1");
    } else if (!AvazuTime(f[2], &hour, &weekday)) {
      why = absl::StrCat("hour '", f[2], "' is not YYMMDDHH");
    }
    if (!why.empty()) {
      st = bad.Add(r.path(), r.line_number(), why);
      if (!st.ok()) return st;
      continue;
    }
    line.clear();
    absl::StrAppend(&line, label, "\t", f[2], "\t", hour, "\t", weekday);
    for (size_t i = 3; i < f.size(); ++i) absl::StrAppend(&line, "\t", f[i]);
    positives += label;
    const double u = RowUnit(o.seed, static_cast<uint64_t>(r.line_number()));
    st = out[u < test_fraction ? kTest : kTrain].Line(line);
    if (!st.ok()) return st;
  }
  if (!r.status().ok()) return r.status();
  st = out.Close(summary);
  if (!st.ok()) return st;

  std::string cols =
      "  columns { name: \"click\" type: LABEL }\n"
      "  # The raw YYMMDDHH, and the hour of day and weekday (0 = Sunday) drawn from it.\n"
      "  columns { name: \"hour\" type: SPARSE table: \"feat\" slot: 1 }\n"
      "  columns { name: \"hour_of_day\" type: SPARSE table: \"feat\" slot: 2 }\n"
      "  columns { name: \"weekday\" type: SPARSE table: \"feat\" slot: 3 }\n";
  for (size_t i = 3; i < header.size(); ++i) {
    absl::StrAppend(&cols, "  columns { name: ", Quoted(header[i]),
                    " type: SPARSE table: \"feat\" slot: ", i + 1, " }\n");
  }
  const std::string conf =
      absl::StrCat("# Avazu mobile ads (written by `ember convert avazu`); ", 100 * test_fraction,
                   "% of the rows,\n# picked by a hash of the line number, are the test split.\n"
                   "# Paths are relative to the working directory; `--data_dir` overrides them.\n"
                   "name: \"avazu\"\n\n",
                   TableText("feat", 10, "every column, each in its own slot"),
                   "\ndata {\n"
                   "  train: \"train\"\n"
                   "  test: \"test\"\n"
                   "  batch_size: 1024\n",
                   cols, "}\n\n", Av(kModel), "\ntrain { epochs: 1 }\n");
  st = WriteConfig(o, conf, summary);
  if (!st.ok()) return st;
  summary->label_positives = {positives};
  return absl::OkStatus();
}

absl::Status Invalid(std::string_view option, std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("convert option ", Av(option), ": ", Av(what)));
}

}  // namespace

absl::Status ValidateConvertOptions(const ConvertOptions& o) {
  if (o.format != "movielens" && o.format != "census" && o.format != "criteo" &&
      o.format != "avazu") {
    return Invalid(
        "format", absl::StrCat("must be movielens, census, criteo or avazu, got '", o.format, "'"));
  }
  if (o.input.empty()) return Invalid("input", "required");
  if (o.out_dir.empty()) return Invalid("out_dir", "required");
  if (o.max_history < 1 || o.max_history > 100000) {
    return Invalid("max_history", absl::StrCat("must be in [1, 100000], got ", o.max_history));
  }
  if (!(o.test_fraction < 1)) {  // also rejects NaN
    return Invalid("test_fraction", absl::StrCat("must be < 1, got ", o.test_fraction));
  }
  if (!(o.valid_fraction < 1)) {
    return Invalid("valid_fraction", absl::StrCat("must be < 1, got ", o.valid_fraction));
  }
  if (o.format == "census" &&
      !(Fraction(o.test_fraction, 0.1) + Fraction(o.valid_fraction, 0.1) < 1)) {
    return Invalid("valid_fraction", "test_fraction + valid_fraction must be < 1");
  }
  return absl::OkStatus();
}

absl::Status Convert(const ConvertOptions& options, ConvertSummary* summary) {
  absl::Status st = ValidateConvertOptions(options);
  if (!st.ok()) return st;
  ConvertSummary local;
  if (options.format == "movielens") {
    st = ConvertMovielens(options, &local);
  } else if (options.format == "census") {
    st = ConvertCensus(options, &local);
  } else if (options.format == "criteo") {
    st = ConvertCriteo(options, &local);
  } else {
    st = ConvertAvazu(options, &local);
  }
  if (st.ok() && summary != nullptr) *summary = std::move(local);
  return st;
}

}  // namespace ember::launch
