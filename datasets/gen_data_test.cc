#include "datasets/gen_data.h"

#include <zlib.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "datasets/convert.h"
#include "gtest/gtest.h"
#include "models/metrics.h"
#include "proto/config.h"
#include "tests/cluster_harness.h"

namespace ember::datasets {
namespace {

namespace fs = std::filesystem;

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string ReadGzip(const fs::path& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  EXPECT_NE(f, nullptr) << path;
  if (f == nullptr) return "";
  std::string out;
  char buf[65536];
  int n;
  while ((n = gzread(f, buf, sizeof(buf))) > 0) out.append(buf, n);
  EXPECT_EQ(n, 0) << path;
  EXPECT_EQ(gzclose(f), Z_OK);
  return out;
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::stringstream s(text);
  for (std::string line; std::getline(s, line);) lines.push_back(line);
  return lines;
}

std::vector<std::string> Split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  for (;;) {
    const size_t end = s.find(sep, start);
    out.push_back(s.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) return out;
    start = end + 1;
  }
}

std::map<std::string, std::string> ReadMeta(const fs::path& path) {
  std::map<std::string, std::string> kv;
  for (const std::string& line : Lines(ReadFile(path))) {
    const size_t eq = line.find('=');
    if (eq != std::string::npos) kv[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return kv;
}

// Every file under `dir`, sorted, with its bytes.
std::map<std::string, std::string> Snapshot(const fs::path& dir) {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) files[fs::relative(e.path(), dir).string()] = ReadFile(e.path());
  }
  return files;
}

// Each test writes under a fresh directory that the fixture removes, even
// when the test fails.
class GenDataTest : public ::testing::Test {
 protected:
  // Small but complete: every column type, empty histories included.
  GenDataOptions Small(const std::string& sub) const {
    GenDataOptions o;
    o.out_dir = (root_ / sub).string();
    o.seed = 7;
    o.train_rows = 3000;
    o.test_rows = 2000;
    o.train_files = 3;
    o.test_files = 2;
    o.threads = 2;
    o.num_users = 500;
    o.num_items = 300;
    o.num_categories = 20;
    o.max_history = 8;
    return o;
  }

  // Mode long_interest, small: 60 recent items of 4 categories, 140 old ones
  // with 3 deep categories of 1..16 items each, 50 categories.
  GenDataOptions SmallLong(const std::string& sub) const {
    GenDataOptions o = LongInterestDefaults();
    o.out_dir = (root_ / sub).string();
    o.seed = 7;
    o.train_rows = 600;
    o.test_rows = 1000;
    o.train_files = 2;
    o.test_files = 2;
    o.threads = 2;
    o.num_items = 2000;
    o.num_categories = 50;
    o.long_history = 200;
    o.recent_window = 60;
    return o;
  }

