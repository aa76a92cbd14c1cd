// Tests of `ember convert`: each converter on the real data sets beside the
// repository (../shared/data, skipped when absent), and on small synthetic
// inputs for malformed lines and CSV quoting. Every emitted job.conf must load
// and validate, and the worker's LogParser must accept every emitted line.
#include "datasets/convert.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "datasets/gen_data.h"
#include "gtest/gtest.h"
#include "proto/config.h"
#include "tests/cluster_harness.h"
#include "worker/log_parser.h"

namespace ember::datasets {
namespace {

namespace fs = std::filesystem;
using ::ember::testing::ReadFile;
using ::ember::testing::WriteFile;

std::string SharedData() { return std::string(EMBER_SOURCE_DIR) + "/../shared/data"; }

std::vector<std::string> ReadLines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

std::vector<std::string> Fields(const std::string& line) { return absl::StrSplit(line, '\t'); }

std::vector<int64_t> Ints(const std::string& s) {
  std::vector<int64_t> out;
  if (s.empty()) return out;
  for (absl::string_view p : absl::StrSplit(s, ',')) {
    int64_t v = 0;
    EXPECT_TRUE(absl::SimpleAtoi(p, &v)) << s;
    out.push_back(v);
  }
  return out;
}

// Loads out_dir/job.conf, and parses every line of every split with the
// worker's parser. Returns the lines per split directory name.
std::map<std::string, std::vector<std::string>> CheckOutput(
    const std::string& out_dir, proto::JobConfig* config_out = nullptr) {
  std::map<std::string, std::vector<std::string>> lines;
  absl::StatusOr<proto::JobConfig> config = proto::LoadJobConfig(out_dir + "/job.conf");
  EXPECT_TRUE(config.ok()) << config.status();
  if (!config.ok()) return lines;
  EXPECT_EQ(config->data().train(), "train");
  EXPECT_EQ(config->data().test(), "test");
  absl::StatusOr<worker::LogParser> parser = worker::LogParser::Create(*config);
  EXPECT_TRUE(parser.ok()) << parser.status();
  if (!parser.ok()) return lines;
  worker::ParsedLine parsed;
  for (const char* split : {"train", "valid", "test"}) {
    const std::string path = out_dir + "/" + split + "/part-00000.tsv";
    if (!fs::exists(path)) continue;
    lines[split] = ReadLines(path);
    int64_t n = 0;
    for (const std::string& line : lines[split]) {
      ++n;
      if (static_cast<int>(Fields(line).size()) != config->data().columns_size()) {
        ADD_FAILURE() << path << ":" << n << ": " << Fields(line).size() << " columns, config has "
                      << config->data().columns_size();
        return lines;
      }
      absl::Status st = parser->Parse(line, &parsed);
      if (!st.ok()) {
        ADD_FAILURE() << path << ":" << n << ": " << st;
        return lines;
      }
    }
  }
  if (config_out != nullptr) *config_out = *config;
  return lines;
}

int ColumnIndex(const proto::JobConfig& config, const std::string& name) {
  for (int i = 0; i < config.data().columns_size(); ++i) {
    if (config.data().columns(i).name() == name) return i;
  }
  ADD_FAILURE() << "no column " << name;
  return 0;
}

#define REQUIRE_SHARED(rel)                                                            \
  do {                                                                                 \
    if (!fs::exists(SharedData() + "/" + rel)) {                                       \
      GTEST_SKIP() << "*** " << SharedData() << "/" << rel                             \
                   << " not found: the real-data checks of the converter did not run"; \
    }                                                                                  \
  } while (0)

// ---------------------------------------------------------------------------
// Real data.

// Each test writes under a fresh directory that the fixture removes, even
// when the test fails.
class ConvertTest : public ::testing::Test {
 protected:
  ::ember::testing::TempDir tmp_;
  const std::string dir_ = tmp_.path();
};
using ConvertReal = ConvertTest;
using ConvertSynthetic = ConvertTest;

TEST_F(ConvertReal, Movielens) {
  REQUIRE_SHARED("movielens-latest-small/ratings.csv");
  ConvertOptions o;
  o.format = "movielens";
  o.input = SharedData() + "/movielens-latest-small";
  o.out_dir = dir_ + "/out";
  o.max_history = 50;
  ConvertSummary s;
  ASSERT_TRUE(Convert(o, &s).ok());
  // The shared copy ends in one extra rating, without a newline, of a movie
  // that movies.csv does not list: skipped as a bad line.
  EXPECT_LE(s.bad_lines, 1u);
  for (const std::string& b : s.bad_line_examples) {
    EXPECT_NE(b.find("is not in movies.csv"), std::string::npos) << b;
  }
  EXPECT_EQ(s.train_rows + s.test_rows, 100836u);
  ASSERT_EQ(s.label_positives.size(), 1u);
  const double rate = static_cast<double>(s.label_positives[0]) / (s.train_rows + s.test_rows);
  std::printf("movielens: train %lu test %lu positive rate %.4f\n",
              static_cast<unsigned long>(s.train_rows), static_cast<unsigned long>(s.test_rows),
              rate);
  EXPECT_GT(rate, 0.3);
  EXPECT_LT(rate, 0.7);

  proto::JobConfig config;
  auto lines = CheckOutput(o.out_dir, &config);
  ASSERT_EQ(lines["train"].size(), s.train_rows);
  ASSERT_EQ(lines["test"].size(), s.test_rows);
  EXPECT_NEAR(static_cast<double>(s.test_rows) / (s.train_rows + s.test_rows), 0.2, 0.03);

  // The truth, read independently: each user's ratings by (time, movie).
  std::map<int64_t, std::vector<std::pair<int64_t, int64_t>>> by_user;  // (ts, movie)
  {
    std::vector<std::string> raw = ReadLines(o.input + "/ratings.csv");
    for (size_t i = 1; i < raw.size(); ++i) {
      std::vector<std::string> f = absl::StrSplit(raw[i], ',');
      ASSERT_EQ(f.size(), 4u);
      int64_t u, m, t;
      ASSERT_TRUE(absl::SimpleAtoi(f[0], &u) && absl::SimpleAtoi(f[1], &m) &&
                  absl::SimpleAtoi(f[3], &t));
      by_user[u].push_back({t, m});
    }
    for (auto& [u, v] : by_user) std::sort(v.begin(), v.end());
  }
  const int c_user = ColumnIndex(config, "user_id"), c_item = ColumnIndex(config, "item_id"),
            c_ts = ColumnIndex(config, "timestamp"), c_hist = ColumnIndex(config, "hist_items"),
            c_hcat = ColumnIndex(config, "hist_cats"),
            c_hts = ColumnIndex(config, "hist_timestamps");
  std::map<int64_t, int64_t> max_train_ts, min_test_ts;
  std::map<int64_t, int> test_count;
  for (const char* split : {"train", "test"}) {
    for (const std::string& line : lines[split]) {
      std::vector<std::string> f = Fields(line);
      int64_t user, movie, ts;
      ASSERT_TRUE(absl::SimpleAtoi(f[c_user], &user) && absl::SimpleAtoi(f[c_item], &movie) &&
                  absl::SimpleAtoi(f[c_ts], &ts));
      if (std::string(split) == "train") {
        max_train_ts[user] = std::max(max_train_ts[user], ts);
      } else {
        min_test_ts[user] = min_test_ts.count(user) ? std::min(min_test_ts[user], ts) : ts;
        ++test_count[user];
      }
      const std::vector<int64_t> hist = Ints(f[c_hist]), hts = Ints(f[c_hts]);
      ASSERT_EQ(hist.size(), hts.size());
      ASSERT_EQ(hist.size(),
                static_cast<size_t>(f[c_hcat].empty()
                                        ? 0
                                        : std::count(f[c_hcat].begin(), f[c_hcat].end(), ',') + 1));
      ASSERT_LE(hist.size(), o.max_history);
      // The expected history: the last max_history ratings strictly older.
      const auto& all = by_user[user];
      const auto end = std::lower_bound(all.begin(), all.end(), std::make_pair(ts, int64_t{-1}));
      const auto begin = end - std::min<ptrdiff_t>(end - all.begin(), o.max_history);
      std::vector<int64_t> want_items, want_ts;
      for (auto it = begin; it != end; ++it) {
        want_ts.push_back(it->first);
        want_items.push_back(it->second);
      }
      ASSERT_EQ(hist, want_items) << line;
      ASSERT_EQ(hts, want_ts) << line;
      for (size_t i = 0; i < hist.size(); ++i) {
        ASSERT_LT(hts[i], ts) << "history holds the candidate's time or later: " << line;
        ASSERT_NE(hist[i], movie) << line;
      }
    }
  }
  // Every test row of a user is no earlier than every training row (equal
  // only for ratings in the same second), and every user with >= 2 ratings
  // has a test row.
  for (const auto& [user, ts] : min_test_ts) {
    if (max_train_ts.count(user)) {
      EXPECT_GE(ts, max_train_ts[user]) << "user " << user;
    }
  }
  for (const auto& [user, v] : by_user) {
    if (v.size() >= 2) {
      EXPECT_GE(test_count[user], 1) << "user " << user;
    }
  }
}

TEST_F(ConvertReal, Census) {
  REQUIRE_SHARED("census-income/census-income.test.gz");
  ConvertOptions o;
  o.format = "census";
  o.input = SharedData() + "/census-income/census-income.test.gz";
  o.out_dir = dir_ + "/out";
  ConvertSummary s;
  ASSERT_TRUE(Convert(o, &s).ok());
  EXPECT_EQ(s.bad_lines, 0u);
  const uint64_t total = s.train_rows + s.valid_rows + s.test_rows;
  EXPECT_EQ(total, 99762u);
  EXPECT_NEAR(static_cast<double>(s.train_rows) / total, 0.8, 0.01);
  EXPECT_NEAR(static_cast<double>(s.valid_rows) / total, 0.1, 0.01);
  EXPECT_NEAR(static_cast<double>(s.test_rows) / total, 0.1, 0.01);
  ASSERT_EQ(s.label_names, (std::vector<std::string>{"income", "never_married"}));
  const double income = static_cast<double>(s.label_positives[0]) / total;
  const double never_married = static_cast<double>(s.label_positives[1]) / total;
  std::printf("census: train %lu valid %lu test %lu income %.4f never_married %.4f\n",
              static_cast<unsigned long>(s.train_rows), static_cast<unsigned long>(s.valid_rows),
              static_cast<unsigned long>(s.test_rows), income, never_married);
  EXPECT_NEAR(income, 0.062, 0.002);
  EXPECT_NEAR(never_married, 0.432, 0.003);

  proto::JobConfig config;
  auto lines = CheckOutput(o.out_dir, &config);
  EXPECT_EQ(lines["valid"].size(), s.valid_rows);
  // Neither label source nor the sampling weight is a feature.
  for (const auto& c : config.data().columns()) {
    EXPECT_NE(c.name(), "marital_stat");
    EXPECT_NE(c.name(), "income_50k");
    EXPECT_NE(c.name(), "instance_weight");
  }
  int dense = 0, sparse = 0;
  for (const auto& c : config.data().columns()) {
    dense += c.type() == proto::ColumnConfig::DENSE;
    sparse += c.type() == proto::ColumnConfig::SPARSE;
  }
  EXPECT_EQ(dense, 7);
  EXPECT_EQ(sparse, 32);
  // The positive rates of the written files agree with the summary.
  uint64_t pos = 0;
  for (const auto& [split, v] : lines) {
    for (const std::string& line : v) pos += line[0] == '1';
  }
  EXPECT_EQ(pos, s.label_positives[0]);
}

TEST_F(ConvertReal, CriteoCsv) {
  REQUIRE_SHARED("samples/criteo_sample.txt");
  ConvertOptions o;
  o.format = "criteo";
  o.input = SharedData() + "/samples/criteo_sample.txt";
  o.out_dir = dir_ + "/out";
  ConvertSummary s;
  ASSERT_TRUE(Convert(o, &s).ok());
  EXPECT_EQ(s.bad_lines, 0u);
  EXPECT_EQ(s.train_rows + s.test_rows, 200u);
  EXPECT_GT(s.test_rows, 5u);
  EXPECT_LT(s.test_rows, 40u);
  auto lines = CheckOutput(o.out_dir);
  EXPECT_EQ(lines["train"].size() + lines["test"].size(), 200u);
}

TEST_F(ConvertReal, Avazu) {
  REQUIRE_SHARED("samples/avazu_sample.txt");
  ConvertOptions o;
  o.format = "avazu";
  o.input = SharedData() + "/samples/avazu_sample.txt";
  o.out_dir = dir_ + "/out";
  ConvertSummary s;
  ASSERT_TRUE(Convert(o, &s).ok());
  EXPECT_EQ(s.bad_lines, 0u);
  EXPECT_EQ(s.train_rows + s.test_rows, 100u);
  proto::JobConfig config;
  auto lines = CheckOutput(o.out_dir, &config);
  // 14102100 is 2014-10-21, a Tuesday, hour 0.
  const std::vector<std::string> f =
      Fields(lines["train"].empty() ? lines["test"][0] : lines["train"][0]);
  EXPECT_EQ(f[ColumnIndex(config, "hour")].substr(0, 6), "141021");
  EXPECT_EQ(f[ColumnIndex(config, "weekday")], "2");
  for (const auto& c : config.data().columns()) EXPECT_NE(c.name(), "id");
}

// ---------------------------------------------------------------------------
// Synthetic inputs.

void WriteMovielens(const std::string& dir, const std::string& ratings) {
  WriteFile(dir + "/movies.csv",
            "movieId,title,genres\n"
            "1,Toy Story (1995),Animation|Comedy\n"
            "2,\"American President, The (1995)\",Drama|Romance\n"
            "3,\"Fish Called \"\"Wanda\"\", A (1988)\",Comedy|Crime\n"
            "4,\"A title\non two lines\",Horror\n"
            "5,No genres,(no genres listed)\n");
  WriteFile(dir + "/ratings.csv", ratings);
}

TEST_F(ConvertSynthetic, MovielensQuotedTitlesAndHistory) {
  const std::string& dir = dir_;
  fs::create_directories(dir + "/in");
  WriteMovielens(dir + "/in",
                 "userId,movieId,rating,timestamp\n"
                 "7,3,4.5,300\n"
                 "7,1,2.0,100\n"
                 "7,2,4.0,200\n"
                 "7,4,1.0,200\n"  // same second as movie 2: neither is the other's history
                 "7,5,5.0,400\n"
                 "8,1,3.0,50\n");
  ConvertOptions o;
  o.format = "movielens";
  o.input = dir + "/in";
  o.out_dir = dir + "/out";
  o.max_history = 2;
  o.max_bad_lines = 0;
  ConvertSummary s;
  absl::Status st = Convert(o, &s);
  ASSERT_TRUE(st.ok()) << st;
  // User 7: 5 ratings -> 1 test row (the newest); user 8: 1 rating -> train.
  EXPECT_EQ(s.train_rows, 5u);
  EXPECT_EQ(s.test_rows, 1u);
  EXPECT_EQ(s.label_positives, std::vector<uint64_t>{3});
  auto lines = CheckOutput(o.out_dir);
  ASSERT_EQ(lines["test"].size(), 1u);
  // Candidate movie 5 at t=400; history capped to the last 2 older ones:
  // (200, 4) and (300, 3), as (time, movie) order puts movie 2 before 4.
  EXPECT_EQ(lines["test"][0],
            "1\t7\t5\t(no genres listed)\t(no genres listed)\t4,3\tHorror,Comedy\t400\t200,300");
  std::map<std::string, std::string> by_movie;
  for (const std::string& line : lines["train"]) {
    std::vector<std::string> f = Fields(line);
    if (f[1] == "7") by_movie[f[2]] = line;
  }
  EXPECT_EQ(by_movie["2"], "1\t7\t2\tDrama\tDrama|Romance\t1\tAnimation\t200\t100");
  EXPECT_EQ(by_movie["4"], "0\t7\t4\tHorror\tHorror\t1\tAnimation\t200\t100");
  EXPECT_EQ(by_movie["3"], "1\t7\t3\tComedy\tComedy|Crime\t2,4\tDrama,Horror\t300\t200,200");
  EXPECT_EQ(by_movie["1"], "0\t7\t1\tAnimation\tAnimation|Comedy\t\t\t100\t");

  // meta.txt, written last, says who wrote the set; a real set has no oracle.
  const std::vector<std::string> meta = ReadLines(o.out_dir + "/meta.txt");
  ASSERT_FALSE(meta.empty());
  EXPECT_EQ(meta[0], "source=convert movielens");
  for (const std::string& line : meta) EXPECT_FALSE(line.starts_with("oracle")) << line;
  EXPECT_EQ(s.files.back(), o.out_dir + "/meta.txt");

  // A second run refuses to overwrite, unless asked to.
  st = Convert(o, &s);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_NE(st.message().find("--overwrite"), std::string::npos) << st;
  EXPECT_EQ(st.message().find("overwrite=true"), std::string::npos) << st;
  o.overwrite = true;
  st = Convert(o, &s);
  EXPECT_TRUE(st.ok()) << st;
}

TEST_F(ConvertSynthetic, MovielensBadLineNamesFileAndLine) {
  const std::string& dir = dir_;
  fs::create_directories(dir + "/in");
  WriteMovielens(dir + "/in",
                 "userId,movieId,rating,timestamp\n"
                 "1,1,4.0,10\n"
                 "1,2,4.0\n"
                 "1,3,x,30\n"
                 "1,4,4.0,40\n");
  ConvertOptions o;
  o.format = "movielens";
  o.input = dir + "/in";
  o.out_dir = dir + "/out";
  o.max_bad_lines = 0;
  absl::Status st = Convert(o, nullptr);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("ratings.csv:3: expected 4 fields, got 3"), std::string::npos) << st;
  EXPECT_FALSE(fs::exists(o.out_dir + "/job.conf"));

