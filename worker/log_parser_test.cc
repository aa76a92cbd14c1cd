#include "worker/log_parser.h"

#include <time.h>

#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "proto/config.h"
#include "proto/keys.h"

namespace ember::worker {
namespace {

// Columns: #1 click, #2 buy, #3 age, #4 user, #5 item, #6 skip, #7 tags,
// #8 hist, #9 price.
const char kConfig[] = R"(
tables { name: "user" dim: 4 }
tables { name: "item" dim: 4 }
data {
  train: "/tmp/x"
  columns { name: "click" type: LABEL }
  columns { name: "buy" type: LABEL missing: "?" }
  columns { name: "age" type: DENSE missing: "NA" missing: "" }
  columns { name: "user" type: SPARSE table: "user" missing: "-" }
  columns { name: "item" type: SPARSE table: "item" slot: 100 }
  columns { name: "skip" type: IGNORE }
  columns { name: "tags" type: MULTI_SPARSE table: "user" separator: "|" max_len: 2 missing: "-" }
  columns { name: "hist" type: SEQUENCE table: "item" slot: 100 max_len: 3 }
  columns { name: "price" type: DENSE }
}
)";

proto::JobConfig Config(const char* text = kConfig) {
  absl::StatusOr<proto::JobConfig> c = proto::ParseJobConfig(text, "test");
  EXPECT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(proto::ValidateJobConfig(*c).ok()) << proto::ValidateJobConfig(*c);
  return *c;
}

class LogParserTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<LogParser> p = LogParser::Create(Config());
    ASSERT_TRUE(p.ok()) << p.status();
    parser_ = std::make_unique<LogParser>(*std::move(p));
  }

  // Keys of sparse column j of the last parse.
  std::vector<uint64_t> Keys(int j) const {
    return std::vector<uint64_t>(out_.keys.begin() + out_.key_begin[j],
                                 out_.keys.begin() + out_.key_begin[j + 1]);
  }

  // The message of the error parsing `line` gives ("" when it parses).
  std::string Error(std::string_view line) {
    absl::Status st = parser_->Parse(line, &out_);
    if (!st.ok()) {
      EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    }
    return std::string(st.message());
  }

  static uint64_t H(uint32_t slot, std::string_view v) { return proto::Hash64(slot, v); }

  std::unique_ptr<LogParser> parser_;
  ParsedLine out_;
};

TEST_F(LogParserTest, Shape) {
  EXPECT_EQ(parser_->num_columns(), 9);
  EXPECT_EQ(parser_->num_labels(), 2);
  EXPECT_EQ(parser_->num_dense(), 2);
  ASSERT_EQ(parser_->num_sparse(), 4);
  const auto& sc = parser_->sparse_columns();
  EXPECT_EQ(sc[0].column, 3);
  EXPECT_EQ(sc[0].table, 0);
  EXPECT_EQ(sc[1].column, 4);
  EXPECT_EQ(sc[1].table, 1);
  EXPECT_EQ(sc[2].column, 6);
  EXPECT_EQ(sc[2].table, 0);
  EXPECT_EQ(sc[3].column, 7);
  EXPECT_EQ(sc[3].table, 1);
}

TEST_F(LogParserTest, EveryColumnType) {
  ASSERT_EQ(Error("1\t0.25\t31\tu42\ti7\twhat ever\ta|b|c\ti1,i2,i3,i4\t-9.5"), "");
  EXPECT_EQ(out_.labels, (std::vector<float>{1.0f, 0.25f}));
  EXPECT_EQ(out_.dense, (std::vector<float>{31.0f, -9.5f}));
  ASSERT_EQ(out_.key_begin, (std::vector<uint32_t>{0, 1, 2, 4, 7}));
  // Slot 0 means "1 + the column's index".
  EXPECT_EQ(Keys(0), (std::vector<uint64_t>{H(4, "u42")}));
  EXPECT_EQ(Keys(1), (std::vector<uint64_t>{H(100, "i7")}));
  // MULTI_SPARSE keeps the first max_len, SEQUENCE the last, in time order.
  EXPECT_EQ(Keys(2), (std::vector<uint64_t>{H(7, "a"), H(7, "b")}));
  EXPECT_EQ(Keys(3), (std::vector<uint64_t>{H(100, "i2"), H(100, "i3"), H(100, "i4")}));
}

