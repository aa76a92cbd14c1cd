// Export bundles: full and delta exports of checkpoints, base + delta equal to
// a full export bit for bit, fp16, expiry, and refusals of damaged bundles.
#include "storage/export.h"

#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "proto/keys.h"
#include "storage/checkpoint_files.h"
#include "storage/shard_checkpoint.h"
#include "storage/sparse_table.h"
#include "storage/tiered_store.h"

namespace ember::storage {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/ember_export_test.XXXXXX";
    path_ = ::mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

proto::JobConfig TestConfig() {
  proto::JobConfig c;
  c.set_name("export_test");
  c.mutable_cluster()->set_num_logical_shards(16);
  proto::TableConfig* a = c.add_tables();
  a->set_name("item");
  a->set_dim(8);
  a->mutable_optimizer()->set_kind(proto::OptimizerConfig::ADAGRAD);
  proto::TableConfig* b = c.add_tables();
  b->set_name("user");
  b->set_dim(4);
  b->mutable_optimizer()->set_kind(proto::OptimizerConfig::ADAM);
  b->mutable_admission()->set_default_value(0.5f);
  return c;
}

constexpr uint64_t kDense = 37;

// A model state a test edits and saves as checkpoints.
class State {
 public:
  explicit State(const proto::JobConfig& config) : config_(config) {
    for (const auto& t : config_.tables()) specs_.push_back(std::make_unique<TableSpec>(t));
    std::vector<uint32_t> all;
    for (uint32_t s = 0; s < config_.cluster().num_logical_shards(); ++s) all.push_back(s);
    store_ = std::make_unique<TieredStore>(Specs(), all, config_.cluster().num_logical_shards(), 0, nullptr);
    dense_.weights.resize(kDense);
    for (uint64_t i = 0; i < kDense; ++i) dense_.weights[i] = 0.01f * i;
  }
  std::vector<const TableSpec*> Specs() const {
    std::vector<const TableSpec*> v;
    for (const auto& s : specs_) v.push_back(s.get());
    return v;
  }
  // Sets (creating if needed) the row of `key` in table t to `value` in every weight.
  void Set(uint32_t t, uint64_t key, float value, uint64_t push_seq = 1) {
    ShardTable& tab = store_->table(t, proto::ShardOf(key, config_.cluster().num_logical_shards()));
    bool created;
    uint8_t* row = tab.FindOrCreate(key, 0, &created);
    float* w = TableSpec::Weights(row);
    for (uint32_t i = 0; i < specs_[t]->dim(); ++i) w[i] = value + 0.001f * i;
    TableSpec::Meta(row)->last_push_seq = push_seq;
  }
  void Erase(uint32_t t, uint64_t key) {
    store_->table(t, proto::ShardOf(key, config_.cluster().num_logical_shards())).Erase(key);
  }
  // Writes checkpoint `id` under root; returns its directory.
  std::string Save(const std::string& root, uint64_t id, uint64_t push_seq = 1) {
    const std::string dir = root + "/" + CheckpointDirName(id);
    fs::create_directories(dir);
    SaveSource src;
    src.rank = 0;
    src.num_logical_shards = config_.cluster().num_logical_shards();
    src.specs = Specs();
    src.stores = {store_.get()};
    src.generations.assign(specs_.size(), 0);
    src.dense = &dense_;
    src.push_seq = push_seq;
    absl::StatusOr<proto::CheckpointPart> part = WriteCheckpointPart(dir, src);
    EXPECT_TRUE(part.ok()) << part.status();
    proto::CheckpointManifest m = MergeParts(config_, kDense, id, 0, 0, {*part});
    EXPECT_TRUE(WriteManifest(dir, m).ok());
    return dir;
  }
  DenseSlice& dense() { return dense_; }

