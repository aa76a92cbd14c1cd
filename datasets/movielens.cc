// `ember convert movielens`: ratings.csv and movies.csv as a CTR log with
// behaviour sequences (the format is described atop convert.h).
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "datasets/convert_internal.h"

namespace ember::datasets::internal {
namespace {

namespace fs = std::filesystem;

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

}  // namespace

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

  ConvertOutput out(o, summary);
  st = out.Open(/*with_valid=*/false);
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
      st = out.Line(split, line);
      if (!st.ok()) return st;
    }
  }

  const std::string comment = absl::StrCat(
      "# MovieLens as a CTR task (written by `ember convert movielens`): label is\n"
      "# rating >= 4; the behaviour sequence is the user's strictly earlier movies,\n"
      "# oldest first, at most ",
      o.max_history, ". Test = each user's last ", test_fraction * 100, "% of ratings by time.\n");
  const std::string tables =
      absl::StrCat(TableText("user", 16, "user_id"),
                   TableText("item", 16, "item_id and hist_items: one row per movie in both"),
                   TableText("cat", 8, "genres: item_cat, hist_cats (shared slot), item_genres"));
  const std::string columns = absl::StrCat(
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
      "  columns { name: \"hist_timestamps\" type: IGNORE }\n");
  return out.Finish(JobConfText(comment, "movielens", tables, 256, columns, 2), {positives});
}

}  // namespace ember::datasets::internal