TEST_F(LogParserTest, SharedSlotGivesSameKey) {
  ASSERT_EQ(Error("0\t0\t1\tx\tI9\t\tx\tI9\t0"), "");
  // item and hist share slot 100: the candidate and the history item match.
  ASSERT_EQ(Keys(1).size(), 1u);
  ASSERT_EQ(Keys(3).size(), 1u);
  EXPECT_EQ(Keys(1)[0], Keys(3)[0]);
  // user (slot 4) and tags (slot 7) do not, though both go to table "user".
  ASSERT_EQ(Keys(0).size(), 1u);
  ASSERT_EQ(Keys(2).size(), 1u);
  EXPECT_NE(Keys(0)[0], Keys(2)[0]);
}

TEST_F(LogParserTest, SeparatorsEmptyPiecesAndCaps) {
  // Empty pieces are skipped and do not count toward max_len.
  ASSERT_EQ(Error("0\t0\t1\tu\ti\t\t||a|||b|c|\t,i1,,i2,,i3,,i4,,\t0"), "");
  EXPECT_EQ(Keys(2), (std::vector<uint64_t>{H(7, "a"), H(7, "b")}));
  EXPECT_EQ(Keys(3), (std::vector<uint64_t>{H(100, "i2"), H(100, "i3"), H(100, "i4")}));
  // Fewer values than max_len: all kept, in order.
  ASSERT_EQ(Error("0\t0\t1\tu\ti\t\tz\ti2,i1\t0"), "");
  EXPECT_EQ(Keys(2), (std::vector<uint64_t>{H(7, "z")}));
  EXPECT_EQ(Keys(3), (std::vector<uint64_t>{H(100, "i2"), H(100, "i1")}));
  // A comma is an ordinary character in a '|'-separated column and in a SPARSE one.
  ASSERT_EQ(Error("0\t0\t1\tu,v\ti\t\ta,b\t\t0"), "");
  EXPECT_EQ(Keys(0), (std::vector<uint64_t>{H(4, "u,v")}));
  EXPECT_EQ(Keys(2), (std::vector<uint64_t>{H(7, "a,b")}));
  EXPECT_TRUE(Keys(3).empty());
  // Repeated values stay repeated (pooling counts them).
  ASSERT_EQ(Error("0\t0\t1\tu\ti\t\ta|a\ti1,i1,i1,i1\t0"), "");
  EXPECT_EQ(Keys(2), (std::vector<uint64_t>{H(7, "a"), H(7, "a")}));
  EXPECT_EQ(Keys(3), (std::vector<uint64_t>{H(100, "i1"), H(100, "i1"), H(100, "i1")}));
}

TEST(LogParserCapsTest, UncappedAndSingleValueCaps) {
  proto::JobConfig config = Config(R"(
tables { name: "t" }
data {
  train: "x"
  columns { name: "y" type: LABEL }
  columns { name: "m" type: MULTI_SPARSE table: "t" }
  columns { name: "s" type: SEQUENCE table: "t" separator: ";" }
  columns { name: "s1" type: SEQUENCE table: "t" separator: ";" max_len: 1 slot: 3 }
}
)");
  absl::StatusOr<LogParser> p = LogParser::Create(config);
  ASSERT_TRUE(p.ok()) << p.status();
  ParsedLine out;
  std::string seq, multi;
  std::vector<uint64_t> want_seq, want_multi;
  for (int i = 0; i < 100; ++i) {
    absl::StrAppend(&seq, i == 0 ? "" : ";", "v", i);
    absl::StrAppend(&multi, i == 0 ? "" : ",", "m", i);
    want_seq.push_back(proto::Hash64(3, absl::StrCat("v", i)));
    want_multi.push_back(proto::Hash64(2, absl::StrCat("m", i)));
  }
  ASSERT_TRUE(p->Parse(absl::StrCat("1\t", multi, "\t", seq, "\t", seq, ";"), &out).ok());
  ASSERT_EQ(out.key_begin, (std::vector<uint32_t>{0, 100, 200, 201}));
  EXPECT_EQ(std::vector<uint64_t>(out.keys.begin(), out.keys.begin() + 100), want_multi);
  // Slot 3 for "s" (index 2) and "s1" (explicit): same keys.
  EXPECT_EQ(std::vector<uint64_t>(out.keys.begin() + 100, out.keys.begin() + 200), want_seq);
  EXPECT_EQ(out.keys[200], want_seq.back());
}