 private:
  proto::JobConfig config_;
  std::vector<std::unique_ptr<TableSpec>> specs_;
  std::unique_ptr<TieredStore> store_;
  DenseSlice dense_;
};

absl::StatusOr<proto::ExportManifest> Export(const std::string& ckpt, const std::string& root,
                                             const std::string& base = "", proto::ValueType type = proto::FP32) {
  ExportOptions o;
  o.checkpoint_dir = ckpt;
  o.out_root = root;
  o.base_dir = base;
  o.value_type = type;
  o.shards_per_pass = 5;  // several passes, one of them partial
  return ExportCheckpoint(o);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Every run of every table, and the dense vector, byte for byte.
void ExpectSameModel(const ExportedModel& a, const ExportedModel& b) {
  ASSERT_EQ(a.num_tables(), b.num_tables());
  EXPECT_EQ(a.dense(), b.dense());
  for (size_t t = 0; t < a.num_tables(); ++t) {
    ASSERT_EQ(a.rows(t), b.rows(t)) << "table " << t;
    for (uint32_t s = 0; s < a.manifest().num_logical_shards(); ++s) {
      const ExportedModel::Run &x = a.run(t, s), &y = b.run(t, s);
      ASSERT_EQ(x.rows, y.rows) << "table " << t << " shard " << s;
      if (x.rows == 0) continue;
      EXPECT_EQ(0, std::memcmp(x.keys, y.keys, x.rows * 8)) << "table " << t << " shard " << s;
      EXPECT_EQ(0, std::memcmp(x.values, y.values, x.rows * a.value_bytes(t))) << "table " << t << " shard " << s;
    }
  }
}

TEST(ExportTest, FullBundleServesEveryRowAndTheDefaultOtherwise) {
  TempDir tmp;
  const proto::JobConfig config = TestConfig();
  State state(config);
  for (uint64_t k = 1; k <= 500; ++k) state.Set(0, proto::Hash64(1, std::to_string(k)), 0.1f * k);
  for (uint64_t k = 1; k <= 50; ++k) state.Set(1, proto::Hash64(2, std::to_string(k)), -0.2f * k);
  const std::string ckpt = state.Save(tmp.path() + "/ckpt", 1);
  absl::StatusOr<proto::ExportManifest> m = Export(ckpt, tmp.path() + "/export");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->version(), 1u);
  EXPECT_EQ(m->base_version(), 0u);
  EXPECT_EQ(m->tables(0).rows(), 500u);
  EXPECT_EQ(m->tables(1).rows(), 50u);
  EXPECT_EQ(m->config().name(), "export_test");

  absl::StatusOr<std::shared_ptr<const ExportedModel>> model = ExportedModel::Load(tmp.path() + "/export/1");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->dense(), state.dense().weights);
  std::vector<float> w(8);
  for (uint64_t k = 1; k <= 500; ++k) {
    ASSERT_TRUE((*model)->Lookup(0, proto::Hash64(1, std::to_string(k)), w.data()));
    EXPECT_FLOAT_EQ(w[0], 0.1f * k);
    EXPECT_FLOAT_EQ(w[7], 0.1f * k + 0.007f);
  }
  EXPECT_FALSE((*model)->Lookup(0, proto::Hash64(1, "unseen"), w.data()));
  EXPECT_EQ(w, std::vector<float>(8, 0.0f));
  EXPECT_FALSE((*model)->Lookup(1, proto::Hash64(2, "unseen"), w.data()));
  EXPECT_EQ(std::vector<float>(w.begin(), w.begin() + 4), std::vector<float>(4, 0.5f));

  // A second export of the same checkpoint takes the next version and leaves the first alone.
  const std::string before = ReadFile(tmp.path() + "/export/1/t0.values");
  absl::StatusOr<proto::ExportManifest> again = Export(ckpt, tmp.path() + "/export");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->version(), 2u);
  EXPECT_EQ(ReadFile(tmp.path() + "/export/2/t0.values"), before);
  EXPECT_EQ(ListExports(tmp.path() + "/export").size(), 2u);
}

