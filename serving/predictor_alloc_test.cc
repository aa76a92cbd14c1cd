// A warm Predictor allocates nothing per Predict call: the per-call context
// (model scratch, batch builder, row buffers) comes from its pool. Its own
// binary: malloc is interposed (models/internal/count_malloc.h).
#include <string>
#include <vector>

#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"
#include "models/internal/count_malloc.h"
#include "models/model.h"
#include "proto/keys.h"
#include "serving/predictor.h"
#include "storage/export.h"
#include "storage/test_checkpoint.h"

namespace ember::serving {
namespace {

// DIN with Dice: the attention path and the moving averages.
constexpr char kConfig[] = R"pb(
  name: "alloc"
  tables { name: "item" dim: 8 optimizer { kind: ADAGRAD } }
  tables { name: "user" dim: 8 optimizer { kind: ADAGRAD } }
  data {
    train: "unused"
    columns { name: "label" type: LABEL }
    columns { name: "user" type: SPARSE table: "user" slot: 1 }
    columns { name: "item" type: SPARSE table: "item" slot: 2 }
    columns { name: "hist" type: SEQUENCE table: "item" slot: 2 separator: "," max_len: 20 }
  }
  model {
    kind: DIN hidden: 32 hidden: 16 activation: DICE seed: 1
    attention { name: "h" query: "item" keys: "hist" hidden: 16 activation: DICE }
  }
  cluster { num_logical_shards: 16 }
)pb";

TEST(PredictorAllocTest, WarmPredictCallsAllocateNothing) {
#ifndef EMBER_COUNT_MALLOC
  GTEST_SKIP() << "malloc cannot be counted in this build (a sanitizer owns it)";
#endif
  storage::testing::TempDir tmp;
  proto::JobConfig config;
  ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(kConfig, &config));
  auto model = *models::Model::Create(config);
  storage::testing::CheckpointWriter state(config, model->dense_size());
  model->InitDense(absl::MakeSpan(state.dense()));
  for (int i = 0; i < 500; ++i) state.Set(0, proto::Hash64(2, std::to_string(i)), 0.001f * i);
  for (int u = 0; u < 100; ++u) state.Set(1, proto::Hash64(1, std::to_string(u)), -0.002f * u);
  storage::ExportOptions o;
  o.checkpoint_dir = state.Save(tmp.path() + "/ckpt", 1);
  o.out_root = tmp.path() + "/export";
  ASSERT_TRUE(storage::ExportCheckpoint(o).ok());
  auto p = *Predictor::Load(o.out_root);

  // Batches of 1 and 64 lines, some keys unseen.
  std::vector<std::vector<std::string>> batches(2);
  for (int i = 0; i < 64; ++i) {
    std::string hist;
    for (int h = 0; h < i % 20; ++h) hist += (h ? "," : "") + std::to_string((i * 7 + h * 13) % 600);
    batches[1].push_back("0\t" + std::to_string(i % 120) + "\t" + std::to_string(i * 11 % 600) + "\t" + hist);
  }
  batches[0].push_back(batches[1][5]);
  std::vector<std::vector<std::string_view>> views;
  for (const auto& b : batches) views.emplace_back(b.begin(), b.end());
  std::vector<float> scores;
  std::vector<LineError> errors;
  scores.reserve(64);
  for (int warm = 0; warm < 3; ++warm) {
    for (const auto& v : views) p->Predict(v, &scores, &errors);
  }
  ASSERT_TRUE(errors.empty()) << errors[0].reason;
  const long before = g_mallocs.load();
  for (int i = 0; i < 50; ++i) {
    for (const auto& v : views) p->Predict(v, &scores, &errors);
  }
  EXPECT_EQ(g_mallocs.load() - before, 0);
  EXPECT_EQ(scores.size(), 64u);
}

}  // namespace
}  // namespace ember::serving