TEST_F(LogParserTest, MissingValues) {
  // age "NA" and "" -> 0; user "-" -> no key; "-" inside tags is skipped;
  // empty item and hist -> no key.
  ASSERT_EQ(Error("1\t0\tNA\t-\t\t\t-|a|-|b|c\t\t2"), "");
  EXPECT_EQ(out_.dense, (std::vector<float>{0.0f, 2.0f}));
  EXPECT_EQ(out_.key_begin, (std::vector<uint32_t>{0, 0, 0, 2, 2}));
  EXPECT_EQ(Keys(2), (std::vector<uint64_t>{H(7, "a"), H(7, "b")}));
  ASSERT_EQ(Error("1\t0\t\t-\t\t\t-\t\t2"), "");
  EXPECT_EQ(out_.dense[0], 0.0f);
  EXPECT_TRUE(out_.keys.empty());
  // A missing value is a literal: "NA " is not missing, and not a number.
  EXPECT_EQ(Error("1\t0\tNA \t-\t\t\t\t\t2"), "column 'age' (#3): 'NA ' is not a number");
}

TEST_F(LogParserTest, CarriageReturnIgnored) {
  ASSERT_EQ(Error("1\t0\t3\tu\ti\t\ta\ti1,i2\t7.5\r"), "");
  EXPECT_EQ(out_.dense[1], 7.5f);
  ASSERT_EQ(Error("1\t0\t3\tu\ti\t\ta\ti1,i2\t7.5"), "");
  ParsedLine plain = out_;
  ASSERT_EQ(Error("1\t0\t3\tu\ti\t\ta\ti1,i2\t7.5\r"), "");
  EXPECT_EQ(out_.keys, plain.keys);
  // Only one, and only at the very end.
  EXPECT_EQ(Error("1\t0\t3\tu\ti\t\ta\ti1,i2\t7.5\r\r"),
            "column 'price' (#9): '7.5\\r' is not a number");
}

TEST_F(LogParserTest, Numbers) {
  ASSERT_EQ(Error("0.5\t1\t+3\tu\ti\t\t\t\t-1e-3"), "");
  EXPECT_EQ(out_.labels, (std::vector<float>{0.5f, 1.0f}));
  EXPECT_EQ(out_.dense, (std::vector<float>{3.0f, -1e-3f}));
  // Values beyond float range: underflow is 0, overflow is not finite.
  ASSERT_EQ(Error("1e0\t0.0\t1e-60\tu\ti\t\t\t\t.5"), "");
  EXPECT_EQ(out_.labels, (std::vector<float>{1.0f, 0.0f}));
  EXPECT_EQ(out_.dense, (std::vector<float>{0.0f, 0.5f}));
  EXPECT_EQ(Error("1\t0\t1e60\tu\ti\t\t\t\t0"), "column 'age' (#3): '1e60' is not a finite float");
}

TEST_F(LogParserTest, BadLines) {
  EXPECT_EQ(Error(""), "empty line");
  EXPECT_EQ(Error("\r"), "empty line");
  EXPECT_EQ(Error("1\t0\t3"), "expected 9 columns, got 3");
  EXPECT_EQ(Error("1\t0\t3\tu\ti\t\ta\ti1\t0\t"), "expected 9 columns, got 10");
  EXPECT_EQ(Error("x\t0\t3\tu\ti\t\ta\ti1\t0"), "column 'click' (#1): 'x' is not a number");
  EXPECT_EQ(Error("\t0\t3\tu\ti\t\ta\ti1\t0"), "column 'click' (#1): empty value");
  EXPECT_EQ(Error("2\t0\t3\tu\ti\t\ta\ti1\t0"), "column 'click' (#1): label '2' is not in [0, 1]");
  EXPECT_EQ(Error("-0.1\t0\t3\tu\ti\t\ta\ti1\t0"),
            "column 'click' (#1): label '-0.1' is not in [0, 1]");
  EXPECT_EQ(Error("nan\t0\t3\tu\ti\t\ta\ti1\t0"),
            "column 'click' (#1): label 'nan' is not in [0, 1]");
  EXPECT_EQ(Error("1\t?\t3\tu\ti\t\ta\ti1\t0"), "column 'buy' (#2): missing label '?'");
  EXPECT_EQ(Error("1\t0\t3\tu\ti\t\ta\ti1\t"), "column 'price' (#9): empty value");
  EXPECT_EQ(Error("1\t0\t3\tu\ti\t\ta\ti1\t1.5x"), "column 'price' (#9): '1.5x' is not a number");
  EXPECT_EQ(Error("1\t0\t3\tu\ti\t\ta\ti1\t 1"), "column 'price' (#9): ' 1' is not a number");
  EXPECT_EQ(Error("1\t0\t3\tu\ti\t\ta\ti1\t+-1"), "column 'price' (#9): '+-1' is not a number");
  EXPECT_EQ(Error("1\t0\t3\tu\ti\t\ta\ti1\tinf"),
            "column 'price' (#9): 'inf' is not a finite float");
  EXPECT_EQ(Error("1\t0\t3\tu\ti\t\ta\ti1\t-nan"),
            "column 'price' (#9): '-nan' is not a finite float");
  // Long and binary values are shortened and escaped.
  EXPECT_EQ(Error(absl::StrCat("1\t0\t3\tu\ti\t\ta\ti1\t", std::string(100, 'z'))),
            absl::StrCat("column 'price' (#9): '", std::string(40, 'z'),
                         "...' (100 bytes) is not a number"));
  EXPECT_EQ(Error("1\t0\t3\tu\ti\t\ta\ti1\t\x01\xff"),
            "column 'price' (#9): '\\x01\\xff' is not a number");
  // The column count is checked first, whatever else is wrong.
  EXPECT_EQ(Error("x\ty"), "expected 9 columns, got 2");
}

