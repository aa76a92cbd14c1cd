// Whole-cluster tests: a real scheduler, servers and workers on 127.0.0.1.
#include <cstdlib>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/cluster_harness.h"

namespace ember::testing {
namespace {

std::string LocalConfig() { return SourceDir() + "/examples/local.conf"; }

// The example config with extra fields inserted at the top of its data and
// cluster blocks, written into `dir`.
std::string ConfigWith(const std::string& dir, const std::string& data_extra, const std::string& cluster_extra) {
  std::string text = ReadFile(LocalConfig());
  text = absl::StrReplaceAll(text, {{"\ndata {", "\ndata {\n  " + data_extra}});
  text = absl::StrReplaceAll(text, {{"\ncluster {", "\ncluster {\n  " + cluster_extra}});
  const std::string path = dir + "/job.conf";
  WriteFile(path, text);
  return path;
}

TEST(ClusterTest, TrainsToWithinThreeHundredthsOfOracleAuc) {
  TempDir tmp;
  const std::string data = tmp.path() + "/data";
  ASSERT_TRUE(GenerateData(data, {}));
  Cluster c(tmp.path(), LocalConfig(), 2, 2, {"--data_dir=" + data});
  ASSERT_TRUE(c.WaitAll(absl::Minutes(8))) << ReadFile(c.scheduler().log());
  EXPECT_EQ(c.scheduler().Wait(absl::ZeroDuration()), 0) << ReadFile(c.scheduler().log());
  for (auto& p : c.servers()) EXPECT_EQ(p->Wait(absl::ZeroDuration()), 0) << ReadFile(p->log());
  for (auto& p : c.workers()) EXPECT_EQ(p->Wait(absl::ZeroDuration()), 0) << ReadFile(p->log());
  auto r = c.Result();
  ASSERT_TRUE(r.count("auc") && r.count("oracle_auc")) << ReadFile(c.scheduler().log());
  const double auc = std::atof(r["auc"].c_str()), oracle = std::atof(r["oracle_auc"].c_str());
  std::printf("auc=%.4f oracle_auc=%.4f samples_per_sec=%s\n", auc, oracle, r["samples_per_sec"].c_str());
  EXPECT_GT(oracle, 0.6);
  EXPECT_NEAR(auc, oracle, 0.03);
  EXPECT_EQ(r["bad_lines"], "0");
  // Per-task fields, with GAUC over the config's user column.
  EXPECT_EQ(r["auc_label"], r["auc"]);
  EXPECT_GT(std::atof(r["gauc_label"].c_str()), 0.6) << r["gauc_label"];
}

// BSP: every step ends in a barrier of all workers; the model must still learn.
TEST(ClusterTest, BulkSynchronousTrainingLearns) {
  TempDir tmp;
  const std::string data = tmp.path() + "/data";
  ASSERT_TRUE(GenerateData(data, {"--train_rows=200000", "--test_rows=20000"}));
  const std::string conf = tmp.path() + "/bsp.conf";
  WriteFile(conf, absl::StrReplaceAll(ReadFile(LocalConfig()), {{"consistency: ASP", "consistency: BSP"}}));
  Cluster c(tmp.path(), conf, 2, 2, {"--data_dir=" + data, "--epochs=1"});
  ASSERT_TRUE(c.WaitAll(absl::Minutes(5)));
  ASSERT_EQ(c.scheduler().Wait(absl::ZeroDuration()), 0) << ReadFile(c.scheduler().log());
  auto r = c.Result();
  const double auc = std::atof(r["auc"].c_str()), oracle = std::atof(r["oracle_auc"].c_str());
  std::printf("bsp auc=%.4f oracle_auc=%.4f\n", auc, oracle);
  // One epoch of 200k rows is little data: measured 0.740 against an oracle of
  // 0.799 here (ASP on the full default data comes within 0.01). The bar is
  // that every step's barrier leaves training intact, well above chance.
  EXPECT_GT(auc, oracle - 0.08);
  EXPECT_EQ(r["samples"], "200000");
}

// Inserts malformed lines into the first training file: one with a missing
// column at line 10 and one with a non-numeric label at line 20.
void CorruptTrainFile(const std::string& data) {
  const std::string path = data + "/train/part-00000.tsv";
  std::string text = ReadFile(path);
  std::vector<std::string> lines = absl::StrSplit(text, '\n');
  ASSERT_GT(lines.size(), 30u);
  std::string short_line = lines[9].substr(0, lines[9].rfind('\t'));  // drop the last column
  std::string bad_label = "x" + lines[19].substr(lines[19].find('\t'));
  lines[9] = short_line;
  lines[19] = bad_label;
  WriteFile(path, absl::StrJoin(lines, "\n"));
}

TEST(ClusterTest, BadLogLinesAreReportedWithFileAndLineAndSkipped) {
  TempDir tmp;
  const std::string data = tmp.path() + "/data";
  ASSERT_TRUE(GenerateData(data, {"--train_rows=20000", "--test_rows=2000", "--train_files=1", "--test_files=1"}));
  CorruptTrainFile(data);
  Cluster c(tmp.path(), LocalConfig(), 1, 1, {"--data_dir=" + data, "--epochs=1"});
  ASSERT_TRUE(c.WaitAll(absl::Minutes(3)));
  ASSERT_EQ(c.scheduler().Wait(absl::ZeroDuration()), 0) << ReadFile(c.scheduler().log());
  auto r = c.Result();
  EXPECT_EQ(r["bad_lines"], "2");
  EXPECT_EQ(r["lines"], "22000");  // lines read in all phases: 20000 train + 2000 test
  const std::string wlog = ReadFile(c.workers()[0]->log());
  EXPECT_NE(wlog.find("part-00000.tsv:10: "), std::string::npos) << wlog;
  EXPECT_NE(wlog.find("part-00000.tsv:20: "), std::string::npos) << wlog;
  EXPECT_NE(wlog.find("columns"), std::string::npos) << wlog;
  // The good lines were all trained on: 20000 minus the two bad ones.
  EXPECT_EQ(r["samples"], "19998");
}

TEST(ClusterTest, ExceededBadLineBudgetFailsTheJobAndStopsEveryone) {
  TempDir tmp;
  const std::string data = tmp.path() + "/data";
  ASSERT_TRUE(GenerateData(data, {"--train_rows=20000", "--test_rows=2000", "--train_files=1", "--test_files=1"}));
  CorruptTrainFile(data);
  const std::string conf = ConfigWith(tmp.path(), "max_bad_lines: 1", "");
  Cluster c(tmp.path(), conf, 1, 1, {"--data_dir=" + data, "--epochs=1"});
  ASSERT_TRUE(c.WaitAll(absl::Minutes(3))) << "processes left running";
  EXPECT_NE(c.scheduler().Wait(absl::ZeroDuration()), 0);
  const std::string slog = ReadFile(c.scheduler().log());
  EXPECT_NE(slog.find("bad-line budget exceeded"), std::string::npos) << slog;
  EXPECT_NE(slog.find("data.max_bad_lines=1"), std::string::npos) << slog;
  // The cause reaches the scheduler (so the console), with file:line.
  EXPECT_NE(slog.find("part-00000.tsv:10: "), std::string::npos) << slog;
}

// A config with one column too few makes every line bad. The worker stops at
// the budget (1000 by default) instead of reading all 200,000 lines, and the
// scheduler's error carries the first causes.
TEST(ClusterTest, EveryLineBadStopsAtTheBudgetWithTheCause) {
  TempDir tmp;
  const std::string data = tmp.path() + "/data";
  ASSERT_TRUE(GenerateData(data, {"--train_rows=200000", "--test_rows=2000", "--train_files=1", "--test_files=1"}));
  std::string text = ReadFile(LocalConfig());
  const size_t last = text.rfind("  columns {");
  ASSERT_NE(last, std::string::npos);
  text.erase(last, text.find('}', last) + 1 - last);
  const std::string conf = tmp.path() + "/job.conf";
  WriteFile(conf, text);
  Cluster c(tmp.path(), conf, 1, 1, {"--data_dir=" + data, "--epochs=1"});
  ASSERT_TRUE(c.WaitAll(absl::Minutes(3))) << "processes left running";
  EXPECT_NE(c.scheduler().Wait(absl::ZeroDuration()), 0);
  const std::string slog = ReadFile(c.scheduler().log());
  EXPECT_NE(slog.find("bad-line budget exceeded: 1001 malformed lines (data.max_bad_lines=1000)"), std::string::npos)
      << slog;
  EXPECT_NE(slog.find("part-00000.tsv:1: expected 10 columns, got 11"), std::string::npos) << slog;
}

// A killed worker no longer stops the job: tests/fault_test.cc.

// A learning rate a thousand times too large: the loss turns NaN within the
// first reports. The scheduler says so at once, on the console and in the
// metrics file, and stops the job with a non-zero exit; with
// train.divergence.stop off the job trains to the end but its final line
// says DIVERGED and it still exits non-zero.
TEST(ClusterTest, DivergenceIsReportedAndStopsTheJob) {
  TempDir tmp;
  const std::string data = tmp.path() + "/data";
  ASSERT_TRUE(GenerateData(data, {"--train_rows=200000", "--test_rows=2000", "--train_files=2", "--test_files=1"}));
  std::string config = ReadFile(SourceDir() + "/examples/local.conf");
  config = absl::StrReplaceAll(config, {{"dense_optimizer { kind: ADAM learning_rate: 0.002 }",
                                         "dense_optimizer { kind: SGD learning_rate: 1000 }"},
                                        {"learning_rate: 0.1 initial_accumulator", "learning_rate: 1000 initial_accumulator"}});
  ASSERT_NE(config.find("learning_rate: 1000 initial"), std::string::npos);
  for (const bool stop : {true, false}) {
    SCOPED_TRACE(stop ? "stop" : "no stop");
    const std::string dir = absl::StrCat(tmp.path(), stop ? "/stop" : "/go_on");
    std::filesystem::create_directories(dir);
    const std::string conf = dir + "/job.conf";
    WriteFile(conf, stop ? config
                         : absl::StrReplaceAll(config, {{"train {", "train {\n  divergence { stop: false }"}}));
    Cluster c(dir, conf, 1, 1, {"--data_dir=" + data, "--epochs=1", "--metrics_file=" + dir + "/metrics.jsonl"});
    ASSERT_TRUE(c.WaitAll(absl::Minutes(5))) << ReadFile(c.scheduler().log());
    EXPECT_NE(c.scheduler().Wait(absl::ZeroDuration()), 0) << ReadFile(c.scheduler().log());
    const std::string log = ReadFile(c.scheduler().log());
    EXPECT_NE(log.find("divergence: loss is"), std::string::npos) << log;
    EXPECT_NE(log.find("training diverged: loss is"), std::string::npos) << log;
    EXPECT_NE(ReadFile(dir + "/metrics.jsonl").find("\"event\":\"divergence\""), std::string::npos);
    if (stop) {
      EXPECT_EQ(log.find("final:"), std::string::npos) << "a stopped job reports no result: " << log;
    } else {
      EXPECT_NE(log.find("final: DIVERGED (loss is"), std::string::npos) << log;
      EXPECT_NE(log.find("epoch 1/1 trained"), std::string::npos) << "it trained to the end";
    }
  }
}

}  // namespace
}  // namespace ember::testing
