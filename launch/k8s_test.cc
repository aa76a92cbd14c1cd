// GenerateK8sManifests' checks (each bad flag or config value named) and
// WriteK8sManifests' refusal to replace files it did not write. The YAML
// itself is parsed and checked in tests/k8s_manifest_test.sh.
#include "launch/k8s.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_replace.h"
#include "gtest/gtest.h"

namespace ember::launch {
namespace {

std::string WriteFile(const std::string& dir, const std::string& name, const std::string& text) {
  const std::string path = dir + "/" + name;
  std::ofstream(path) << text;
  return path;
}

class K8sTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/k8s_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    config_ = WriteFile(dir_, "job.conf", std::string(kConfig));
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  K8sOptions Valid() const {
    K8sOptions o;
    o.config_path = config_;
    o.image = "registry.example/ember:1";
    o.job_claim = "ember-jobs";
    return o;
  }

  // The error of `o`, which must fail.
  static std::string Error(const K8sOptions& o) {
    absl::StatusOr<std::vector<K8sManifest>> m = GenerateK8sManifests(o);
    EXPECT_FALSE(m.ok());
    return m.ok() ? std::string() : std::string(m.status().message());
  }

  static constexpr char kConfig[] = R"(name: "Demo_Job"
tables { name: "t" dim: 4 optimizer { kind: SGD learning_rate: 0.1 } }
data {
  train: "data/train" test: "data/test"
  columns { name: "label" type: LABEL }
  columns { name: "id" type: SPARSE table: "t" slot: 1 }
}
model { kind: EMBEDDING_MLP hidden: 4 }
cluster { num_servers: 2 num_workers: 3 }
)";
  std::string dir_;
  std::string config_;
};

TEST_F(K8sTest, ValidOptionsGiveSixManifestsWithTheConfigsNameAndCounts) {
  absl::StatusOr<std::vector<K8sManifest>> m = GenerateK8sManifests(Valid());
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_EQ(m->size(), 6u);
  for (const K8sManifest& k : *m) {
    EXPECT_TRUE(absl::StartsWith(k.yaml, "# ember k8s: job demo-job ")) << k.file;
  }
  EXPECT_TRUE(absl::StrContains((*m)[4].yaml, "replicas: 2\n")) << (*m)[4].yaml;
  EXPECT_TRUE(absl::StrContains((*m)[5].yaml, "completions: 3\n")) << (*m)[5].yaml;
  // No storage.memory_budget_bytes: no RocksDB volumes.
  EXPECT_FALSE(absl::StrContains((*m)[4].yaml, "volumeClaimTemplates"));
}

TEST_F(K8sTest, EachBadFlagIsNamed) {
  struct Case {
    void (*set)(K8sOptions*);
    const char* expected;
  };
  const Case cases[] = {
      {[](K8sOptions* o) { o->image.clear(); }, "flag --image: required"},
      {[](K8sOptions* o) { o->image = "a b"; }, "flag --image:"},
      {[](K8sOptions* o) { o->job_claim.clear(); }, "flag --job_claim: required"},
      {[](K8sOptions* o) { o->job_claim = "Bad_Claim"; }, "flag --job_claim: 'Bad_Claim'"},
      {[](K8sOptions* o) { o->data_claim = "x/y"; }, "flag --data_claim:"},
      {[](K8sOptions* o) { o->name = "UPPER"; }, "flag --name: 'UPPER' is not a DNS label"},
      {[](K8sOptions* o) { o->name = std::string(41, 'a'); }, "flag --name:"},
      {[](K8sOptions* o) { o->namespace_name = "-x"; }, "flag --k8s_namespace: '-x'"},
      {[](K8sOptions* o) { o->scheduler_port = 70000; }, "flag --port: 70000 is not in [1, 65535]"},
      {[](K8sOptions* o) { o->server_port = 0; }, "flag --server_port: 0 is not in"},
      {[](K8sOptions* o) { o->server_port = o->scheduler_port; },
       "flag --server_port: equals --port"},
      {[](K8sOptions* o) { o->num_servers = -1; }, "flag --num_servers: must be >= 0"},
      {[](K8sOptions* o) { o->num_workers = -2; }, "flag --num_workers: must be >= 0"},
      {[](K8sOptions* o) { o->epochs = -1; }, "flag --epochs:"},
      {[](K8sOptions* o) { o->binary = "ember; rm -rf /"; }, "flag --binary:"},
      {[](K8sOptions* o) { o->secret = "no spaces"; }, "flag --secret:"},
      {[](K8sOptions* o) { o->cluster_domain = "a..b"; }, "flag --cluster_domain:"},
      {[](K8sOptions* o) { o->worker_restarts = -1; }, "flag --worker_restarts:"},
      {[](K8sOptions* o) { o->config_path.clear(); }, "flag --config: required"},
      {[](K8sOptions* o) { o->config_path = "/nonexistent/job.conf"; },
       "flag --config: /nonexistent/job.conf"},
  };
  for (const Case& c : cases) {
    K8sOptions o = Valid();
    c.set(&o);
    const std::string error = Error(o);
    EXPECT_TRUE(absl::StartsWith(error, c.expected))
        << "got: " << error << "\nwanted: " << c.expected;
  }
}

