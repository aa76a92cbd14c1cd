// `ember convert census`: UCI census-income as a two-task log (income,
// never_married), described atop convert.h.
#include <algorithm>
#include <cstdio>
#include <iterator>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "datasets/convert_internal.h"

namespace ember::datasets::internal {
namespace {

std::string_view Trim(std::string_view s) {
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  while (!s.empty() && s.back() == ' ') s.remove_suffix(1);
  return s;
}

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

}  // namespace

absl::Status ConvertCensus(const ConvertOptions& o, ConvertSummary* summary) {
  BadLines bad(o.max_bad_lines, summary);
  absl::StatusOr<std::unique_ptr<LineReader>> in = LineReader::Open(o.input);
  if (!in.ok()) return in.status();
  LineReader& r = **in;
  const double test_fraction = Fraction(o.test_fraction, 0.1);
  const double valid_fraction = Fraction(o.valid_fraction, 0.1);
  ConvertOutput out(o, summary);
  absl::Status st = out.Open(/*with_valid=*/true);
  if (!st.ok()) return st;

  uint64_t pos_income = 0, pos_married = 0;
  std::vector<std::string_view> f;
  std::string line;
  std::string_view raw;
  while (r.Next(&raw)) {
    SplitOn(raw, ',', &f);
    for (std::string_view& v : f) v = Trim(v);
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
    st = out.Line(split, line);
    if (!st.ok()) return st;
  }
  if (!r.status().ok()) return r.status();

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
  const std::string comment = absl::StrCat(
      "# UCI census-income with the MMoE paper's two tasks (written by `ember convert\n"
      "# census`). Rows are split by a hash of the row number into train, valid and\n"
      "# test (",
      100 * (1 - test_fraction - valid_fraction), "/", 100 * valid_fraction, "/",
      100 * test_fraction, "%); point data.test at \"valid\" for model selection.\n");
  return out.Finish(
      JobConfText(comment, "census",
                  TableText("feat", 8, "every categorical column, each in its own slot"), 256, cols,
                  2),
      {pos_income, pos_married});
}

}  // namespace ember::datasets::internal