TEST(ExportTest, BasePlusDeltasEqualsAFullExportBitForBit) {
  TempDir tmp;
  const proto::JobConfig config = TestConfig();
  State state(config);
  std::mt19937_64 rng(7);
  std::vector<uint64_t> keys;
  for (int k = 0; k < 2000; ++k) {
    keys.push_back(rng());
    state.Set(0, keys.back(), 0.001f * k);
    state.Set(1, keys.back(), -0.001f * k);
  }
  const std::string root = tmp.path() + "/export";
  ASSERT_TRUE(Export(state.Save(tmp.path() + "/ckpt", 1), root).ok());  // version 1, full
  // Round 1: change some rows, delete some, add some.
  for (int k = 0; k < 2000; k += 7) state.Set(0, keys[k], 5.0f + k);
  for (int k = 3; k < 2000; k += 11) state.Erase(0, keys[k]);
  for (int k = 0; k < 300; ++k) state.Set(0, rng(), 9.0f);
  state.dense().weights[3] = 42.0f;
  const std::string c2 = state.Save(tmp.path() + "/ckpt", 2);
  absl::StatusOr<proto::ExportManifest> d2 = Export(c2, root, root + "/1");  // version 2, delta on 1
  ASSERT_TRUE(d2.ok()) << d2.status();
  EXPECT_EQ(d2->base_version(), 1u);
  EXPECT_EQ(d2->full_version(), 1u);
  EXPECT_GT(d2->tables(0).deleted(), 0u);
  EXPECT_LT(d2->tables(0).rows(), d2->tables(0).total_rows());
  EXPECT_EQ(d2->tables(1).rows(), 0u) << "table 1 did not change";
  // Round 2: a delta on the delta.
  for (int k = 1; k < 2000; k += 5) state.Set(1, keys[k], 3.0f);
  for (int k = 2; k < 2000; k += 13) state.Erase(1, keys[k]);
  const std::string c3 = state.Save(tmp.path() + "/ckpt", 3);
  absl::StatusOr<proto::ExportManifest> d3 = Export(c3, root, root + "/2");  // version 3
  ASSERT_TRUE(d3.ok()) << d3.status();
  absl::StatusOr<proto::ExportManifest> f4 = Export(c3, root);  // version 4, full
  ASSERT_TRUE(f4.ok()) << f4.status();

  absl::StatusOr<std::shared_ptr<const ExportedModel>> chained = ExportedModel::Load(root + "/3");
  ASSERT_TRUE(chained.ok()) << chained.status();
  absl::StatusOr<std::shared_ptr<const ExportedModel>> full = ExportedModel::Load(root + "/4");
  ASSERT_TRUE(full.ok()) << full.status();
  ExpectSameModel(**chained, **full);
  EXPECT_EQ((*chained)->dense()[3], 42.0f);

  // Applying step by step gives the same model; the old one is unchanged.
  absl::StatusOr<std::shared_ptr<const ExportedModel>> v1 = ExportedModel::Load(root + "/1");
  ASSERT_TRUE(v1.ok());
  const uint64_t v1_rows = (*v1)->rows(0);
  absl::StatusOr<std::shared_ptr<const ExportedModel>> v2 = (*v1)->ApplyDelta(root + "/2");
  ASSERT_TRUE(v2.ok()) << v2.status();
  absl::StatusOr<std::shared_ptr<const ExportedModel>> v3 = (*v2)->ApplyDelta(root + "/3");
  ASSERT_TRUE(v3.ok()) << v3.status();
  ExpectSameModel(**v3, **full);
  EXPECT_EQ((*v1)->rows(0), v1_rows);
  // A delta on another version is refused.
  absl::StatusOr<std::shared_ptr<const ExportedModel>> wrong = (*v1)->ApplyDelta(root + "/3");
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.status().message().find("not a delta on version 1"), std::string_view::npos) << wrong.status();
}

