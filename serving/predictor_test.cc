// serving::Predictor: the same scores as the model's own forward pass on the
// exported rows, bad lines, columns given by name, live updates that never
// mix two versions under concurrent Predict calls, and refused updates.
#include "serving/predictor.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"
#include "models/model.h"
#include "proto/keys.h"
#include "storage/export.h"
#include "storage/test_checkpoint.h"
#include "worker/batch_builder.h"

namespace ember::serving {
namespace {

namespace fs = std::filesystem;
using storage::testing::CheckpointWriter;
using storage::testing::TempDir;

constexpr char kConfig[] = R"pb(
  name: "predictor_test"
  tables { name: "user" dim: 4 optimizer { kind: ADAGRAD } }
  tables { name: "item" dim: 4 optimizer { kind: ADAGRAD } admission { default_value: 0.25 } }
  data {
    train: "unused"
    columns { name: "label" type: LABEL }
    columns { name: "user" type: SPARSE table: "user" slot: 1 }
    columns { name: "item" type: SPARSE table: "item" slot: 2 }
    columns { name: "hist" type: SEQUENCE table: "item" slot: 2 separator: "," }
    columns { name: "price" type: DENSE }
  }
  model { kind: EMBEDDING_MLP hidden: 8 seed: 3 }
  cluster { num_logical_shards: 8 }
)pb";

proto::JobConfig Config() {
  proto::JobConfig c;
  EXPECT_TRUE(google::protobuf::TextFormat::ParseFromString(kConfig, &c));
  return c;
}

// A job state whose rows and dense vector all move with `shift`, so that any
// two versions (and any mix of them) score differently.
struct Job {
  proto::JobConfig config = Config();
  std::unique_ptr<models::Model> model = *models::Model::Create(config);
  CheckpointWriter state{config, model->dense_size()};