  ::ember::testing::TempDir tmp_;
  const fs::path root_ = tmp_.path();
};

TEST_F(GenDataTest, WritesLayoutColumnsAndMeta) {
  const GenDataOptions o = Small("out");
  GenDataSummary s;
  ASSERT_TRUE(GenerateData(o, &s).ok());
  EXPECT_EQ(s.train_rows, 3000u);
  EXPECT_EQ(s.test_rows, 2000u);
  ASSERT_EQ(s.files.size(), 5u);
  EXPECT_EQ(s.files[0], (root_ / "out/train/part-00000.tsv").string());
  EXPECT_EQ(s.files[4], (root_ / "out/test/part-00001.tsv").string());

  uint64_t train_lines = 0, empty_histories = 0;
  for (int i = 0; i < 3; ++i) {
    char name[32];
    std::snprintf(name, sizeof(name), "part-%05d.tsv", i);
    const std::vector<std::string> lines = Lines(ReadFile(root_ / "out/train" / name));
    EXPECT_EQ(lines.size(), 1000u) << name;  // rows spread evenly
    train_lines += lines.size();
    for (const std::string& line : lines) {
      const std::vector<std::string> f = Split(line, '\t');
      ASSERT_EQ(f.size(), kGenDataColumns.size()) << line;
      EXPECT_TRUE(f[0] == "0" || f[0] == "1") << line;
      const uint64_t item = std::stoull(f[3]);
      EXPECT_LT(item, o.num_items);
      EXPECT_EQ(std::stoull(f[4]), item % o.num_categories) << line;
      if (f[5].empty()) {
        EXPECT_TRUE(f[6].empty()) << line;
        ++empty_histories;
        continue;
      }
      const std::vector<std::string> items = Split(f[5], ','), cats = Split(f[6], ',');
      ASSERT_EQ(items.size(), cats.size()) << line;
      EXPECT_LE(items.size(), o.max_history);
      for (size_t j = 0; j < items.size(); ++j) {
        EXPECT_EQ(std::stoull(cats[j]), std::stoull(items[j]) % o.num_categories) << line;
      }
      EXPECT_LT(std::stoul(f[7]), 24u);
      const float d1 = std::stof(f[10]);
      EXPECT_TRUE(d1 >= 0 && d1 <= 1) << line;
    }
  }
  EXPECT_EQ(train_lines, 3000u);
  EXPECT_GT(empty_histories, 0u);  // min_history = 0 and max_history = 8

  const auto meta = ReadMeta(root_ / "out/meta.txt");
  EXPECT_EQ(Lines(ReadFile(root_ / "out/meta.txt"))[0], "source=gen-data");
  EXPECT_EQ(meta.at("train_rows"), "3000");
  EXPECT_EQ(meta.at("test_rows"), "2000");
  EXPECT_EQ(meta.at("seed"), "7");
  EXPECT_EQ(meta.at("columns"),
            "label,user_id,user_group,item_id,item_cat,hist_items,hist_cats,hour,device,dense_0,"
            "dense_1");
  EXPECT_EQ(std::stod(meta.at("oracle_auc")), s.oracle_auc);
  EXPECT_EQ(std::stod(meta.at("positive_rate")), s.positive_rate);
  // Mode long_interest's keys stay out of the default mode's meta.txt.
  EXPECT_FALSE(meta.count("mode"));
  EXPECT_FALSE(meta.count("long_history"));
  EXPECT_FALSE(meta.count("recent_only_oracle_auc"));
  EXPECT_TRUE(std::isnan(s.recent_only_oracle_auc));
  for (const auto& [name, value] : GenDataOptionValues(o)) {
    ASSERT_TRUE(meta.count(name)) << name;
    EXPECT_EQ(meta.at(name), value) << name;
  }
  EXPECT_FALSE(fs::exists(root_ / "out/meta.txt.tmp"));
}

TEST_F(GenDataTest, SameSeedSameBytesWhateverTheThreads) {
  GenDataOptions a = Small("a"), b = Small("b"), c = Small("c");
  a.threads = 1;
  b.threads = 3;
  c.seed = 8;
  ASSERT_TRUE(GenerateData(a, nullptr).ok());
  ASSERT_TRUE(GenerateData(b, nullptr).ok());
  ASSERT_TRUE(GenerateData(c, nullptr).ok());
  auto sa = Snapshot(root_ / "a"), sb = Snapshot(root_ / "b"), sc = Snapshot(root_ / "c");
  ASSERT_EQ(sa.size(), 6u);  // 5 parts + meta
  for (const auto& [name, bytes] : sa) {
    if (name == "meta.txt") continue;  // names out_dir and threads
    EXPECT_TRUE(bytes == sb[name]) << name;
    EXPECT_FALSE(bytes == sc[name]) << name;
  }
  const auto ma = ReadMeta(root_ / "a/meta.txt"), mb = ReadMeta(root_ / "b/meta.txt");
  EXPECT_EQ(ma.at("oracle_auc"), mb.at("oracle_auc"));
  EXPECT_EQ(ma.at("distinct_items"), mb.at("distinct_items"));
}

TEST_F(GenDataTest, OracleAucRecomputesFromTheTestFiles) {
  GenDataOptions o = Small("out");
  o.category_match_strength = 0.5;  // exercise every term
  GenDataSummary s;
  ASSERT_TRUE(GenerateData(o, &s).ok());
  std::vector<float> p, labels;
  for (const char* name : {"part-00000.tsv", "part-00001.tsv"}) {
    for (const std::string& line : Lines(ReadFile(root_ / "out/test" / name))) {
      absl::StatusOr<float> prob = ClickProbability(o, line);
      ASSERT_TRUE(prob.ok()) << prob.status() << ": " << line;
      ASSERT_GT(*prob, 0.0f);
      ASSERT_LT(*prob, 1.0f);
      p.push_back(*prob);
      labels.push_back(line[0] == '1' ? 1.0f : 0.0f);
    }
  }
  ASSERT_EQ(p.size(), 2000u);
  EXPECT_EQ(models::ExactAuc(p, labels), s.oracle_auc);
  EXPECT_EQ(models::LogLoss(p, labels), s.oracle_logloss);
  EXPECT_GT(s.oracle_auc, 0.6);
  EXPECT_LT(s.oracle_auc, 0.95);
  // Labels are Bernoulli(p): their mean is close to the mean p.
  EXPECT_NEAR(s.positive_rate, s.mean_click_probability, 0.03);
  EXPECT_NEAR(s.mean_history, 4.0, 0.3);

  // The options must be the file's: another seed re-derives other groups.
  GenDataOptions other = o;
  other.seed = 8;
  int mismatches = 0;
  for (const std::string& line : Lines(ReadFile(root_ / "out/test/part-00000.tsv"))) {
    mismatches += !ClickProbability(other, line).ok();
  }
  EXPECT_GT(mismatches, 900);
  EXPECT_FALSE(ClickProbability(o, "1\t2\t3").ok());
}

TEST_F(GenDataTest, DefaultModelIsInTheAdvertisedRange) {
  // The default population and click model on fewer rows.
  GenDataOptions o;
  o.out_dir = (root_ / "out").string();
  o.train_rows = 20000;
  o.test_rows = 40000;
  GenDataSummary s;
  ASSERT_TRUE(GenerateData(o, &s).ok());
  EXPECT_GT(s.oracle_auc, 0.75);
  EXPECT_LT(s.oracle_auc, 0.85);
  EXPECT_GT(s.positive_rate, 0.2);
  EXPECT_LT(s.positive_rate, 0.4);
  EXPECT_GT(s.distinct.users, 5000u);
  EXPECT_LE(s.distinct.users, o.num_users);
  EXPECT_EQ(s.distinct.categories, o.num_categories);
}

TEST_F(GenDataTest, GzipHoldsTheSameLines) {
  GenDataOptions plain = Small("plain"), gz = Small("gz");
  gz.gzip = true;
  gz.gzip_level = 6;
  ASSERT_TRUE(GenerateData(plain, nullptr).ok());
  GenDataSummary s;
  ASSERT_TRUE(GenerateData(gz, &s).ok());
  EXPECT_EQ(s.files[0], (root_ / "gz/train/part-00000.tsv.gz").string());
  uint64_t plain_bytes = 0;
  for (const char* f : {"train/part-00000.tsv", "train/part-00002.tsv", "test/part-00001.tsv"}) {
    const std::string text = ReadFile(root_ / "plain" / f);
    EXPECT_EQ(ReadGzip(root_ / "gz" / (std::string(f) + ".gz")), text) << f;
    plain_bytes += text.size();
  }
  EXPECT_LT(s.bytes_written, plain_bytes);  // 5 compressed files < 3 plain ones
}

TEST_F(GenDataTest, RefusesBadOptionsNamingThem) {
  struct Case {
    std::string option;
    std::function<void(GenDataOptions*)> spoil;
  };
  const std::vector<Case> cases = {
      {"out_dir", [](GenDataOptions* o) { o->out_dir.clear(); }},
      {"train_rows", [](GenDataOptions* o) { o->train_rows = 0; }},
      {"train_files", [](GenDataOptions* o) { o->train_files = 0; }},
      {"test_files", [](GenDataOptions* o) { o->test_files = 2001; }},
      {"gzip_level", [](GenDataOptions* o) { o->gzip_level = 10; }},
      {"num_users", [](GenDataOptions* o) { o->num_users = 0; }},
      {"num_categories", [](GenDataOptions* o) { o->num_categories = 301; }},
      {"num_topics", [](GenDataOptions* o) { o->num_topics = 21; }},
      {"user_zipf", [](GenDataOptions* o) { o->user_zipf = -0.5; }},
      {"item_zipf", [](GenDataOptions* o) { o->item_zipf = std::nan(""); }},
      {"min_history", [](GenDataOptions* o) { o->min_history = 9; }},
      {"history_focus", [](GenDataOptions* o) { o->history_focus = 1.5; }},
      {"interest_cap", [](GenDataOptions* o) { o->interest_cap = 0; }},
      {"count_distinct",
       [](GenDataOptions* o) { o->num_users = o->num_items = uint64_t{1} << 40; }},
  };
  for (const Case& c : cases) {
    GenDataOptions o = Small("bad");
    c.spoil(&o);
    const absl::Status v = ValidateGenDataOptions(o);
    EXPECT_EQ(v.code(), absl::StatusCode::kInvalidArgument) << c.option;
    EXPECT_NE(v.message().find("option " + c.option + ":"), std::string::npos)
        << c.option << " -> " << v;
    if (!o.out_dir.empty()) {
      EXPECT_EQ(GenerateData(o, nullptr).message(), v.message());
      EXPECT_FALSE(fs::exists(o.out_dir)) << c.option;  // nothing written
    }
  }
  EXPECT_TRUE(ValidateGenDataOptions(Small("good")).ok());
}

TEST_F(GenDataTest, OptionsRoundTripByName) {
  GenDataOptions o = Small("x");
  o.gzip = true;
  o.user_zipf = 0.123456789;
  GenDataOptions back;
  for (const auto& [name, value] : GenDataOptionValues(o)) {
    ASSERT_TRUE(SetGenDataOption(name, value, &back).ok()) << name << "=" << value;
  }
  EXPECT_EQ(GenDataOptionValues(back), GenDataOptionValues(o));
  EXPECT_EQ(back.user_zipf, 0.123456789);

  absl::Status st = SetGenDataOption("num_userz", "3", &back);
  EXPECT_NE(st.message().find("num_userz"), std::string::npos) << st;
  st = SetGenDataOption("train_rows", "12x", &back);
  EXPECT_NE(st.message().find("train_rows"), std::string::npos) << st;
  EXPECT_EQ(back.train_rows, o.train_rows);  // unchanged on failure
  EXPECT_FALSE(SetGenDataOption("num_topics", "-1", &back).ok());
  EXPECT_FALSE(SetGenDataOption("gzip", "maybe", &back).ok());
}

TEST_F(GenDataTest, ExistingOutputNeedsOverwriteAndForeignFilesStay) {
  GenDataOptions o = Small("out");
  ASSERT_TRUE(GenerateData(o, nullptr).ok());
  absl::Status st = GenerateData(o, nullptr);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_NE(st.message().find("--overwrite"), std::string::npos) << st;
  EXPECT_EQ(st.message().find("overwrite=true"), std::string::npos) << st;
  EXPECT_NE(st.message().find(o.out_dir), std::string::npos) << st;

  // A rerun with fewer files leaves none of the old ones behind.
  o.overwrite = true;
  o.train_files = 2;
  ASSERT_TRUE(GenerateData(o, nullptr).ok());
  EXPECT_FALSE(fs::exists(root_ / "out/train/part-00002.tsv"));
  EXPECT_TRUE(fs::exists(root_ / "out/train/part-00001.tsv"));

  std::ofstream(root_ / "out/train/notes.txt") << "mine";
  st = GenerateData(o, nullptr);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_NE(st.message().find("notes.txt"), std::string::npos) << st;
  EXPECT_TRUE(fs::exists(root_ / "out/train/notes.txt"));
}

// Every entry under `dir` (directories as "name/"), with the bytes of files.
std::map<std::string, std::string> Tree(const fs::path& dir) {
  std::map<std::string, std::string> entries;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    const std::string name = fs::relative(e.path(), dir).string();
    if (e.is_directory()) {
      entries[name + "/"] = "";
    } else {
      entries[name] = ReadFile(e.path());
    }
  }
  return entries;
}

