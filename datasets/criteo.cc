// `ember convert criteo`: Criteo's TSV or DeepCTR's CSV as a CTR log,
// described atop convert.h.
#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "datasets/convert_internal.h"

namespace ember::datasets::internal {
namespace {

constexpr int kCriteoDense = 13, kCriteoSparse = 26, kCriteoColumns = 1 + 13 + 26;

std::string CriteoHeader() {
  std::string h = "label";
  for (int i = 1; i <= kCriteoDense; ++i) absl::StrAppend(&h, ",I", i);
  for (int i = 1; i <= kCriteoSparse; ++i) absl::StrAppend(&h, ",C", i);
  return h;
}

}  // namespace

absl::Status ConvertCriteo(const ConvertOptions& o, ConvertSummary* summary) {
  BadLines bad(o.max_bad_lines, summary);
  absl::StatusOr<std::unique_ptr<LineReader>> in = LineReader::Open(o.input);
  if (!in.ok()) return in.status();
  LineReader& r = **in;
  const double test_fraction = Fraction(o.test_fraction, 0.1);
  ConvertOutput out(o, summary);
  absl::Status st = out.Open(/*with_valid=*/false);
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
    st = out.Line(u < test_fraction ? kTest : kTrain, line);
    if (!st.ok()) return st;
  }
  if (!r.status().ok()) return r.status();

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
  const std::string comment = absl::StrCat(
      "# Criteo display ads (written by `ember convert criteo`); ", 100 * test_fraction,
      "% of the rows,\n# picked by a hash of the line number, are the test split.\n");
  return out.Finish(
      JobConfText(comment, "criteo", TableText("feat", 10, "C1-C26, each in its own slot"), 1024,
                  cols, 1),
      {positives});
}

}  // namespace ember::datasets::internal