  void Fill(float shift) {
    std::vector<float> dense(model->dense_size());
    model->InitDense(absl::MakeSpan(dense));
    for (float& d : dense) d += 0.01f * shift;
    state.dense() = dense;
    for (int u = 0; u < 20; ++u) state.Set(0, proto::Hash64(1, std::to_string(u)), 0.05f * u + shift);
    for (int i = 0; i < 30; ++i) state.Set(1, proto::Hash64(2, std::to_string(i)), -0.03f * i + shift);
  }
};

absl::StatusOr<proto::ExportManifest> Export(const std::string& ckpt, const std::string& root,
                                             const std::string& base = "") {
  storage::ExportOptions o;
  o.checkpoint_dir = ckpt;
  o.out_root = root;
  o.base_dir = base;
  return storage::ExportCheckpoint(o);
}

const std::vector<std::string> kLines = {
    "1\t3\t7\t1,2,3\t0.5",
    "0\t19\t29\t\t-1",
    "\t4\tunseen-item\t5,unseen\t2",  // no label: serving needs none
    "0\tunseen-user\t1\t1\t0",
};

std::vector<std::string_view> Views(const std::vector<std::string>& lines) {
  return std::vector<std::string_view>(lines.begin(), lines.end());
}

// The model's own forward pass over `lines` (labels set to 0 first), on the
// bundle's rows: what Predict must return.
std::vector<float> Reference(const proto::JobConfig& config, const storage::ExportedModel& bundle,
                             std::vector<std::string> lines) {
  for (std::string& l : lines) l = "0" + l.substr(l.find('\t'));
  proto::ShardMap map;
  map.set_num_logical_shards(1);
  map.add_server_rank(0);
  auto builder = *worker::BatchBuilder::Create(config, map, 1);
  for (const std::string& l : lines) EXPECT_TRUE(builder->AddLine(l).ok()) << l;
  models::Batch batch = builder->Finish();
  std::vector<std::vector<float>> emb(config.tables_size());
  std::vector<const float*> ptr(config.tables_size(), nullptr);
  for (int t = 0; t < config.tables_size(); ++t) {
    emb[t].resize(batch.tables[t].keys.size() * config.tables(t).dim());
    for (size_t k = 0; k < batch.tables[t].keys.size(); ++k) {
      bundle.Lookup(t, batch.tables[t].keys[k], emb[t].data() + k * config.tables(t).dim());
    }
    if (!emb[t].empty()) ptr[t] = emb[t].data();
  }
  auto model = *models::Model::Create(config);
  std::vector<float> out(lines.size());
  model->Predict(batch, bundle.dense(), ptr, absl::MakeSpan(out));
  return out;
}

TEST(PredictorTest, ScoresAsTheModelDoesOnTheExportedRows) {
  TempDir tmp;
  Job job;
  job.Fill(0);
  ASSERT_TRUE(Export(job.state.Save(tmp.path() + "/ckpt", 1), tmp.path() + "/export").ok());
  absl::StatusOr<std::unique_ptr<Predictor>> p = Predictor::Load(tmp.path() + "/export");  // the root: newest
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ((*p)->version().version, 1u);
  EXPECT_EQ((*p)->tasks(), std::vector<std::string>{"label"});
  std::vector<float> scores;
  std::vector<LineError> errors;
  (*p)->Predict(Views(kLines), &scores, &errors);
  EXPECT_TRUE(errors.empty());
  auto bundle = *storage::ExportedModel::Load(tmp.path() + "/export/1");
  EXPECT_EQ(scores, Reference(job.config, *bundle, kLines));
  for (float s : scores) EXPECT_TRUE(s > 0 && s < 1) << s;
  // An unseen item reads the table's default (0.25 here): not the same as a zero row.
  EXPECT_NE(scores[2], scores[0]);
}

TEST(PredictorTest, BadLinesGetNanAndAReasonTheOthersAreScored) {
  TempDir tmp;
  Job job;
  job.Fill(0);
  ASSERT_TRUE(Export(job.state.Save(tmp.path() + "/ckpt", 1), tmp.path() + "/export").ok());
  auto p = *Predictor::Load(tmp.path() + "/export/1");
  const std::vector<std::string> lines = {kLines[0], "1\t3\t7", "1\t3\t7\t1\tnot-a-number", kLines[1]};
  std::vector<float> scores, good;
  std::vector<LineError> errors;
  p->Predict(Views(lines), &scores, &errors);
  ASSERT_EQ(errors.size(), 2u);
  EXPECT_EQ(errors[0].index, 1u);
  EXPECT_EQ(errors[1].index, 2u);
  EXPECT_FALSE(errors[0].reason.empty());
  EXPECT_TRUE(std::isnan(scores[1]) && std::isnan(scores[2]));
  p->Predict(Views({kLines[0], kLines[1]}), &good, &errors);
  EXPECT_EQ(scores[0], good[0]);
  EXPECT_EQ(scores[3], good[1]);
}

TEST(PredictorTest, ColumnsByNameMakeTheSameLine) {
  TempDir tmp;
  Job job;
  job.Fill(0);
  ASSERT_TRUE(Export(job.state.Save(tmp.path() + "/ckpt", 1), tmp.path() + "/export").ok());
  auto p = *Predictor::Load(tmp.path() + "/export/1");
  std::string line;
  ASSERT_TRUE(p->LineFromColumns({"item", "user", "hist", "price"}, {"7", "3", "1,2,3", "0.5"}, &line).ok());
  EXPECT_EQ(line, "\t3\t7\t1,2,3\t0.5");
  std::vector<float> a, b;
  std::vector<LineError> errors;
  p->Predict(Views({line}), &a, &errors);
  p->Predict(Views({kLines[0]}), &b, &errors);
  EXPECT_EQ(a, b);
  absl::Status unknown = p->LineFromColumns({"user", "colour"}, {"3", "red"}, &line);
  EXPECT_NE(unknown.message().find("unknown column 'colour'"), std::string_view::npos) << unknown;
  EXPECT_FALSE(p->LineFromColumns({"user"}, {"3\t4"}, &line).ok());
  EXPECT_FALSE(p->LineFromColumns({"user", "user"}, {"3", "4"}, &line).ok());
}

// Versions 1..12, full and deltas on the one before alternately, each with
// every row and the dense vector shifted: a reader sees one of them whole.
TEST(PredictorTest, UpdatesUnderConcurrentPredictsNeverMixVersions) {
  TempDir tmp;
  Job job;
  const std::string root = tmp.path() + "/export";
  std::vector<std::vector<float>> expected;
  constexpr int kVersions = 12;
  for (int v = 1; v <= kVersions; ++v) {
    job.Fill(static_cast<float>(v));
    const std::string ckpt = job.state.Save(tmp.path() + "/ckpt", v);
    ASSERT_TRUE(Export(ckpt, root, v % 2 == 0 ? root + "/" + std::to_string(v - 1) : "").ok());
    expected.push_back(Reference(job.config, **storage::ExportedModel::Load(root + "/" + std::to_string(v)), kLines));
  }
  for (size_t a = 0; a < expected.size(); ++a) {
    for (size_t b = a + 1; b < expected.size(); ++b) ASSERT_NE(expected[a], expected[b]);
  }
  auto p = *Predictor::Load(root + "/1");
  std::atomic<bool> stop{false};
  std::atomic<int> mixed{0}, calls{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < 3; ++r) {
    readers.emplace_back([&] {
      std::vector<float> scores;
      std::vector<LineError> errors;
      const auto lines = Views(kLines);
      while (!stop.load()) {
        p->Predict(lines, &scores, &errors);
        ++calls;
        if (std::find(expected.begin(), expected.end(), scores) == expected.end()) ++mixed;
      }
    });
  }
  for (int v = 2; v <= kVersions; ++v) {
    while (calls.load() < 20 * v) std::this_thread::yield();  // readers ran on the version before
    ASSERT_TRUE(p->Update(root + "/" + std::to_string(v)).ok());
    EXPECT_EQ(p->version().version, static_cast<uint64_t>(v));
  }
  while (calls.load() < 20 * (kVersions + 1)) std::this_thread::yield();
  stop.store(true);
  for (auto& t : readers) t.join();
  EXPECT_EQ(mixed.load(), 0) << "of " << calls.load() << " calls";
  EXPECT_GT(calls.load(), 0);
}

TEST(PredictorTest, RefusedUpdatesKeepTheModelServed) {
  TempDir tmp;
  Job job;
  const std::string root = tmp.path() + "/export";
  job.Fill(1);
  ASSERT_TRUE(Export(job.state.Save(tmp.path() + "/ckpt", 1), root).ok());
  job.Fill(2);
  ASSERT_TRUE(Export(job.state.Save(tmp.path() + "/ckpt", 2), root, root + "/1").ok());  // 2: delta on 1
  job.Fill(3);
  ASSERT_TRUE(Export(job.state.Save(tmp.path() + "/ckpt", 3), root, root + "/2").ok());  // 3: delta on 2
  auto p = *Predictor::Load(root + "/1");
  std::vector<float> before, after;
  std::vector<LineError> errors;
  p->Predict(Views(kLines), &before, &errors);

  // Damaged delta: refused naming the file, version 1 still served.
  {
    std::fstream f(root + "/2/t1.values", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(3);
    f.put('\x55');
  }
  absl::Status st = p->Update(root + "/2");
  EXPECT_NE(st.message().find("t1.values"), std::string_view::npos) << st;
  absl::StatusOr<bool> changed = p->UpdateFromRoot(root);
  EXPECT_FALSE(changed.ok());
  EXPECT_EQ(p->version().version, 1u);
  // Polled again: the same refusal, without reading the bundle again.
  absl::StatusOr<bool> again = p->UpdateFromRoot(root);
  EXPECT_EQ(again.status(), changed.status());
  p->Predict(Views(kLines), &after, &errors);
  EXPECT_EQ(before, after);
  // A bundle being written (no MANIFEST yet) is not a candidate.
  fs::create_directories(root + "/9");
  // Version 1 again: not newer.
  EXPECT_FALSE(p->Update(root + "/1").ok());
}

TEST(PredictorTest, UpdateFromRootFollowsTheDeltas) {
  TempDir tmp;
  Job job;
  const std::string root = tmp.path() + "/export";
  job.Fill(1);
  ASSERT_TRUE(Export(job.state.Save(tmp.path() + "/ckpt", 1), root).ok());
  auto p = *Predictor::Load(root);
  absl::StatusOr<bool> changed = p->UpdateFromRoot(root);
  ASSERT_TRUE(changed.ok());
  EXPECT_FALSE(*changed);
  job.Fill(2);
  ASSERT_TRUE(Export(job.state.Save(tmp.path() + "/ckpt", 2), root, root + "/1").ok());
  job.Fill(3);
  ASSERT_TRUE(Export(job.state.Save(tmp.path() + "/ckpt", 3), root, root + "/2").ok());
  changed = p->UpdateFromRoot(root);
  ASSERT_TRUE(changed.ok()) << changed.status();
  EXPECT_TRUE(*changed);
  EXPECT_EQ(p->version().version, 3u);
  std::vector<float> got;
  std::vector<LineError> errors;
  p->Predict(Views(kLines), &got, &errors);
  EXPECT_EQ(got, Reference(job.config, **storage::ExportedModel::Load(root + "/3"), kLines));
}

}  // namespace
}  // namespace ember::serving