// A data set `ember convert criteo` wrote, from a 20-line input.
void WriteConvertedSet(const fs::path& root, const std::string& out_dir) {
  std::string line = "1";
  for (int i = 0; i < 13; ++i) absl::StrAppend(&line, "\t", i);
  for (int i = 0; i < 26; ++i) absl::StrAppend(&line, "\tc", i);
  std::string text;
  for (int i = 0; i < 20; ++i) text += line + "\n";
  std::ofstream(root / "criteo.tsv") << text;
  ConvertOptions c;
  c.format = "criteo";
  c.input = (root / "criteo.tsv").string();
  c.out_dir = out_dir;
  const absl::Status st = Convert(c, nullptr);
  ASSERT_TRUE(st.ok()) << st;
  ASSERT_EQ(ReadMeta(fs::path(out_dir) / "meta.txt").at("source"), "convert criteo");
}

TEST_F(GenDataTest, RefusesAConvertedSetEvenWithOverwriteAndTouchesNothing) {
  GenDataOptions o = Small("out");
  ASSERT_NO_FATAL_FAILURE(WriteConvertedSet(root_, o.out_dir));
  const auto before = Tree(o.out_dir);
  for (bool overwrite : {false, true}) {
    o.overwrite = overwrite;
    const absl::Status st = GenerateData(o, nullptr);
    EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
    EXPECT_NE(st.message().find(o.out_dir), std::string::npos) << st;
    EXPECT_NE(st.message().find("ember convert criteo"), std::string::npos) << st;
    EXPECT_NE(st.message().find("pick another --out"), std::string::npos) << st;
    EXPECT_EQ(Tree(o.out_dir), before) << "overwrite=" << overwrite;
  }
}

TEST_F(GenDataTest, RefusesForeignFilesEvenWithOverwriteAndTouchesNothing) {
  GenDataOptions o = Small("out");
  // A user's own logs, one named like ours, and no meta.txt.
  fs::create_directories(root_ / "out/train");
  fs::create_directories(root_ / "out/test");
  std::ofstream(root_ / "out/train/part-00000.tsv") << "1\tmy\tlog\n";
  std::ofstream(root_ / "out/test/day1.tsv") << "0\tmine\n";
  std::ofstream(root_ / "out/notes.txt") << "keep me";
  const auto before = Tree(o.out_dir);
  for (bool overwrite : {false, true}) {
    o.overwrite = overwrite;
    const absl::Status st = GenerateData(o, nullptr);
    EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
    EXPECT_NE(st.message().find(o.out_dir), std::string::npos) << st;
    EXPECT_NE(st.message().find("neither gen-data nor convert wrote"), std::string::npos) << st;
    EXPECT_NE(st.message().find("remove it yourself"), std::string::npos) << st;
    EXPECT_EQ(Tree(o.out_dir), before) << "overwrite=" << overwrite;
  }
  // A meta.txt that is not ours does not make the directory ours either.
  std::ofstream(root_ / "out/meta.txt") << "oracle_auc=0.9\n";
  o.overwrite = true;
  EXPECT_EQ(GenerateData(o, nullptr).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ReadFile(root_ / "out/train/part-00000.tsv"), "1\tmy\tlog\n");
}

TEST_F(GenDataTest, OverwriteAcceptsAnOlderGenDataSetWithoutSource) {
  GenDataOptions o = Small("out");
  o.train_files = 3;
  ASSERT_TRUE(GenerateData(o, nullptr).ok());
  // meta.txt as gen-data wrote it before the source= line.
  std::string meta = ReadFile(root_ / "out/meta.txt");
  ASSERT_TRUE(meta.starts_with("source=gen-data\n"));
  std::ofstream(root_ / "out/meta.txt") << meta.substr(meta.find('\n') + 1);
  std::ofstream(root_ / "out/README") << "not read by trainers";
  o.overwrite = true;
  o.train_files = 2;
  const absl::Status st = GenerateData(o, nullptr);
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(ReadMeta(root_ / "out/meta.txt").at("source"), "gen-data");
  EXPECT_FALSE(fs::exists(root_ / "out/train/part-00002.tsv"));
  EXPECT_EQ(ReadFile(root_ / "out/README"), "not read by trainers");
}

TEST_F(GenDataTest, UnwritablePathIsNamed) {
  std::ofstream(root_ / "file") << "x";
  GenDataOptions o = Small("file/out");
  const absl::Status st = GenerateData(o, nullptr);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find((root_ / "file").string()), std::string::npos) << st;
}

TEST_F(GenDataTest, NoTestSplit) {
  GenDataOptions o = Small("out");
  o.test_rows = 0;
  GenDataSummary s;
  ASSERT_TRUE(GenerateData(o, &s).ok());
  EXPECT_TRUE(std::isnan(s.oracle_auc));
  EXPECT_FALSE(fs::exists(root_ / "out/test"));
  EXPECT_EQ(ReadMeta(root_ / "out/meta.txt").at("oracle_auc"), "nan");
}

// ---------------------------------------------------------------------------
// Mode long_interest.

// One parsed line of mode long_interest.
struct LongLine {
  std::string label;
  uint64_t user = 0, item = 0, category = 0;
  int64_t timestamp = 0;
  std::vector<uint64_t> items, cats;
  std::vector<int64_t> times;
};

