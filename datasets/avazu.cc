// `ember convert avazu`: Avazu's CSV as a CTR log, described atop convert.h.
#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "datasets/convert_internal.h"

namespace ember::datasets::internal {
namespace {

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

}  // namespace

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
  ConvertOutput out(o, summary);
  absl::Status st = out.Open(/*with_valid=*/false);
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
    st = out.Line(u < test_fraction ? kTest : kTrain, line);
    if (!st.ok()) return st;
  }
  if (!r.status().ok()) return r.status();

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
  const std::string comment =
      absl::StrCat("# Avazu mobile ads (written by `ember convert avazu`); ", 100 * test_fraction,
                   "% of the rows,\n# picked by a hash of the line number, are the test split.\n");
  return out.Finish(
      JobConfText(comment, "avazu", TableText("feat", 10, "every column, each in its own slot"),
                  1024, cols, 1),
      {positives});
}

}  // namespace ember::datasets::internal
