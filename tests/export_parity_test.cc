// Export parity through a real cluster: a job trains DIN (Dice) or MMoE (two
// tasks), exports its final model (export.dir), and `ember predict` on the
// test split must reproduce the scheduler's own evaluation scores
// (--eval_scores_out) line by line within 1e-5; an fp16 bundle of the same
// checkpoint must give an AUC within 0.001 of the fp32 one.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/cluster_harness.h"

namespace ember::testing {
namespace {

namespace fs = std::filesystem;

std::vector<std::vector<double>> ReadScores(const std::string& path) {
  std::vector<std::vector<double>> rows;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    std::vector<double> r;
    for (absl::string_view f : absl::StrSplit(line, '\t', absl::SkipEmpty())) r.push_back(std::atof(std::string(f).c_str()));
    rows.push_back(std::move(r));
  }
  return rows;
}

// `ember predict`; returns its summary line.
std::string Predict(const std::string& tmp, const std::string& bundle, const std::string& input,
                    const std::string& out) {
  const std::string log = out + ".log";
  Process p({EmberBinary(), "predict", "--bundle=" + bundle, "--input=" + input, "--out=" + out}, log);
  EXPECT_EQ(p.Wait(absl::Minutes(3)), 0) << ReadFile(log);
  return ReadFile(log);
}

// The figure `key=` of a summary line, or NaN.
double Figure(const std::string& text, const std::string& key) {
  const size_t at = text.find(" " + key + "=");
  if (at == std::string::npos) return NAN;
  return std::atof(text.c_str() + at + key.size() + 2);
}

// Trains `config` on `data` (1 server, 1 worker, so that the evaluation
// scores come in file order), exports, and checks parity.
void CheckParity(const TempDir& tmp, const std::string& config, const std::string& data, size_t tasks) {
  const std::string job = tmp.path() + "/job";
  fs::create_directories(job);
  const std::string ckpt = tmp.path() + "/ckpt", exp = tmp.path() + "/export";
  const std::string eval_scores = tmp.path() + "/eval_scores.tsv";
  Cluster c(job, config, 1, 1,
            {"--data_dir=" + data, "--checkpoint_dir=" + ckpt, "--export_dir=" + exp,
             "--eval_scores_out=" + eval_scores});
  ASSERT_TRUE(c.WaitAll(absl::Minutes(8))) << ReadFile(c.scheduler().log());
  ASSERT_EQ(c.scheduler().Wait(absl::ZeroDuration()), 0) << ReadFile(c.scheduler().log());
  const std::string log = ReadFile(c.scheduler().log());
  ASSERT_NE(log.find("export 1 (full)"), std::string::npos) << log;
  ASSERT_TRUE(fs::exists(exp + "/1/MANIFEST"));

  const std::string pred = tmp.path() + "/pred.tsv";
  const std::string summary = Predict(tmp.path(), exp, data + "/test", pred);
  const auto want = ReadScores(eval_scores), got = ReadScores(pred);
  ASSERT_GT(want.size(), 1000u);
  ASSERT_EQ(want.size(), got.size());
  double max_diff = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_EQ(want[i].size(), tasks) << "eval line " << i;
    ASSERT_EQ(got[i].size(), tasks) << "predict line " << i;
    for (size_t k = 0; k < tasks; ++k) max_diff = std::max(max_diff, std::fabs(want[i][k] - got[i][k]));
  }
  std::printf("parity: %zu lines x %zu tasks, max abs difference %.3g\n", want.size(), tasks, max_diff);
  EXPECT_LE(max_diff, 1e-5);
  const double auc = std::atof(c.Result()["auc"].c_str());
  EXPECT_NEAR(Figure(summary, "auc"), auc, 1e-4) << summary;

  // fp16, from the same checkpoint as bundle 1: the newest one (none is
  // taken after the final evaluation).
  std::string newest;
  for (const auto& e : fs::directory_iterator(ckpt)) newest = std::max(newest, e.path().string());
  Process ex({EmberBinary(), "export", "--checkpoint=" + newest, "--out=" + exp, "--dtype=fp16"},
             tmp.path() + "/export16.log");
  ASSERT_EQ(ex.Wait(absl::Minutes(2)), 0) << ReadFile(tmp.path() + "/export16.log");
  const std::string summary16 = Predict(tmp.path(), exp + "/2", data + "/test", tmp.path() + "/pred16.tsv");
  std::printf("fp32 auc=%.5f fp16 auc=%.5f\n", Figure(summary, "auc"), Figure(summary16, "auc"));
  EXPECT_NEAR(Figure(summary16, "auc"), Figure(summary, "auc"), 0.001) << summary16;
  // Half the embedding bytes.
  EXPECT_LT(fs::file_size(exp + "/2/t1.values") * 2, fs::file_size(exp + "/1/t1.values") + 1);
}

TEST(ExportParityTest, DinWithDice) {
  TempDir tmp;
  const std::string data = tmp.path() + "/data";
  ASSERT_TRUE(GenerateData(data, {"--train_rows=30000", "--test_rows=5000", "--train_files=2", "--test_files=2"}));
  // bench's DIN on gen-data (Dice in the MLP and the attention unit), with
  // unseen test keys: the test split has users and items training never saw.
  CheckParity(tmp, SourceDir() + "/bench/configs/din_gen.conf", data, 1);
}

// MMoE needs two labels: the generated log plus a second one derived from it
// (clicked and the item's category is even), in front of the first.
TEST(ExportParityTest, MmoeTwoTasks) {
  TempDir tmp;
  const std::string gen = tmp.path() + "/gen", data = tmp.path() + "/data";
  ASSERT_TRUE(GenerateData(gen, {"--train_rows=30000", "--test_rows=5000", "--train_files=1", "--test_files=1"}));
  for (const char* split : {"train", "test"}) {
    fs::create_directories(data + "/" + split);
    for (const auto& e : fs::directory_iterator(gen + "/" + split)) {
      std::ifstream in(e.path());
      std::ofstream out(data + "/" + split + "/" + e.path().filename().string());
      std::string line;
      while (std::getline(in, line)) {
        std::vector<std::string> f = absl::StrSplit(line, '\t');
        ASSERT_GE(f.size(), 5u) << line;
        const bool second = f[0] == "1" && std::atoi(f[4].c_str()) % 2 == 0;
        out << (second ? "1" : "0") << '\t' << line << '\n';
      }
    }
  }
  std::string config = ReadFile(SourceDir() + "/examples/local.conf");
  // Two LABEL columns, the new one first; the MMoE model.
  config.replace(config.find("columns { name: \"label\" type: LABEL }"), 0,
                 "columns { name: \"even_click\" type: LABEL }\n  ");
  config.replace(config.find("model {"), config.find("cluster {") - config.find("model {"),
                 "model {\n  kind: MMOE\n  activation: RELU\n  mmoe { num_experts: 4 expert_hidden: 32 "
                 "tower_hidden: 16 }\n  dense_optimizer { kind: ADAM learning_rate: 0.002 }\n  seed: 7\n}\n\n");
  const std::string conf = tmp.path() + "/mmoe.conf";
  WriteFile(conf, config);
  CheckParity(tmp, conf, data, 2);
}

}  // namespace
}  // namespace ember::testing