LongLine ParseLong(const std::string& line) {
  LongLine l;
  const std::vector<std::string> f = Split(line, '\t');
  EXPECT_EQ(f.size(), kGenDataLongInterestColumns.size()) << line.substr(0, 200);
  if (f.size() != kGenDataLongInterestColumns.size()) return l;
  l.label = f[0];
  l.user = std::stoull(f[1]);
  l.item = std::stoull(f[2]);
  l.category = std::stoull(f[3]);
  l.timestamp = std::stoll(f[4]);
  for (const std::string& v : Split(f[5], ',')) l.items.push_back(std::stoull(v));
  for (const std::string& v : Split(f[6], ',')) l.cats.push_back(std::stoull(v));
  for (const std::string& v : Split(f[7], ',')) l.times.push_back(std::stoll(v));
  return l;
}

// The lines of every part of a split, in file order.
std::vector<std::string> SplitLines(const fs::path& dir, int files) {
  std::vector<std::string> lines;
  for (int i = 0; i < files; ++i) {
    char name[32];
    std::snprintf(name, sizeof(name), "part-%05d.tsv", i);
    for (std::string& line : Lines(ReadFile(dir / name))) lines.push_back(std::move(line));
  }
  return lines;
}

TEST_F(GenDataTest, LongInterestLayoutTimesAndDeepInterests) {
  const GenDataOptions o = SmallLong("out");
  GenDataSummary s;
  ASSERT_TRUE(GenerateData(o, &s).ok());
  std::vector<std::string> lines = SplitLines(root_ / "out/train", 2);
  ASSERT_EQ(lines.size(), 600u);
  for (std::string& line : SplitLines(root_ / "out/test", 2)) lines.push_back(std::move(line));
  ASSERT_EQ(lines.size(), 1600u);

  const size_t old = o.long_history - o.recent_window;
  uint64_t hits = 0, low_category_rows = 0, low_category_hits = 0;
  for (size_t r = 0; r < lines.size(); ++r) {
    SCOPED_TRACE(::testing::Message() << "row " << r);
    const LongLine l = ParseLong(lines[r]);
    ASSERT_TRUE(l.label == "0" || l.label == "1");
    EXPECT_EQ(l.user, r);  // a user of its own: the row number, train first
    EXPECT_LT(l.item, o.num_items);
    EXPECT_EQ(l.category, l.item % o.num_categories);
    // Aligned sequences of exactly long_history values.
    ASSERT_EQ(l.items.size(), o.long_history);
    ASSERT_EQ(l.cats.size(), o.long_history);
    ASSERT_EQ(l.times.size(), o.long_history);
    for (size_t j = 0; j < l.items.size(); ++j) {
      ASSERT_LT(l.items[j], o.num_items);
      ASSERT_EQ(l.cats[j], l.items[j] % o.num_categories);
    }
    // Times: strictly increasing, all before the sample's, over months.
    EXPECT_GE(l.timestamp, 1704067200);
    EXPECT_LT(l.timestamp, 1704067200 + 90 * 86400);
    for (size_t j = 1; j < l.times.size(); ++j) ASSERT_LT(l.times[j - 1], l.times[j]);
    EXPECT_LT(l.times.back(), l.timestamp);
    EXPECT_GE(l.timestamp - l.times.front(), 60 * 86400);
    EXPECT_LE(l.timestamp - l.times.front(), 720 * 86400);

    // The recent window's categories; the candidate's is never among them,
    // so in particular not among the last 50 items.
    const std::set<uint64_t> recent(l.cats.begin() + old, l.cats.end());
    EXPECT_LE(recent.size(), o.recent_interests);
    EXPECT_FALSE(recent.count(l.category));
    // The old part: the recent categories plus deep ones that never occur
    // in the recent window, deep_min_items..deep_max_items of each.
    std::map<uint64_t, uint32_t> deep;
    for (size_t j = 0; j < old; ++j) {
      if (!recent.count(l.cats[j])) ++deep[l.cats[j]];
    }
    EXPECT_EQ(deep.size(), o.deep_interests);
    for (const auto& [category, n] : deep) {
      EXPECT_GE(n, o.deep_min_items);
      EXPECT_LE(n, o.deep_max_items);
      for (size_t j = l.cats.size() - 50; j < l.cats.size(); ++j) ASSERT_NE(l.cats[j], category);
    }
    // A candidate hits a deep interest or occurs nowhere in the history.
    const bool hit = deep.count(l.category) > 0;
    if (!hit) {
      EXPECT_EQ(std::count(l.cats.begin(), l.cats.end(), l.category), 0);
    }
    hits += hit;
    if (l.category < o.num_categories / 2) {
      ++low_category_rows;
      low_category_hits += hit;
    }
  }
  // deep_share = 0.5 of the candidates hit, whatever their category.
  EXPECT_NEAR(static_cast<double>(hits) / lines.size(), o.deep_share, 0.06);
  EXPECT_NEAR(static_cast<double>(low_category_hits) / low_category_rows, o.deep_share, 0.08);

  const auto meta = ReadMeta(root_ / "out/meta.txt");
  EXPECT_EQ(meta.at("columns"),
            "label,user_id,item_id,item_cat,timestamp,hist_items,hist_cats,hist_times");
  EXPECT_EQ(meta.at("mode"), "long_interest");
  EXPECT_EQ(meta.at("long_history"), "200");
  EXPECT_EQ(meta.at("mean_history"), "200");
  EXPECT_EQ(meta.at("distinct_users"), "1600");
  EXPECT_FALSE(meta.count("num_users"));  // options the mode ignores
  EXPECT_FALSE(meta.count("max_history"));
  EXPECT_EQ(std::stod(meta.at("recent_only_oracle_auc")), s.recent_only_oracle_auc);
  EXPECT_EQ(std::stod(meta.at("recent_only_oracle_logloss")), s.recent_only_oracle_logloss);
  for (const auto& [name, value] : GenDataOptionValues(o)) {
    ASSERT_TRUE(meta.count(name)) << name;
    EXPECT_EQ(meta.at(name), value) << name;
  }
}

TEST_F(GenDataTest, LongInterestSameSeedSameBytesAndGzip) {
  GenDataOptions a = SmallLong("a"), b = SmallLong("b"), c = SmallLong("c"), z = SmallLong("z");
  a.threads = 1;
  b.threads = 3;
  c.seed = 8;
  z.gzip = true;
  for (const GenDataOptions* o : {&a, &b, &c, &z}) ASSERT_TRUE(GenerateData(*o, nullptr).ok());
  auto sa = Snapshot(root_ / "a"), sb = Snapshot(root_ / "b"), sc = Snapshot(root_ / "c");
  ASSERT_EQ(sa.size(), 5u);  // 4 parts + meta
  for (const auto& [name, bytes] : sa) {
    if (name == "meta.txt") continue;
    EXPECT_TRUE(bytes == sb[name]) << name;
    EXPECT_FALSE(bytes == sc[name]) << name;
    EXPECT_EQ(ReadGzip(root_ / "z" / (name + ".gz")), bytes) << name;
  }
  const auto ma = ReadMeta(root_ / "a/meta.txt"), mb = ReadMeta(root_ / "b/meta.txt");
  EXPECT_EQ(ma.at("oracle_auc"), mb.at("oracle_auc"));
  EXPECT_EQ(ma.at("recent_only_oracle_auc"), mb.at("recent_only_oracle_auc"));
}