TEST_F(K8sTest, ConfigErrorsNameTheFileAndField) {
  K8sOptions o = Valid();
  o.config_path = WriteFile(dir_, "bad.conf", std::string(kConfig) + "train { epochs: 0 }\n");
  std::string error = Error(o);
  EXPECT_TRUE(absl::StrContains(error, "bad.conf")) << error;
  EXPECT_TRUE(absl::StrContains(error, "train.epochs")) << error;

  o.config_path = WriteFile(dir_, "syntax.conf", "tables { name: \n");
  error = Error(o);
  EXPECT_TRUE(absl::StrContains(error, "syntax.conf")) << error;

  // A name that makes no DNS label needs --name.
  o.config_path =
      WriteFile(dir_, "named.conf", absl::StrReplaceAll(kConfig, {{"Demo_Job", "demo job!"}}));
  error = Error(o);
  EXPECT_TRUE(absl::StartsWith(error, "flag --name: required")) << error;
  o.name = "demo";
  EXPECT_TRUE(GenerateK8sManifests(o).ok());
}

TEST_F(K8sTest, SpillVolumeNeedsAQuantityAndAPathOutsideEmber) {
  K8sOptions o = Valid();
  o.config_path = WriteFile(
      dir_, "spill.conf",
      std::string(kConfig) + "storage { memory_budget_bytes: 1000000 spill_path: \"/spill\" }\n");
  absl::StatusOr<std::vector<K8sManifest>> m = GenerateK8sManifests(o);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_TRUE(absl::StrContains((*m)[4].yaml, "volumeClaimTemplates")) << (*m)[4].yaml;
  o.spill_size = "ten gigs";
  EXPECT_TRUE(absl::StartsWith(Error(o), "flag --spill_size: 'ten gigs'"));
  o.spill_size = "1.5Gi";
  o.config_path = WriteFile(
      dir_, "spill2.conf",
      std::string(kConfig) + "storage { memory_budget_bytes: 1000000 spill_path: \"/ember/x\" }\n");
  EXPECT_TRUE(absl::StrContains(Error(o), "storage.spill_path"));
}

TEST_F(K8sTest, WritesOnlyOverItsOwnFilesOfTheSameJob) {
  absl::StatusOr<std::vector<K8sManifest>> m = GenerateK8sManifests(Valid());
  ASSERT_TRUE(m.ok()) << m.status();
  const std::string out = dir_ + "/out";
  ASSERT_TRUE(WriteK8sManifests(*m, out).ok());
  // Again: the same job's files are replaced.
  ASSERT_TRUE(WriteK8sManifests(*m, out).ok());
  std::ifstream in(out + "/21-servers.yaml");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, (*m)[4].yaml);
  // Another job's file, or a user's file, is left alone.
  K8sOptions other = Valid();
  other.name = "other";
  absl::StatusOr<std::vector<K8sManifest>> m2 = GenerateK8sManifests(other);
  ASSERT_TRUE(m2.ok());
  absl::Status st = WriteK8sManifests(*m2, out);
  EXPECT_TRUE(absl::StrContains(st.message(), "is not this job's manifest")) << st;
  WriteFile(dir_, "mine.yaml", "kind: Mine\n");
  std::vector<K8sManifest> clash = {{"mine.yaml", (*m)[0].yaml}};
  EXPECT_FALSE(WriteK8sManifests(clash, dir_).ok());
  std::ifstream mine(dir_ + "/mine.yaml");
  std::string kept((std::istreambuf_iterator<char>(mine)), std::istreambuf_iterator<char>());
  EXPECT_EQ(kept, "kind: Mine\n");
}

}  // namespace
}  // namespace ember::launch