TEST(ExportTest, Fp16IsCloseAndRefusedAsABaseForFp32) {
  TempDir tmp;
  State state(TestConfig());
  std::mt19937_64 rng(3);
  std::uniform_real_distribution<float> u(-1, 1);
  std::vector<std::pair<uint64_t, float>> rows;
  for (int k = 0; k < 300; ++k) {
    rows.emplace_back(rng(), u(rng));
    state.Set(0, rows.back().first, rows.back().second);
  }
  const std::string ckpt = state.Save(tmp.path() + "/ckpt", 1);
  const std::string root = tmp.path() + "/export";
  ASSERT_TRUE(Export(ckpt, root, "", proto::FP16).ok());
  absl::StatusOr<std::shared_ptr<const ExportedModel>> model = ExportedModel::Load(root + "/1");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->value_bytes(0), 16u);
  std::vector<float> w(8);
  for (const auto& [key, value] : rows) {
    ASSERT_TRUE((*model)->Lookup(0, key, w.data()));
    EXPECT_NEAR(w[0], value, 1e-3);
  }
  absl::StatusOr<proto::ExportManifest> mixed = Export(ckpt, root, root + "/1", proto::FP32);
  ASSERT_FALSE(mixed.ok());
  EXPECT_NE(mixed.status().message().find("FP16"), std::string_view::npos) << mixed.status();
  EXPECT_EQ(ListExports(root).size(), 1u) << "a refused export leaves no directory";
}

TEST(ExportTest, ExpiredRowsAreNotExported) {
  TempDir tmp;
  proto::JobConfig config = TestConfig();
  config.mutable_tables(0)->mutable_expiry()->set_after_pushes(100);
  State state(config);
  state.Set(0, 11, 1.0f, /*push_seq=*/950);  // pushed 50 before the cut: kept
  state.Set(0, 12, 1.0f, /*push_seq=*/800);  // 200 before: expired
  absl::StatusOr<proto::ExportManifest> m = Export(state.Save(tmp.path() + "/ckpt", 1, 1000), tmp.path() + "/e");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->tables(0).rows(), 1u);
}

TEST(ExportTest, DamagedOrIncompleteBundlesAreRefusedNamingTheFile) {
  TempDir tmp;
  State state(TestConfig());
  for (uint64_t k = 1; k <= 100; ++k) state.Set(0, k * 0x9e3779b97f4a7c15ULL, 1.0f);
  const std::string root = tmp.path() + "/export";
  ASSERT_TRUE(Export(state.Save(tmp.path() + "/ckpt", 1), root).ok());
  ASSERT_TRUE(ExportedModel::Load(root + "/1").ok());
  {
    std::fstream f(root + "/1/t0.values", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(17);
    f.put('\x7f');
  }
  absl::StatusOr<std::shared_ptr<const ExportedModel>> bad = ExportedModel::Load(root + "/1");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("t0.values"), std::string_view::npos) << bad.status();
  std::ostringstream report;
  EXPECT_FALSE(InspectExport(root + "/1", 2, report).ok());
  EXPECT_NE(report.str().find("t0.values"), std::string::npos) << report.str();

  fs::remove(root + "/1/MANIFEST");
  absl::StatusOr<std::shared_ptr<const ExportedModel>> incomplete = ExportedModel::Load(root + "/1");
  ASSERT_FALSE(incomplete.ok());
  EXPECT_TRUE(absl::IsNotFound(incomplete.status())) << incomplete.status();
  ASSERT_EQ(ListExports(root).size(), 1u);
  EXPECT_FALSE(ListExports(root)[0].complete);
}

TEST(ExportTest, ACheckpointWithoutConfigNeedsOne) {
  TempDir tmp;
  State state(TestConfig());
  state.Set(0, 5, 1.0f);
  const std::string ckpt = state.Save(tmp.path() + "/ckpt", 1);
  absl::StatusOr<proto::CheckpointManifest> m = ReadManifest(ckpt);
  ASSERT_TRUE(m.ok());
  m->clear_config();
  ASSERT_TRUE(WriteManifest(ckpt, *m).ok());
  absl::StatusOr<proto::ExportManifest> e = Export(ckpt, tmp.path() + "/e");
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("--config"), std::string_view::npos) << e.status();
  const proto::JobConfig config = TestConfig();
  ExportOptions o;
  o.checkpoint_dir = ckpt;
  o.out_root = tmp.path() + "/e";
  o.config = &config;
  EXPECT_TRUE(ExportCheckpoint(o).ok());
}

}  // namespace
}  // namespace ember::storage