TEST_F(GenDataTest, LongInterestOracleRecomputesFromTheTestFiles) {
  const GenDataOptions o = SmallLong("out");
  GenDataSummary s;
  ASSERT_TRUE(GenerateData(o, &s).ok());
  std::vector<float> p, labels;
  const std::vector<std::string> lines = SplitLines(root_ / "out/test", 2);
  for (const std::string& line : lines) {
    absl::StatusOr<float> prob = ClickProbability(o, line);
    ASSERT_TRUE(prob.ok()) << prob.status();
    p.push_back(*prob);
    labels.push_back(line[0] == '1' ? 1.0f : 0.0f);
  }
  ASSERT_EQ(p.size(), 1000u);
  EXPECT_EQ(models::ExactAuc(p, labels), s.oracle_auc);
  EXPECT_EQ(models::LogLoss(p, labels), s.oracle_logloss);
  EXPECT_NEAR(s.positive_rate, s.mean_click_probability, 0.04);
  EXPECT_EQ(s.mean_history, 200.0);

  // recent_only_oracle_auc from the lines: the line's p with n old-part
  // items of the candidate's category, n = 0 and deep_min..deep_max_items,
  // mixed as a scorer blind to the old part must.
  std::vector<float> p_recent;
  for (const std::string& line : lines) {
    const LongLine l = ParseLong(line);
    const size_t old = o.long_history - o.recent_window;
    auto p_with = [&](uint32_t n) {
      std::string items, cats;
      for (size_t j = 0; j < l.items.size(); ++j) {
        // Old part: n candidate items, else the newest item (a recent one).
        const uint64_t item = j >= old ? l.items[j] : j < n ? l.item : l.items.back();
        absl::StrAppend(&items, j ? "," : "", item);
        absl::StrAppend(&cats, j ? "," : "", item % o.num_categories);
      }
      const std::vector<std::string> f = Split(line, '\t');
      absl::StatusOr<float> q =
          ClickProbability(o, absl::StrCat(f[0], "\t", f[1], "\t", f[2], "\t", f[3], "\t", f[4],
                                           "\t", items, "\t", cats, "\t", f[7]));
      EXPECT_TRUE(q.ok()) << q.status();
      return q.ok() ? static_cast<double>(*q) : 0.0;
    };
    double deep = 0;
    for (uint32_t n = o.deep_min_items; n <= o.deep_max_items; ++n) deep += p_with(n);
    deep /= o.deep_max_items - o.deep_min_items + 1;
    p_recent.push_back(static_cast<float>(o.deep_share * deep + (1 - o.deep_share) * p_with(0)));
  }
  EXPECT_NEAR(models::ExactAuc(p_recent, labels), s.recent_only_oracle_auc, 1e-4);
  EXPECT_NEAR(models::LogLoss(p_recent, labels), s.recent_only_oracle_logloss, 1e-5);
  EXPECT_GT(s.oracle_auc - s.recent_only_oracle_auc, 0.05);

  // A line of the other mode, or of another history length, is refused.
  GenDataOptions other = o;
  other.long_history = 199;
  EXPECT_FALSE(ClickProbability(other, lines[0]).ok());
  EXPECT_FALSE(ClickProbability(Small("x"), lines[0]).ok());
  std::string broken = lines[0];
  broken.back() = '\t';
  EXPECT_FALSE(ClickProbability(o, broken).ok());
}

TEST_F(GenDataTest, LongInterestDefaultModelIsInTheAdvertisedRange) {
  // The default click model; shorter histories only to keep the test small
  // (they change nothing in the model: the deep counts do not depend on it).
  GenDataOptions o = LongInterestDefaults();
  o.out_dir = (root_ / "out").string();
  o.train_rows = 1000;
  o.test_rows = 12000;
  o.long_history = 200;
  GenDataSummary s;
  ASSERT_TRUE(GenerateData(o, &s).ok());
  EXPECT_GT(s.oracle_auc, 0.77);
  EXPECT_LT(s.oracle_auc, 0.85);
  EXPECT_GT(s.positive_rate, 0.25);
  EXPECT_LT(s.positive_rate, 0.35);
  // What the old part is worth: the best recent-only scorer is far behind.
  EXPECT_GT(s.recent_only_oracle_auc, 0.55);
  EXPECT_GE(s.oracle_auc - s.recent_only_oracle_auc, 0.1);
  EXPECT_GT(s.recent_only_oracle_logloss, s.oracle_logloss);
  EXPECT_EQ(s.distinct.users, 13000u);
  EXPECT_EQ(s.distinct.categories, o.num_categories);
}

TEST_F(GenDataTest, LongInterestRefusesBadOptionsNamingThem) {
  struct Case {
    std::string option;
    std::function<void(GenDataOptions*)> spoil;
  };
  const std::vector<Case> cases = {
      {"mode", [](GenDataOptions* o) { o->mode = "longinterest"; }},
      {"long_history", [](GenDataOptions* o) { o->long_history = 155; }},  // < 60 + 2*3*16
      {"long_history", [](GenDataOptions* o) { o->long_history = 100001; }},
      {"long_history", [](GenDataOptions* o) { o->deep_max_items = 50000; }},
      {"recent_window", [](GenDataOptions* o) { o->recent_window = 0; }},
      {"recent_interests", [](GenDataOptions* o) { o->recent_interests = 65; }},
      {"deep_interests", [](GenDataOptions* o) { o->deep_interests = 0; }},
      {"deep_interests", [](GenDataOptions* o) { o->deep_interests = 46; }},  // 50 - 4 - 1 = 45
      {"deep_min_items", [](GenDataOptions* o) { o->deep_min_items = 17; }},
      {"deep_max_items", [](GenDataOptions* o) { o->deep_max_items = 0; }},
      {"deep_share", [](GenDataOptions* o) { o->deep_share = -0.1; }},
      {"interest_cap", [](GenDataOptions* o) { o->interest_cap = 0; }},
      {"num_categories", [](GenDataOptions* o) { o->num_categories = 2001; }},
      {"count_distinct", [](GenDataOptions* o) { o->num_items = uint64_t{1} << 40; }},
  };
  for (const Case& c : cases) {
    GenDataOptions o = SmallLong("bad");
    c.spoil(&o);
    const absl::Status v = ValidateGenDataOptions(o);
    EXPECT_EQ(v.code(), absl::StatusCode::kInvalidArgument) << c.option;
    EXPECT_NE(v.message().find("option " + c.option + ":"), std::string::npos)
        << c.option << " -> " << v;
    EXPECT_EQ(GenerateData(o, nullptr).message(), v.message());
    EXPECT_FALSE(fs::exists(o.out_dir)) << c.option;
  }
  // Options the mode ignores are not checked.
  GenDataOptions o = SmallLong("good");
  o.num_topics = 1000;
  o.max_history = 200000;
  EXPECT_TRUE(ValidateGenDataOptions(o).ok());
  // The largest history.
  o.long_history = 100000;
  EXPECT_TRUE(ValidateGenDataOptions(o).ok());
}