TEST(LogParserCreateTest, RejectsUnusableColumns) {
  proto::JobConfig config = Config();
  config.mutable_data()->mutable_columns(6)->set_separator("ab");
  absl::StatusOr<LogParser> p = LogParser::Create(config);
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("data.columns[6] ('tags')"), std::string::npos) << p.status();
  config = Config();
  config.mutable_data()->mutable_columns(3)->set_table("nope");
  p = LogParser::Create(config);
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("unknown table 'nope'"), std::string::npos) << p.status();
  config.mutable_data()->clear_columns();
  EXPECT_FALSE(LogParser::Create(config).ok());
}

// A schema like the examples': 11 columns, two of them 30-item sequences.
const char kBenchConfig[] = R"(
tables { name: "user" }
tables { name: "item" }
tables { name: "ctx" }
data {
  train: "x"
  columns { name: "click" type: LABEL }
  columns { name: "user" type: SPARSE table: "user" }
  columns { name: "item" type: SPARSE table: "item" slot: 50 }
  columns { name: "cate" type: SPARSE table: "item" slot: 51 }
  columns { name: "hist_item" type: SEQUENCE table: "item" slot: 50 max_len: 50 }
  columns { name: "hist_cate" type: SEQUENCE table: "item" slot: 51 max_len: 50 }
  columns { name: "hour" type: SPARSE table: "ctx" }
  columns { name: "site" type: SPARSE table: "ctx" }
  columns { name: "tags" type: MULTI_SPARSE table: "ctx" separator: "|" max_len: 8 }
  columns { name: "price" type: DENSE }
  columns { name: "age" type: DENSE missing: "" }
}
)";

std::vector<std::string> BenchLines(int n) {
  std::mt19937_64 rng(42);
  std::vector<std::string> lines;
  lines.reserve(n);
  for (int i = 0; i < n; ++i) {
    std::string hi, hc;
    for (int k = 0; k < 30; ++k) {
      absl::StrAppend(&hi, k ? "," : "", rng() % 1000000);
      absl::StrAppend(&hc, k ? "," : "", rng() % 1000);
    }
    lines.push_back(absl::StrCat(rng() % 2, "\tu", rng() % 100000, "\t", rng() % 1000000, "\t",
                                 rng() % 1000, "\t", hi, "\t", hc, "\t", rng() % 24, "\ts",
                                 rng() % 5000, "\tt", rng() % 50, "|t", rng() % 50, "\t",
                                 (rng() % 100000) / 100.0, "\t", rng() % 90));
  }
  return lines;
}

double ThreadSeconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// Prints the parse rate; asserts nothing about time.
TEST(LogParserThroughputTest, Measure) {
  absl::StatusOr<LogParser> p = LogParser::Create(Config(kBenchConfig));
  ASSERT_TRUE(p.ok()) << p.status();
  const std::vector<std::string> lines = BenchLines(100000);
  size_t bytes = 0;
  for (const std::string& l : lines) bytes += l.size() + 1;
  ParsedLine out;
  uint64_t keys = 0;
  // CPU time of this thread, so that a busy machine does not skew the rate.
  double best = 1e9;
  for (int rep = 0; rep < 5; ++rep) {
    const double start = ThreadSeconds();
    for (const std::string& l : lines) {
      absl::Status st = p->Parse(l, &out);
      ASSERT_TRUE(st.ok()) << st;
      keys += out.keys.size();
    }
    best = std::min(best, ThreadSeconds() - start);
  }
  EXPECT_EQ(keys, 5u * lines.size() * (30 + 30 + 7));
  std::printf(
      "LogParser: %.0f lines/s, %.0f MB/s per thread (%zu lines of %.0f bytes, "
      "67 keys each)\n",
      lines.size() / best, bytes / best / 1e6, lines.size(),
      static_cast<double>(bytes) / lines.size());
}

}  // namespace
}  // namespace ember::worker