  o.max_bad_lines = 1;
  st = Convert(o, nullptr);
  EXPECT_NE(st.message().find("ratings.csv:4: rating 'x' is not a number"), std::string::npos)
      << st;

  o.max_bad_lines = 2;
  ConvertSummary s;
  st = Convert(o, &s);
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(s.bad_lines, 2u);
  EXPECT_EQ(s.train_rows + s.test_rows, 2u);
  ASSERT_EQ(s.bad_line_examples.size(), 2u);

  // Unbalanced quotes in movies.csv.
  WriteFile(dir + "/in/movies.csv", "movieId,title,genres\n1,\"Oops,Drama\n");
  o.max_bad_lines = 0;
  o.overwrite = true;
  st = Convert(o, nullptr);
  EXPECT_NE(st.message().find("movies.csv:2: malformed CSV quoting"), std::string::npos) << st;
}

TEST_F(ConvertSynthetic, CriteoTsvAndBadLines) {
  const std::string& dir = dir_;
  std::string good = "1";
  for (int i = 0; i < 13; ++i) good += i == 2 ? "\t" : "\t" + std::to_string(i - 1);
  for (int i = 0; i < 26; ++i) good += i == 5 ? "\t" : "\tab" + std::to_string(i);
  std::string text;
  for (int i = 0; i < 50; ++i) text += good + "\n";
  WriteFile(dir + "/day_0", text + "2" + good.substr(1) + "\n" + "1\t2\t3\n");
  ConvertOptions o;
  o.format = "criteo";
  o.input = dir + "/day_0";
  o.out_dir = dir + "/out";
  o.max_bad_lines = 0;
  absl::Status st = Convert(o, nullptr);
  EXPECT_NE(st.message().find("day_0:51: label '2' is not 0 or 1"), std::string::npos) << st;
  EXPECT_FALSE(fs::exists(o.out_dir)) << "a failed run leaves nothing behind";
  o.max_bad_lines = 2;
  ConvertSummary s;
  st = Convert(o, &s);
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(s.bad_lines, 2u);
  EXPECT_EQ(s.bad_line_examples[1], dir + "/day_0:52: expected 40 fields, got 3");
  EXPECT_EQ(s.train_rows + s.test_rows, 50u);
  auto lines = CheckOutput(o.out_dir);
  const std::string& any = lines["train"].empty() ? lines["test"][0] : lines["train"][0];
  const std::vector<std::string> f = Fields(any);
  EXPECT_EQ(f[1], "0");        // -1 clamps to 0: log(1 + 0)
  EXPECT_EQ(f[2], "0");        // 0
  EXPECT_EQ(f[3], "");         // empty stays empty (missing: "")
  EXPECT_EQ(f[4], "1.09861");  // log(3)
  EXPECT_EQ(f[14 + 5], "");
}

TEST_F(ConvertSynthetic, CensusAndAvazuBadLines) {
  const std::string& dir = dir_;
  WriteFile(dir + "/census.txt", "38, Private, 6\n");
  ConvertOptions o;
  o.format = "census";
  o.input = dir + "/census.txt";
  o.out_dir = dir + "/census";
  o.max_bad_lines = 0;
  absl::Status st = Convert(o, nullptr);
  EXPECT_NE(st.message().find("census.txt:1: expected 42 fields, got 3"), std::string::npos) << st;

  WriteFile(dir + "/avazu.csv",
            "id,click,hour,C1,site_id\n"
            "1,0,14102100,1005,abc\n"
            "2,1,14133100,1005,abc\n");
  o.format = "avazu";
  o.input = dir + "/avazu.csv";
  o.out_dir = dir + "/avazu";
  st = Convert(o, nullptr);
  EXPECT_NE(st.message().find("avazu.csv:3: hour '14133100' is not YYMMDDHH"), std::string::npos)
      << st;

  o.input = dir + "/missing.csv";
  EXPECT_EQ(Convert(o, nullptr).code(), absl::StatusCode::kNotFound);
  o.format = "libsvm";
  EXPECT_EQ(Convert(o, nullptr).code(), absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------
// Output directories.

// A small Criteo TSV input: `rows` good lines.
std::string CriteoInput(const std::string& dir, int rows) {
  std::string line = "0";
  for (int i = 0; i < 13; ++i) line += "\t" + std::to_string(i);
  for (int i = 0; i < 26; ++i) line += "\tv" + std::to_string(i);
  std::string text;
  for (int i = 0; i < rows; ++i) text += line + "\n";
  WriteFile(dir + "/criteo.tsv", text);
  return dir + "/criteo.tsv";
}

// Every entry under `dir` (directories as "name/"), with the bytes of files.
std::map<std::string, std::string> Tree(const std::string& dir) {
  std::map<std::string, std::string> entries;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    const std::string name = fs::relative(e.path(), dir).string();
    entries[e.is_directory() ? name + "/" : name] = e.is_directory() ? "" : ReadFile(e.path());
  }
  return entries;
}

TEST_F(ConvertSynthetic, OverwriteReplacesAGenDataSetAndItsOracle) {
  GenDataOptions g;
  g.out_dir = dir_ + "/out";
  g.train_rows = 300;
  g.test_rows = 200;
  g.train_files = 3;
  g.test_files = 2;
  g.num_users = 50;
  g.num_items = 40;
  g.num_categories = 4;
  ASSERT_TRUE(GenerateData(g, nullptr).ok());
  ConvertOptions o;
  o.format = "criteo";
  o.input = CriteoInput(dir_, 30);
  o.out_dir = g.out_dir;
  absl::Status st = Convert(o, nullptr);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_NE(st.message().find("--overwrite"), std::string::npos) << st;
  EXPECT_NE(st.message().find("gen-data"), std::string::npos) << st;

  o.overwrite = true;
  ConvertSummary s;
  st = Convert(o, &s);
  ASSERT_TRUE(st.ok()) << st;
  const std::vector<std::string> meta = ReadLines(o.out_dir + "/meta.txt");
  ASSERT_FALSE(meta.empty());
  EXPECT_EQ(meta[0], "source=convert criteo");
  for (const std::string& line : meta) {
    EXPECT_FALSE(line.starts_with("oracle_auc")) << "a stale oracle survived: " << line;
  }
  // Only the new set's files remain.
  std::set<std::string> names;
  for (const auto& [name, bytes] : Tree(o.out_dir)) names.insert(name);
  EXPECT_EQ(names, (std::set<std::string>{"job.conf", "meta.txt", "test/", "test/part-00000.tsv",
                                          "train/", "train/part-00000.tsv"}));
  EXPECT_EQ(s.train_rows + s.test_rows, 30u);
  CheckOutput(o.out_dir);

  // And a convert set is replaced by the next conversion.
  st = Convert(o, &s);
  EXPECT_TRUE(st.ok()) << st;

  // A conversion that fails after replacing the set removes what it wrote,
  // and the emptied directory takes the next run without --overwrite.
  WriteFile(dir_ + "/bad.tsv", "0\t1\t2\n");
  o.input = dir_ + "/bad.tsv";
  o.max_bad_lines = 0;
  st = Convert(o, nullptr);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  for (const auto& [name, bytes] : Tree(o.out_dir)) {
    EXPECT_TRUE(name.ends_with("/")) << name << " stayed after a failed run";
  }
  o.input = dir_ + "/criteo.tsv";
  o.overwrite = false;
  st = Convert(o, nullptr);
  EXPECT_TRUE(st.ok()) << st;
}

TEST_F(ConvertSynthetic, OverwriteRefusesForeignFilesAndTouchesNothing) {
  ConvertOptions o;
  o.format = "criteo";
  o.input = CriteoInput(dir_, 10);
  o.out_dir = dir_ + "/out";
  fs::create_directories(o.out_dir + "/train");
  WriteFile(o.out_dir + "/train/part-00000.tsv", "my own log\n");
  WriteFile(o.out_dir + "/job.conf", "name: \"mine\"\n");
  const auto before = Tree(o.out_dir);
  for (bool overwrite : {false, true}) {
    o.overwrite = overwrite;
    const absl::Status st = Convert(o, nullptr);
    EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
    EXPECT_NE(st.message().find(o.out_dir), std::string::npos) << st;
    EXPECT_EQ(Tree(o.out_dir), before) << "overwrite=" << overwrite;
  }
}

}  // namespace
}  // namespace ember::datasets