TEST_F(GenDataTest, ModeByNameSwitchesTheDefaults) {
  GenDataOptions o;
  ASSERT_TRUE(SetGenDataOption("mode", "long_interest", &o).ok());
  EXPECT_EQ(GenDataOptionValues(o), GenDataOptionValues(LongInterestDefaults()));
  EXPECT_EQ(o.train_rows, 200000u);
  EXPECT_EQ(o.num_categories, 200u);

  // Options set before keep their values; so do those set after.
  GenDataOptions p;
  ASSERT_TRUE(SetGenDataOption("train_rows", "5000", &p).ok());
  ASSERT_TRUE(SetGenDataOption("mode", "long_interest", &p).ok());
  ASSERT_TRUE(SetGenDataOption("num_items", "30000", &p).ok());
  EXPECT_EQ(p.train_rows, 5000u);
  EXPECT_EQ(p.test_rows, 20000u);
  EXPECT_EQ(p.num_items, 30000u);
  // And back.
  ASSERT_TRUE(SetGenDataOption("mode", "default", &p).ok());
  EXPECT_EQ(p.train_rows, 5000u);
  EXPECT_EQ(p.test_rows, GenDataOptions().test_rows);
  EXPECT_EQ(p.num_items, 30000u);
  EXPECT_EQ(p.num_categories, GenDataOptions().num_categories);

  absl::Status st = SetGenDataOption("mode", "sim", &p);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("option mode:"), std::string::npos) << st;
  EXPECT_EQ(p.mode, "default");

  // Round trip by name, mode first, even for a value equal to the default
  // mode's default.
  GenDataOptions q = SmallLong("x");
  q.train_rows = GenDataOptions().train_rows;
  q.deep_share = 0.25;
  const auto values = GenDataOptionValues(q);
  ASSERT_EQ(values[0].first, "mode");
  GenDataOptions back;
  for (const auto& [name, value] : values) {
    ASSERT_TRUE(SetGenDataOption(name, value, &back).ok()) << name << "=" << value;
  }
  EXPECT_EQ(GenDataOptionValues(back), values);
  EXPECT_EQ(back.train_rows, q.train_rows);
}

// ---------------------------------------------------------------------------
// Mode one_epoch.

// Small: 2000 users and 1000 items over 5000 rows, so that ids recur.
GenDataOptions SmallOneEpoch(const fs::path& dir) {
  GenDataOptions o = OneEpochDefaults();
  o.out_dir = dir.string();
  o.seed = 7;
  o.train_rows = 3000;
  o.test_rows = 2000;
  o.train_files = 3;
  o.test_files = 2;
  o.threads = 2;
  o.num_users = 2000;
  o.num_user_groups = 20;
  o.num_items = 1000;
  o.num_categories = 30;
  return o;
}

TEST_F(GenDataTest, OneEpochLayoutCrossesAndMeta) {
  const GenDataOptions o = SmallOneEpoch(root_ / "out");
  GenDataSummary s;
  ASSERT_TRUE(GenerateData(o, &s).ok());
  EXPECT_EQ(s.train_rows, 3000u);
  EXPECT_EQ(s.test_rows, 2000u);
  ASSERT_EQ(s.files.size(), 5u);
  uint64_t lines_seen = 0;
  std::set<std::string> hours;
  for (const std::string& file : s.files) {
    for (const std::string& line : Lines(ReadFile(file))) {
      ++lines_seen;
      const std::vector<std::string> f = Split(line, '\t');
      ASSERT_EQ(f.size(), kGenDataOneEpochColumns.size()) << line;
      EXPECT_TRUE(f[0] == "0" || f[0] == "1") << line;
      EXPECT_LT(std::stoull(f[1]), o.num_users) << line;
      EXPECT_LT(std::stoull(f[2]), o.num_user_groups) << line;
      EXPECT_LT(std::stoull(f[3]), o.num_items) << line;
      EXPECT_EQ(std::stoull(f[4]), std::stoull(f[3]) % o.num_categories) << line;
      EXPECT_LT(std::stoul(f[5]), 24u) << line;
      hours.insert(f[5]);
      EXPECT_EQ(f[6], f[2] + "_" + f[4]) << line;  // group_cat
      EXPECT_EQ(f[7], f[1] + "_" + f[3]) << line;  // user_item
      EXPECT_EQ(f[8], f[1] + "_" + f[4]) << line;  // user_cat
    }
  }
  EXPECT_EQ(lines_seen, 5000u);
  EXPECT_EQ(hours.size(), 24u);

  const auto meta = ReadMeta(root_ / "out/meta.txt");
  EXPECT_EQ(meta.at("mode"), "one_epoch");
  EXPECT_EQ(meta.at("columns"),
            "label,user_id,user_group,item_id,item_cat,hour,group_cat,user_item,user_cat");
  EXPECT_EQ(std::stod(meta.at("oracle_auc")), s.oracle_auc);
  EXPECT_EQ(meta.at("mean_history"), "0");
  EXPECT_EQ(meta.at("cross_effect"), "0.8");
  // Options the mode ignores, and mode long_interest's figures, stay out.
  for (const char* key : {"interest_strength", "interest_cap", "num_topics", "max_history",
                          "dense_weight", "long_history", "recent_only_oracle_auc"}) {
    EXPECT_FALSE(meta.count(key)) << key;
  }
  for (const auto& [name, value] : GenDataOptionValues(o)) {
    ASSERT_TRUE(meta.count(name)) << name;
    EXPECT_EQ(meta.at(name), value) << name;
  }
  EXPECT_EQ(s.distinct.categories, o.num_categories);
  EXPECT_GT(s.distinct.users, 1000u);
  EXPECT_LE(s.distinct.users, o.num_users);
}

TEST_F(GenDataTest, OneEpochSameSeedSameBytesWhateverTheThreads) {
  GenDataOptions a = SmallOneEpoch(root_ / "a"), b = SmallOneEpoch(root_ / "b"),
                 c = SmallOneEpoch(root_ / "c");
  a.threads = 1;
  b.threads = 3;
  c.seed = 8;
  ASSERT_TRUE(GenerateData(a, nullptr).ok());
  ASSERT_TRUE(GenerateData(b, nullptr).ok());
  ASSERT_TRUE(GenerateData(c, nullptr).ok());
  auto sa = Snapshot(root_ / "a"), sb = Snapshot(root_ / "b"), sc = Snapshot(root_ / "c");
  ASSERT_EQ(sa.size(), 6u);  // 5 parts + meta
  for (const auto& [name, bytes] : sa) {
    if (name == "meta.txt") continue;  // names out_dir and threads
    EXPECT_TRUE(bytes == sb[name]) << name;
    EXPECT_FALSE(bytes == sc[name]) << name;
  }
  // The default mode's stream differs: the modes do not share rows.
  GenDataOptions d = Small("d");
  d.seed = a.seed;
  ASSERT_TRUE(GenerateData(d, nullptr).ok());
  EXPECT_NE(Split(Lines(ReadFile(root_ / "a/train/part-00000.tsv"))[0], '\t')[1],
            Split(Lines(ReadFile(root_ / "d/train/part-00000.tsv"))[0], '\t')[1]);
}

