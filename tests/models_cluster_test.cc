// The attention and multi-task models through a real cluster (scheduler,
// server and worker processes on 127.0.0.1): SIM must find what DIN over the
// newest items cannot, and MMoE must report every task on the final line.
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/cluster_harness.h"

namespace ember::testing {
namespace {

// Runs `config` on `data` with one server and one worker; the parsed result.
std::map<std::string, std::string> Train(const TempDir& tmp, const std::string& name, const std::string& config,
                                         const std::string& data) {
  const std::string dir = tmp.path() + "/" + name;
  std::filesystem::create_directories(dir);
  Cluster c(dir, config, 1, 1, {"--data_dir=" + data});
  EXPECT_TRUE(c.WaitAll(absl::Minutes(8))) << ReadFile(c.scheduler().log());
  EXPECT_EQ(c.scheduler().Wait(absl::ZeroDuration()), 0) << ReadFile(c.scheduler().log());
  for (auto& p : c.workers()) EXPECT_EQ(p->Wait(absl::ZeroDuration()), 0) << ReadFile(p->log());
  auto r = c.Result();
  EXPECT_TRUE(r.count("auc")) << ReadFile(c.scheduler().log());
  return r;
}

// Long-interest data (300-item histories): clicks depend on old items of the
// candidate's category, never among the newest 50.
TEST(ModelsClusterTest, SimSearchesWhatDinOverTheLastFiftyCannotSee) {
  TempDir tmp;
  const std::string data = tmp.path() + "/data";
  ASSERT_TRUE(GenerateData(data, {"--train_rows=20000", "--test_rows=4000",
                                  "--gen_options=mode=long_interest,long_history=300"}));
  auto sim = Train(tmp, "sim", SourceDir() + "/examples/long_interest_sim.conf", data);
  auto din = Train(tmp, "din", SourceDir() + "/examples/long_interest_din.conf", data);
  const double sim_auc = std::atof(sim["auc"].c_str()), din_auc = std::atof(din["auc"].c_str());
  const double oracle = std::atof(sim["oracle_auc"].c_str());
  std::printf("sim auc=%.4f din auc=%.4f oracle=%.4f\n", sim_auc, din_auc, oracle);
  EXPECT_GT(oracle, 0.75);
  // Measured: SIM 0.78, DIN 0.53 (the recent-only oracle is 0.61).
  EXPECT_GT(sim_auc, din_auc + 0.1);
  EXPECT_GT(sim_auc, oracle - 0.06);
}

// MMoE on census-income: both tasks on the final line, both learned.
TEST(ModelsClusterTest, MmoeReportsEveryTask) {
  const std::string census = SourceDir() + "/../shared/data/census-income/census-income.test.gz";
  if (!std::filesystem::exists(census)) {
    GTEST_SKIP() << "SKIPPED LOUDLY: " << census << " is absent (public data sets live in ../shared/data)";
  }
  TempDir tmp;
  const std::string data = tmp.path() + "/census";
  Process convert({EmberBinary(), "convert", "census", "--input=" + census, "--out=" + data}, tmp.path() + "/convert.log");
  ASSERT_EQ(convert.Wait(absl::Minutes(2)), 0) << ReadFile(tmp.path() + "/convert.log");
  auto r = Train(tmp, "mmoe", SourceDir() + "/examples/census_mmoe.conf", data);
  ASSERT_TRUE(r.count("auc_income") && r.count("auc_never_married"));
  EXPECT_EQ(r["auc"], r["auc_income"]);
  // Measured after 4 epochs: 0.939 and 0.994.
  EXPECT_GT(std::atof(r["auc_income"].c_str()), 0.92);
  EXPECT_GT(std::atof(r["auc_never_married"].c_str()), 0.98);
  EXPECT_TRUE(r.count("logloss_never_married"));
}

}  // namespace
}  // namespace ember::testing
