// `ember convert`: the options, the dispatch to one file per format
// (movielens.cc, census.cc, criteo.cc, avazu.cc) and what those share
// (convert_internal.h). Formats and output layout are described atop
// convert.h.
#include "datasets/convert.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string_view>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "datasets/convert_internal.h"
#include "glog/logging.h"
#include "proto/config.h"
#include "proto/keys.h"

namespace ember::datasets {
namespace internal {
namespace {

namespace fs = std::filesystem;

constexpr size_t kMaxBadLineExamples = 10;
constexpr std::string_view kAdagrad =
    "optimizer { kind: ADAGRAD learning_rate: 0.05 initial_accumulator: 0.1 }";
constexpr std::string_view kModel =
    "model {\n"
    "  kind: EMBEDDING_MLP\n"
    "  hidden: 64\n"
    "  hidden: 32\n"
    "  dense_optimizer { kind: ADAM learning_rate: 0.002 }\n"
    "}\n";

}  // namespace

// ---------------------------------------------------------------------------
// ConvertOutput.

ConvertOutput::~ConvertOutput() {
  if (writer_ == nullptr || finished_) return;
  const fs::path root(o_.out_dir);
  std::vector<std::string> files = writer_->paths();
  writer_.reset();  // closes the files
  // Open found neither of these (or removed the old set's), so they are ours.
  files.push_back((root / kJobConfFile).string());
  files.push_back((root / kMetaFile).string() + ".tmp");
  RemoveCreated(files, created_dirs_);
}

absl::Status ConvertOutput::Open(bool with_valid) {
  with_valid_ = with_valid;
  std::vector<std::string_view> splits = {"train", "test"};
  if (with_valid) splits.insert(splits.begin() + 1, "valid");
  absl::Status st =
      PrepareOutputDir(o_.out_dir, DataTool::kConvert, o_.overwrite, splits, &created_dirs_);
  if (!st.ok()) {
    RemoveCreated({}, created_dirs_);
    return st;
  }
  absl::StatusOr<std::unique_ptr<SplitWriter>> w = SplitWriter::Open(o_.out_dir, splits);
  if (!w.ok()) {
    RemoveCreated({}, created_dirs_);
    return w.status();
  }
  writer_ = *std::move(w);
  return absl::OkStatus();
}

absl::Status ConvertOutput::Line(Split split, std::string_view line) {
  const size_t index = with_valid_ || split == kTrain ? split : 1;
  return writer_->Line(index, line);
}

absl::Status ConvertOutput::Finish(const std::string& conf, std::vector<uint64_t> positives) {
  absl::Status st = writer_->Close();
  if (!st.ok()) return st;
  ConvertSummary& s = *summary_;
  s.files = writer_->paths();
  s.train_rows = writer_->rows(0);
  s.valid_rows = with_valid_ ? writer_->rows(1) : 0;
  s.test_rows = writer_->rows(with_valid_ ? 2 : 1);

  const std::string path = (fs::path(o_.out_dir) / kJobConfFile).string();
  absl::StatusOr<proto::JobConfig> config = proto::ParseJobConfig(conf, path);
  st = config.ok() ? proto::ValidateJobConfig(*config) : config.status();
  if (!st.ok()) {
    return absl::InternalError(absl::StrCat("convert built an invalid config: ", st.message()));
  }
  std::vector<std::string> columns;
  for (const proto::ColumnConfig& c : config->data().columns()) {
    columns.push_back(c.name());
    if (c.type() == proto::ColumnConfig::LABEL) s.label_names.push_back(c.name());
  }
  s.label_positives = std::move(positives);
  CHECK_EQ(s.label_names.size(), s.label_positives.size());
  absl::StatusOr<std::unique_ptr<OutputFile>> file = OutputFile::Open(path);
  if (!file.ok()) return file.status();
  st = (*file)->Write(conf);
  if (!st.ok()) return st;
  absl::StatusOr<uint64_t> closed = (*file)->Close();
  if (!closed.ok()) return closed.status();
  s.files.push_back(path);

  // meta.txt last: its presence marks a complete set. No oracle: real data.
  std::vector<std::pair<std::string, std::string>> meta = {
      {"input", o_.input},
      {"columns", absl::StrJoin(columns, ",")},
      {"labels", absl::StrJoin(s.label_names, ",")},
      {"label_positives", absl::StrJoin(s.label_positives, ",")},
      {"train_rows", absl::StrCat(s.train_rows)}};
  if (with_valid_) meta.emplace_back("valid_rows", absl::StrCat(s.valid_rows));
  meta.emplace_back("test_rows", absl::StrCat(s.test_rows));
  meta.emplace_back("bad_lines", absl::StrCat(s.bad_lines));
  meta.emplace_back("seed", absl::StrCat(o_.seed));
  st = WriteMeta(o_.out_dir, MetaSource(DataTool::kConvert, o_.format), meta);
  if (!st.ok()) return st;
  s.files.push_back((fs::path(o_.out_dir) / kMetaFile).string());
  finished_ = true;
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Shared helpers.

absl::Status BadLines::Add(const std::string& path, int64_t line, std::string_view reason) {
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

uint64_t Mix(uint64_t x) { return proto::Mix64(x + 0x9e3779b97f4a7c15ULL); }

double RowUnit(uint64_t seed, uint64_t row) {
  return static_cast<double>(Mix(Mix(seed) ^ row) >> 11) * 0x1.0p-53;
}

bool ParseDouble(std::string_view s, double* out) {
  return absl::SimpleAtod(Av(s), out) && std::isfinite(*out);
}

int ParseBinaryLabel(std::string_view s) {
  double v = 0;
  if (!ParseDouble(s, &v) || (v != 0 && v != 1)) return -1;
  return static_cast<int>(v);
}

void AppendLog1p(double x, std::string* out) {
  char buf[32];
  const int n = std::snprintf(buf, sizeof(buf), "%.6g", std::log1p(std::max(x, 0.0)));
  out->append(buf, n);
}

std::string Quoted(std::string_view s) { return absl::StrCat("\"", Av(s), "\""); }

std::string TableText(std::string_view name, int dim, std::string_view comment) {
  return absl::StrCat("tables {\n  name: \"", Av(name), "\"  # ", Av(comment), "\n  dim: ", dim,
                      "\n  ", Av(kAdagrad), "\n}\n");
}

std::string JobConfText(std::string_view comment, std::string_view name, std::string_view tables,
                        int batch_size, std::string_view columns, int epochs) {
  return absl::StrCat(Av(comment),
                      "# Paths are relative to the working directory; `--data_dir` overrides "
                      "them.\nname: ",
                      Quoted(name), "\n\n", Av(tables),
                      "\ndata {\n"
                      "  train: \"train\"\n"
                      "  test: \"test\"\n"
                      "  batch_size: ",
                      batch_size, "\n", Av(columns), "}\n\n", Av(kModel),
                      "\ntrain { epochs: ", epochs, " }\n");
}

}  // namespace internal

namespace {

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
      !(internal::Fraction(o.test_fraction, 0.1) + internal::Fraction(o.valid_fraction, 0.1) < 1)) {
    return Invalid("valid_fraction", "test_fraction + valid_fraction must be < 1");
  }
  return absl::OkStatus();
}

absl::Status Convert(const ConvertOptions& options, ConvertSummary* summary) {
  absl::Status st = ValidateConvertOptions(options);
  if (!st.ok()) return st;
  ConvertSummary local;
  if (options.format == "movielens") {
    st = internal::ConvertMovielens(options, &local);
  } else if (options.format == "census") {
    st = internal::ConvertCensus(options, &local);
  } else if (options.format == "criteo") {
    st = internal::ConvertCriteo(options, &local);
  } else {
    st = internal::ConvertAvazu(options, &local);
  }
  if (st.ok() && summary != nullptr) *summary = std::move(local);
  return st;
}

}  // namespace ember::datasets