TEST_F(GenDataTest, OneEpochOracleRecomputesFromTheTestFiles) {
  const GenDataOptions o = SmallOneEpoch(root_ / "out");
  GenDataSummary s;
  ASSERT_TRUE(GenerateData(o, &s).ok());
  std::vector<float> p, labels;
  std::vector<std::string> lines;
  for (const char* name : {"part-00000.tsv", "part-00001.tsv"}) {
    for (const std::string& line : Lines(ReadFile(root_ / "out/test" / name))) {
      absl::StatusOr<float> prob = ClickProbability(o, line);
      ASSERT_TRUE(prob.ok()) << prob.status() << ": " << line;
      p.push_back(*prob);
      labels.push_back(line[0] == '1' ? 1.0f : 0.0f);
      lines.push_back(line);
    }
  }
  ASSERT_EQ(p.size(), 2000u);
  EXPECT_EQ(models::ExactAuc(p, labels), s.oracle_auc);
  EXPECT_EQ(models::LogLoss(p, labels), s.oracle_logloss);
  EXPECT_GT(s.oracle_auc, 0.65);
  EXPECT_LT(s.oracle_auc, 0.9);
  EXPECT_NEAR(s.positive_rate, s.mean_click_probability, 0.03);
  EXPECT_EQ(s.mean_history, 0);

  // The cross effect is part of p: without it the scores change.
  GenDataOptions no_cross = o;
  no_cross.cross_effect = 0;
  EXPECT_NE(*ClickProbability(no_cross, lines[0]), p[0]);
  // Another seed re-derives other groups; a spoilt cross is refused.
  GenDataOptions other = o;
  other.seed = 8;
  int mismatches = 0;
  for (const std::string& line : lines) mismatches += !ClickProbability(other, line).ok();
  EXPECT_GT(mismatches, 1800);
  std::vector<std::string> f = Split(lines[0], '\t');
  f[7] = f[1] + "_" + std::to_string(std::stoull(f[3]) + 1);
  std::string spoilt = f[0];
  for (size_t k = 1; k < f.size(); ++k) spoilt += "\t" + f[k];
  const absl::StatusOr<float> bad = ClickProbability(o, spoilt);
  EXPECT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("column user_item"), std::string::npos) << bad.status();
  EXPECT_FALSE(ClickProbability(o, "1\t2\t3").ok());
  EXPECT_FALSE(ClickProbability(Small("x"), lines[0]).ok());  // default mode's layout
}

// What the mode is for: the signal's keys recur, the crosses of user_id
// mostly do not. The default population on a fifth of the default rows.
TEST_F(GenDataTest, OneEpochDefaultsAreRareKeysBesideRecurringOnes) {
  GenDataOptions o = OneEpochDefaults();
  o.out_dir = (root_ / "out").string();
  o.train_rows = 200000;
  o.test_rows = 20000;
  GenDataSummary s;
  ASSERT_TRUE(GenerateData(o, &s).ok());
  EXPECT_GT(s.oracle_auc, 0.73);
  EXPECT_LT(s.oracle_auc, 0.79);
  EXPECT_GT(s.positive_rate, 0.2);
  EXPECT_LT(s.positive_rate, 0.26);

  // Occurrences of each key in the training split, per column.
  std::vector<std::map<std::string, int>> counts(kGenDataOneEpochColumns.size());
  for (int i = 0; i < 4; ++i) {
    char name[32];
    std::snprintf(name, sizeof(name), "part-%05d.tsv", i);
    for (const std::string& line : Lines(ReadFile(root_ / "out/train" / name))) {
      const std::vector<std::string> f = Split(line, '\t');
      ASSERT_EQ(f.size(), counts.size());
      for (size_t c = 1; c < f.size(); ++c) ++counts[c][f[c]];
    }
  }
  auto share_at_most = [&](size_t column, int times) {
    uint64_t keys = 0;
    for (const auto& [key, n] : counts[column]) keys += n <= times;
    return static_cast<double>(keys) / counts[column].size();
  };
  auto mean_count = [&](size_t column) {
    return static_cast<double>(o.train_rows) / counts[column].size();
  };
  EXPECT_GT(share_at_most(7, 1), 0.95);  // user_item: nearly all once
  EXPECT_GT(share_at_most(8, 2), 0.9);   // user_cat
  EXPECT_GT(share_at_most(1, 3), 0.6);   // user_id
  EXPECT_GT(mean_count(6), 15);          // group_cat: 10,000 pairs
  EXPECT_GT(mean_count(2), 1000);        // user_group
  EXPECT_GT(mean_count(4), 1000);        // item_cat
}

TEST_F(GenDataTest, OneEpochRefusesBadOptionsNamingThem) {
  struct Case {
    std::string option;
    std::function<void(GenDataOptions*)> spoil;
  };
  const std::vector<Case> cases = {
      {"mode", [](GenDataOptions* o) { o->mode = "one-epoch"; }},
      {"cross_effect", [](GenDataOptions* o) { o->cross_effect = -0.1; }},
      {"cross_effect", [](GenDataOptions* o) { o->cross_effect = 10.5; }},
      {"user_effect", [](GenDataOptions* o) { o->user_effect = 11; }},
      {"hour_effect", [](GenDataOptions* o) { o->hour_effect = -1; }},
      {"user_zipf", [](GenDataOptions* o) { o->user_zipf = 11; }},
      {"num_user_groups", [](GenDataOptions* o) { o->num_user_groups = 0; }},
      {"num_categories", [](GenDataOptions* o) { o->num_categories = 1001; }},
  };
  for (const Case& c : cases) {
    GenDataOptions o = SmallOneEpoch(root_ / "bad");
    c.spoil(&o);
    const absl::Status v = ValidateGenDataOptions(o);
    EXPECT_EQ(v.code(), absl::StatusCode::kInvalidArgument) << c.option;
    EXPECT_NE(v.message().find("option " + c.option + ":"), std::string::npos)
        << c.option << " -> " << v;
    EXPECT_FALSE(fs::exists(o.out_dir)) << c.option;
  }
  // Options the mode ignores are not checked.
  GenDataOptions o = SmallOneEpoch(root_ / "good");
  o.interest_cap = 0;
  o.num_topics = 1000;
  o.max_history = 200000;
  o.long_history = 0;
  EXPECT_TRUE(ValidateGenDataOptions(o).ok());
}

TEST_F(GenDataTest, OneEpochModeByNameSwitchesTheDefaults) {
  GenDataOptions o;
  ASSERT_TRUE(SetGenDataOption("mode", "one_epoch", &o).ok());
  EXPECT_EQ(GenDataOptionValues(o), GenDataOptionValues(OneEpochDefaults()));
  EXPECT_EQ(o.num_users, OneEpochDefaults().num_users);
  EXPECT_NE(o.num_users, GenDataOptions().num_users);
  // From mode long_interest, options it changed take one_epoch's defaults.
  GenDataOptions p;
  ASSERT_TRUE(SetGenDataOption("mode", "long_interest", &p).ok());
  ASSERT_TRUE(SetGenDataOption("mode", "one_epoch", &p).ok());
  EXPECT_EQ(GenDataOptionValues(p), GenDataOptionValues(OneEpochDefaults()));
  EXPECT_EQ(p.train_rows, OneEpochDefaults().train_rows);
  // And back to the default mode.
  ASSERT_TRUE(SetGenDataOption("cross_effect", "0.25", &p).ok());
  ASSERT_TRUE(SetGenDataOption("mode", "default", &p).ok());
  EXPECT_EQ(p.num_users, GenDataOptions().num_users);
  EXPECT_EQ(p.cross_effect, 0.25);  // set by hand: kept

  // Round trip by name.
  GenDataOptions q = SmallOneEpoch(root_ / "x");
  q.cross_effect = 1.5;
  const auto values = GenDataOptionValues(q);
  ASSERT_EQ(values[0].first, "mode");
  GenDataOptions back;
  for (const auto& [name, value] : values) {
    ASSERT_TRUE(SetGenDataOption(name, value, &back).ok()) << name << "=" << value;
  }
  EXPECT_EQ(GenDataOptionValues(back), values);
}

