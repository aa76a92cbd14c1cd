// PredictFiles: read log lines in batches, score them, write one line each.
#include "serving/predict_files.h"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <string_view>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "datasets/text_io.h"
#include "models/metrics.h"

namespace ember::serving {
namespace {

// Where each task's label sits among a line's tab-separated fields.
std::vector<int> LabelFields(const proto::JobConfig& config, const std::vector<std::string>& tasks) {
  std::vector<int> fields;
  for (const std::string& task : tasks) {
    int field = -1;
    for (int c = 0; c < config.data().columns_size(); ++c) {
      const proto::ColumnConfig& col = config.data().columns(c);
      if (col.type() == proto::ColumnConfig::LABEL && col.name() == task) field = c;
    }
    fields.push_back(field);
  }
  return fields;
}

// The label fields of `line`, or false if one is missing or not a number.
// `scratch` holds the split fields, reused from line to line.
bool ParseLabels(std::string_view line, const std::vector<int>& fields, std::vector<std::string_view>* scratch,
                 std::vector<float>* out) {
  out->clear();
  std::vector<std::string_view>& parts = *scratch;
  parts.clear();
  size_t start = 0;
  for (;;) {
    const size_t tab = line.find('\t', start);
    parts.push_back(line.substr(start, tab == std::string_view::npos ? std::string_view::npos : tab - start));
    if (tab == std::string_view::npos) break;
    start = tab + 1;
  }
  for (int f : fields) {
    float v;
    if (f < 0 || f >= static_cast<int>(parts.size()) || !absl::SimpleAtof(datasets::Av(parts[f]), &v) ||
        !std::isfinite(v)) {
      return false;
    }
    out->push_back(v);
  }
  return true;
}

}  // namespace

absl::StatusOr<PredictFilesSummary> PredictFiles(const Predictor& predictor, const PredictFilesOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  if (options.out.empty()) return absl::InvalidArgumentError("no output file");
  if (options.batch_size == 0) return absl::InvalidArgumentError("batch_size must be >= 1");
  struct stat st;
  if (::lstat(options.out.c_str(), &st) == 0) {
    return absl::AlreadyExistsError(absl::StrCat(options.out, ": exists; predict does not overwrite files"));
  }
  const std::string tmp = options.out + ".tmp";
  if (::lstat(tmp.c_str(), &st) == 0) {
    return absl::AlreadyExistsError(absl::StrCat(tmp, ": exists (another predict writing?); remove it first"));
  }
  absl::StatusOr<std::unique_ptr<datasets::OutputFile>> out = datasets::OutputFile::Open(tmp);
  if (!out.ok()) return out.status();
  // From here on `tmp` is ours: removed on any failure.
  auto fail = [&](absl::Status s) -> absl::Status {
    (*out)->Close().IgnoreError();
    ::unlink(tmp.c_str());
    return s;
  };

  PredictFilesSummary summary;
  const std::vector<std::string>& tasks = predictor.tasks();
  const size_t num_tasks = tasks.size();
  const std::vector<int> label_fields = LabelFields(predictor.config(), tasks);
  std::vector<std::vector<float>> task_scores(num_tasks), task_labels(num_tasks);
  std::vector<std::string> batch;
  std::vector<std::string_view> views, fields;
  std::vector<int64_t> line_numbers;
  std::vector<float> scores, labels;
  std::vector<LineError> errors;
  std::string text;
  batch.reserve(options.batch_size);

  for (const std::string& path : options.inputs) {
    absl::StatusOr<std::unique_ptr<datasets::LineReader>> reader = datasets::LineReader::Open(path);
    if (!reader.ok()) return fail(reader.status());
    bool more = true;
    while (more) {
      batch.clear();
      line_numbers.clear();
      std::string_view line;
      while (batch.size() < options.batch_size && (more = (*reader)->Next(&line))) {
        batch.emplace_back(line);
        line_numbers.push_back((*reader)->line_number());
      }
      if (!(*reader)->status().ok()) return fail((*reader)->status());
      if (batch.empty()) break;
      views.assign(batch.begin(), batch.end());
      predictor.Predict(views, &scores, &errors);
      summary.lines += batch.size();
      size_t e = 0;
      text.clear();
      for (size_t i = 0; i < batch.size(); ++i) {
        if (e < errors.size() && errors[e].index == i) {
          ++summary.bad_lines;
          if (summary.bad_lines <= options.log_bad_lines_limit && options.on_bad) {
            options.on_bad(absl::StrCat(path, ":", line_numbers[i], ": ", errors[e].reason));
          }
          ++e;
          text.push_back('\n');
          continue;
        }
        char buf[32];
        for (size_t k = 0; k < num_tasks; ++k) {
          if (k > 0) text.push_back('\t');
          text.append(buf, std::snprintf(buf, sizeof(buf), "%.9g", scores[i * num_tasks + k]));
        }
        text.push_back('\n');
        if (ParseLabels(batch[i], label_fields, &fields, &labels)) {
          ++summary.labelled;
          for (size_t k = 0; k < num_tasks; ++k) {
            task_scores[k].push_back(scores[i * num_tasks + k]);
            task_labels[k].push_back(labels[k]);
          }
        }
      }
      if (absl::Status s = (*out)->Write(text); !s.ok()) return fail(s);
      if (summary.bad_lines > options.max_bad_lines ||
          (summary.lines >= 1000 && summary.bad_lines > options.max_bad_fraction * summary.lines)) {
        return fail(absl::InvalidArgumentError(
            absl::StrCat(summary.bad_lines, " malformed lines of ", summary.lines, " read (up to ", path, ":",
                         line_numbers.back(), "), over the budget of max_bad_lines ", options.max_bad_lines,
                         " / max_bad_fraction ", options.max_bad_fraction)));
      }
    }
  }
  absl::StatusOr<uint64_t> closed = (*out)->Close();
  if (!closed.ok()) {
    ::unlink(tmp.c_str());
    return closed.status();
  }
  if (::link(tmp.c_str(), options.out.c_str()) != 0) {
    // link(2), unlike rename(2), refuses to replace a file that appeared meanwhile.
    const absl::Status s = absl::ErrnoToStatus(errno, absl::StrCat(options.out, ": cannot create"));
    ::unlink(tmp.c_str());
    return s;
  }
  ::unlink(tmp.c_str());
  for (size_t k = 0; k < num_tasks; ++k) {
    TaskSummary t;
    t.name = tasks[k];
    t.auc = models::ExactAuc(task_scores[k], task_labels[k]);
    t.logloss = models::LogLoss(task_scores[k], task_labels[k]);
    summary.tasks.push_back(std::move(t));
  }
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return summary;
}

}  // namespace ember::serving