// examples/one_epoch.conf reads this log: columns in file order, each in a
// key space of its own, and the four epochs with an evaluation after each
// that show the fall.
TEST(OneEpochConfTest, MatchesTheGeneratedColumns) {
  absl::StatusOr<proto::JobConfig> config =
      proto::LoadJobConfig(std::string(EMBER_SOURCE_DIR) + "/examples/one_epoch.conf");
  ASSERT_TRUE(config.ok()) << config.status();
  const proto::DataConfig& data = config->data();
  ASSERT_EQ(data.columns_size(), static_cast<int>(kGenDataOneEpochColumns.size()));
  std::set<uint32_t> slots;
  for (int i = 0; i < data.columns_size(); ++i) {
    EXPECT_EQ(data.columns(i).name(), kGenDataOneEpochColumns[i]);
    if (i > 0) slots.insert(proto::ColumnSlot(*config, i));
  }
  EXPECT_EQ(slots.size(), kGenDataOneEpochColumns.size() - 1);
  EXPECT_EQ(config->train().epochs(), 4u);
  EXPECT_TRUE(config->train().eval_every_epoch());
}

// examples/local.conf is the job config for this data: it must load, name
// the columns in file order, and let the candidate and the history meet.
TEST(LocalConfTest, MatchesTheGeneratedColumns) {
  absl::StatusOr<proto::JobConfig> config =
      proto::LoadJobConfig(std::string(EMBER_SOURCE_DIR) + "/examples/local.conf");
  ASSERT_TRUE(config.ok()) << config.status();
  const proto::DataConfig& data = config->data();
  ASSERT_EQ(data.columns_size(), static_cast<int>(kGenDataColumns.size()));
  for (int i = 0; i < data.columns_size(); ++i) {
    EXPECT_EQ(data.columns(i).name(), kGenDataColumns[i]);
  }
  auto same_key_space = [&](int a, int b) {
    EXPECT_EQ(data.columns(a).table(), data.columns(b).table());
    EXPECT_EQ(proto::ColumnSlot(*config, a), proto::ColumnSlot(*config, b));
  };
  same_key_space(3, 5);                                                     // item_id, hist_items
  same_key_space(4, 6);                                                     // item_cat, hist_cats
  EXPECT_NE(proto::ColumnSlot(*config, 1), proto::ColumnSlot(*config, 2));  // user, group
  EXPECT_GE(data.columns(5).max_len(), GenDataOptions().max_history);
  // The interest term needs the category embedding to hold the topics.
  const int cat = proto::FindTable(*config, data.columns(4).table());
  EXPECT_GT(config->tables(cat).dim(), GenDataOptions().num_topics);
}

TEST(RandomTest, DeterministicAndInRange) {
  Random a(5), b(5), c(6);
  bool differs = false;
  for (int i = 0; i < 1000; ++i) {
    const uint64_t x = a.Next();
    EXPECT_EQ(x, b.Next());
    differs |= x != c.Next();
  }
  EXPECT_TRUE(differs);
  for (int i = 0; i < 1000; ++i) {
    const double u = a.Uniform();
    EXPECT_GE(u, 0.0);
    EXPECT_LT(u, 1.0);
    EXPECT_LT(a.Below(7), 7u);
  }
  double sum = 0, sum2 = 0;
  const int n = 100000;
  for (int i = 0; i < n; ++i) {
    const double z = a.Normal();
    sum += z;
    sum2 += z * z;
  }
  EXPECT_NEAR(sum / n, 0, 0.02);
  EXPECT_NEAR(sum2 / n, 1, 0.02);
}

// Sum of k^-s for k = 1..n; exact below 2M terms, else Euler-Maclaurin.
double ZipfNorm(uint64_t n, double s) {
  const uint64_t m = std::min<uint64_t>(n, 2000000);
  double sum = 0;
  for (uint64_t k = m; k >= 1; --k) sum += std::pow(static_cast<double>(k), -s);
  if (n == m) return sum;
  const double a = static_cast<double>(m), b = static_cast<double>(n);
  const double integral =
      s == 1 ? std::log(b / a) : (std::pow(b, 1 - s) - std::pow(a, 1 - s)) / (1 - s);
  return sum + integral + (std::pow(b, -s) - std::pow(a, -s)) / 2 +
         s / 12 * (std::pow(a, -s - 1) - std::pow(b, -s - 1));
}

// Observed counts of the top ranks, and of everything beyond them, within 5
// standard deviations of the binomial expectation.
void ExpectZipfFrequencies(uint64_t n, double s, int draws) {
  SCOPED_TRACE(::testing::Message() << "n=" << n << " s=" << s);
  ZipfSampler zipf(n, s);
  Random rng(42 + n);
  constexpr int kTop = 10;
  std::vector<int> counts(kTop + 1, 0);
  for (int i = 0; i < draws; ++i) {
    const uint64_t k = zipf.Sample(rng);
    ASSERT_GE(k, 1u);
    ASSERT_LE(k, n);
    ++counts[std::min<uint64_t>(k, kTop + 1) - 1];
  }
  const double norm = ZipfNorm(n, s);
  double top_mass = 0;
  for (int k = 1; k <= kTop + 1; ++k) {
    double p;
    if (k <= kTop) {
      p = std::pow(k, -s) / norm;
      top_mass += p;
    } else {
      p = 1 - top_mass;
    }
    const double expected = p * draws;
    const double sd = std::sqrt(draws * p * (1 - p)) + 1;
    EXPECT_NEAR(counts[k - 1], expected, 5 * sd) << "rank " << k;
  }
}

TEST(ZipfSamplerTest, TopRankFrequenciesMatchTheory) {
  ExpectZipfFrequencies(1000, 1.0, 200000);
  ExpectZipfFrequencies(1000, 0.8, 200000);
  ExpectZipfFrequencies(1000, 0.0, 200000);  // uniform
  ExpectZipfFrequencies(50, 2.5, 200000);
  ExpectZipfFrequencies(20000, 1.2, 200000);
}

TEST(ZipfSamplerTest, HugeNeedsNoTable) {
  // 10^12 ranks; the head's mass only follows from the normaliser.
  ExpectZipfFrequencies(1000000000000ULL, 1.1, 200000);
  ExpectZipfFrequencies(uint64_t{1} << 40, 0.9, 200000);
}

TEST(ZipfSamplerTest, SingleRank) {
  ZipfSampler zipf(1, 1.0);
  Random rng(1);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(zipf.Sample(rng), 1u);
}

}  // namespace
}  // namespace ember::datasets
