// End-to-end tests of every model kind: finite-difference gradients of the
// whole model (dense parameters and embedding rows) in double, the state
// push, initialisation, batch checks and config errors.
#include "models/model.h"

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "models/internal/gradient_check.h"
#include "models/internal/model_core.h"
#include "proto/config.h"

namespace ember::models {
namespace {

using internal::GradientsMatch;
using internal::MaxAbs;
using internal::NumericGradient;

constexpr char kTables[] = R"(
  tables { name: "user" dim: 3 }
  tables { name: "item" dim: 4 }
  tables { name: "cat" dim: 2 }
  tables { name: "gap" dim: 2 }
)";

constexpr char kColumns[] = R"(
  columns { name: "click" type: LABEL }
  columns { name: "buy" type: LABEL }
  columns { name: "user_id" type: SPARSE table: "user" }
  columns { name: "tags" type: MULTI_SPARSE table: "cat" slot: 9 pooling: MEAN }
  columns { name: "item_id" type: SPARSE table: "item" slot: 2 }
  columns { name: "item_cat" type: SPARSE table: "cat" slot: 3 }
  columns { name: "time" type: TIME }
  columns { name: "hist_items" type: SEQUENCE table: "item" slot: 2 }
  columns { name: "hist_cats" type: SEQUENCE table: "cat" slot: 3 }
  columns { name: "hist_times" type: TIME_SEQUENCE }
  columns { name: "price" type: DENSE }
)";

std::string Config(const std::string& model) {
  return absl::StrCat(kTables, "data {", kColumns, "}\nmodel {", model, "}\n");
}

constexpr char kDin[] = R"(
  kind: DIN hidden: 5 hidden: 3 activation: DICE
  attention { query: "item_id" query: "item_cat" keys: "hist_items" keys: "hist_cats"
              hidden: 4 hidden: 3 activation: DICE }
)";
constexpr char kSimSoft[] = R"(
  kind: SIM hidden: 4 activation: PRELU
  attention { name: "long" query: "item_id" query: "item_cat" keys: "hist_items" keys: "hist_cats"
              hidden: 3 activation: DICE
              search { kind: SOFT top_k: 2 time: "time" key_times: "hist_times" gap_table: "gap" } }
  attention { name: "short" query: "item_id" query: "item_cat" keys: "hist_items" keys: "hist_cats"
              hidden: 3 activation: PRELU last_n: 2 }
)";
constexpr char kSimHard[] = R"(
  kind: SIM hidden: 4 activation: SIGMOID
  attention { query: "item_id" query: "item_cat" keys: "hist_items" keys: "hist_cats" hidden: 3
              search { kind: HARD top_k: 3 match_query: "item_cat" match_key: "hist_cats" } }
)";
constexpr char kMmoe[] = R"(
  kind: MMOE activation: DICE
  mmoe { num_experts: 3 expert_hidden: 4 expert_hidden: 3 tower_hidden: 2 task_weight: 1 task_weight: 0.5 }
)";
constexpr char kBaseline[] = R"(
  kind: EMBEDDING_MLP hidden: 5 activation: SIGMOID
)";

// A random batch in the layout of `plan`: every table has `keys` rows; a
// block's views share offsets (0..4 items per sample).
Batch RandomBatch(const internal::CoreLayout& layout, int size, int keys, std::mt19937_64& rng) {
  const InputPlan& plan = layout.plan;
  Batch b;
  b.size = size;
  b.num_labels = 2;
  b.num_dense = layout.num_dense;
  std::bernoulli_distribution coin(0.5);
  std::uniform_real_distribution<float> u(-1, 1);
  for (int i = 0; i < size * 2; ++i) b.labels.push_back(coin(rng) ? 1.0f : 0.0f);
  for (int i = 0; i < size * b.num_dense; ++i) b.dense.push_back(u(rng));
  b.tables.resize(layout.table_dims.size());
  for (auto& t : b.tables) {
    for (int k = 0; k < keys; ++k) t.keys.push_back(1000 + k);
    t.server_begin = {0, static_cast<uint32_t>(keys)};
  }
  std::uniform_int_distribution<uint32_t> row(0, keys - 1), len(0, 4);
  auto column = [&](int table, int max_len, bool empty, std::vector<uint32_t>* lengths) {
    SparseColumnBatch c;
    c.table = table;
    c.offsets.push_back(0);
    for (int i = 0; i < size; ++i) {
      const uint32_t n = empty ? 0 : lengths != nullptr ? (*lengths)[i] : std::min<uint32_t>(len(rng), max_len);
      for (uint32_t k = 0; k < n; ++k) c.rows.push_back(row(rng));
      c.offsets.push_back(static_cast<uint32_t>(c.rows.size()));
    }
    return c;
  };
  for (size_t s = 0; s < plan.sparse_column.size(); ++s) {
    // Samples without a value are part of the test (the first has none).
    SparseColumnBatch c = column(plan.sparse_table[s], s == 0 || s == 2 || s == 3 ? 1 : 4, plan.attention_only[s],
                                 nullptr);
    c.column = plan.sparse_column[s];
    b.sparse.push_back(std::move(c));
  }
  for (const AttentionPlan& a : plan.attention) {
    std::vector<uint32_t> lengths(size);
    for (uint32_t& l : lengths) l = len(rng);
    lengths[0] = 0;
    for (int v = 0; v < a.num_views(); ++v) {
      const int table = v < static_cast<int>(a.keys.size()) ? plan.sparse_table[a.keys[v]] : a.gap_table;
      SparseColumnBatch c = column(table, 4, false, &lengths);
      c.column = v < static_cast<int>(a.keys.size()) ? plan.sparse_column[a.keys[v]] : -1;
      b.sparse.push_back(std::move(c));
    }
  }
  return b;
}

class ModelGradientTest : public ::testing::TestWithParam<const char*> {};

TEST_P(ModelGradientTest, MatchesFiniteDifferences) {
  absl::StatusOr<proto::JobConfig> config = proto::ParseJobConfig(Config(GetParam()), "test");
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<internal::CoreLayout> layout = internal::BuildCoreLayout(*config);
  ASSERT_TRUE(layout.ok()) << layout.status();
  internal::ModelCore<double> core(*layout);
  std::mt19937_64 rng(5);
  const int size = 6, keys = 5;
  Batch batch = RandomBatch(core.layout(), size, keys, rng);
  ASSERT_TRUE(internal::CheckBatch(core.layout(), batch).ok()) << internal::CheckBatch(core.layout(), batch);

  std::vector<double> dense(core.num_params() + core.num_state());
  core.InitDense(absl::MakeSpan(dense));
  // Random (not initial) values everywhere, so that no gradient is zero by
  // symmetry; Dice averages stay positive-variance.
  std::uniform_real_distribution<double> u(-0.8, 0.8);
  for (size_t i = 0; i < core.num_params(); ++i) dense[i] = u(rng);
  for (size_t i = core.num_params(); i < dense.size(); ++i) dense[i] = 0.5 + std::abs(u(rng));
  std::vector<std::vector<double>> emb(layout->table_dims.size());
  for (size_t t = 0; t < emb.size(); ++t) {
    emb[t].resize(keys * layout->table_dims[t]);
    for (double& v : emb[t]) v = u(rng);
  }
  const int tasks = core.layout().num_tasks();
  std::vector<double> weights(core.layout().task_weight.begin(), core.layout().task_weight.end());

  std::vector<double> grad(dense.size()), pred(size * tasks), loss(tasks);
  std::vector<std::vector<double>> emb_grad(emb.size());
  auto run = [&]() {
    std::vector<const double*> e;
    std::vector<double*> eg;
    for (size_t t = 0; t < emb.size(); ++t) {
      emb_grad[t].assign(emb[t].size(), 0);
      e.push_back(emb[t].data());
      eg.push_back(emb_grad[t].data());
    }
    core.TrainStep(batch, dense, e, absl::MakeSpan(grad), eg, absl::MakeSpan(pred), absl::MakeSpan(loss));
    double l = 0;
    for (int t = 0; t < tasks; ++t) l += weights[t] * loss[t] / size;
    return l;
  };
  run();
  const std::vector<double> analytic_dense(grad.begin(), grad.begin() + core.num_params());
  const std::vector<std::vector<double>> analytic_emb = emb_grad;
  std::vector<double> numeric = NumericGradient(run, absl::MakeSpan(dense).subspan(0, core.num_params()));
  EXPECT_TRUE(GradientsMatch(analytic_dense, numeric, 1e-5, 1e-7));
  EXPECT_GT(MaxAbs(analytic_dense), 1e-3);
  double emb_max = 0;
  for (size_t t = 0; t < emb.size(); ++t) {
    std::vector<double> n = NumericGradient(run, absl::MakeSpan(emb[t]));
    EXPECT_TRUE(GradientsMatch(analytic_emb[t], n, 1e-5, 1e-7)) << "table " << t;
    emb_max = std::max(emb_max, MaxAbs(analytic_emb[t]));
  }
  EXPECT_GT(emb_max, 1e-3);
  for (double p : pred) {
    EXPECT_GT(p, 0);
    EXPECT_LT(p, 1);
  }
}

std::string KindName(const ::testing::TestParamInfo<const char*>& info) {
  static const char* const kNames[] = {"Baseline", "Din", "SimSoft", "SimHard", "Mmoe"};
  return kNames[info.index];
}

INSTANTIATE_TEST_SUITE_P(Kinds, ModelGradientTest,
                         ::testing::Values(kBaseline, kDin, kSimSoft, kSimHard, kMmoe), KindName);

TEST(ModelTest, StatePushIsBatchStatisticMinusAverage) {
  absl::StatusOr<proto::JobConfig> config = proto::ParseJobConfig(Config(kDin), "test");
  ASSERT_TRUE(config.ok());
  absl::StatusOr<std::unique_ptr<Model>> model = Model::Create(*config);
  ASSERT_TRUE(model.ok()) << model.status();
  // Dice in the attention unit (4 + 3 units) and the MLP (5 + 3 units): mean and var each.
  EXPECT_EQ((*model)->num_state(), 2u * (4 + 3 + 5 + 3));
  EXPECT_NEAR((*model)->state_rate(), 0.01f, 1e-7);
  absl::StatusOr<internal::CoreLayout> layout = internal::BuildCoreLayout(*config);
  std::mt19937_64 rng(9);
  Batch batch = RandomBatch(*layout, 8, 5, rng);
  std::vector<float> dense((*model)->dense_size());
  (*model)->InitDense(absl::MakeSpan(dense));
  // Initial averages: mean 0, var 1.
  const size_t p = (*model)->num_params();
  EXPECT_EQ(dense[p], 0.0f);
  EXPECT_EQ(dense[p + 4], 1.0f);
  std::vector<std::vector<float>> emb(4);
  std::vector<const float*> e;
  std::vector<std::vector<float>> eg(4);
  std::vector<float*> egp;
  for (int t = 0; t < 4; ++t) {
    emb[t].assign(5 * layout->table_dims[t], 0.3f);
    for (size_t i = 0; i < emb[t].size(); ++i) emb[t][i] = 0.1f * static_cast<float>(i % 7) - 0.3f;
    eg[t].resize(emb[t].size());
    e.push_back(emb[t].data());
    egp.push_back(eg[t].data());
  }
  std::vector<float> grad(dense.size()), pred(8);
  std::vector<double> loss(1);
  (*model)->TrainStep(batch, dense, e, absl::MakeSpan(grad), egp, absl::MakeSpan(pred), absl::MakeSpan(loss));
  // The variance pushes are (batch var - 1): batch variances are >= 0, so
  // every var entry of the push is >= -1, and some differ from 0.
  double moved = 0;
  for (size_t i = p; i < dense.size(); ++i) moved += std::abs(grad[i]);
  EXPECT_GT(moved, 1e-3);
  for (size_t i = p + 4; i < p + 8; ++i) EXPECT_GE(grad[i], -1.0f);
  // Predict uses the averages and needs no labels.
  std::vector<float> eval(8);
  (*model)->Predict(batch, dense, e, absl::MakeSpan(eval));
  for (float v : eval) EXPECT_TRUE(v > 0 && v < 1);
}

TEST(ModelTest, InitIsDeterministicAndGlorotBounded) {
  absl::StatusOr<proto::JobConfig> config = proto::ParseJobConfig(Config(kMmoe), "test");
  ASSERT_TRUE(config.ok());
  auto a = Model::Create(*config);
  auto b = Model::Create(*config);
  ASSERT_TRUE(a.ok() && b.ok());
  std::vector<float> x((*a)->dense_size()), y((*b)->dense_size());
  (*a)->InitDense(absl::MakeSpan(x));
  (*b)->InitDense(absl::MakeSpan(y));
  EXPECT_EQ(x, y);
  EXPECT_EQ((*a)->tasks(), (std::vector<std::string>{"click", "buy"}));
  // First expert layer: input user 3 + tags 2 + item 4 + cat 2 + the two
  // histories (pooled: no attention here) 4 + 2 + price 1 = 18 wide, 4 out.
  const int in = 18;
  const double limit = std::sqrt(6.0 / (in + 4));
  double max_w = 0;
  for (int i = 0; i < in * 4; ++i) max_w = std::max(max_w, std::abs(static_cast<double>(x[i])));
  EXPECT_LE(max_w, limit);
  EXPECT_GT(max_w, limit / 2);
  for (int i = in * 4; i < in * 4 + 4; ++i) EXPECT_EQ(x[i], 0.0f);      // biases
  for (int i = in * 4 + 4; i < in * 4 + 8; ++i) EXPECT_EQ(x[i], 0.0f);  // Dice alphas
  EXPECT_NE(x[in * 4 + 8], 0.0f);  // the second layer's W
}

TEST(ModelTest, ConfigErrorsNameTheField) {
  struct Case {
    std::string model, expect;
  } cases[] = {
      {"kind: DIN", "model.attention"},
      {"kind: EMBEDDING_MLP attention { query: \"item_id\" keys: \"hist_items\" }", "model.attention"},
      {"kind: DIN attention { query: \"item_id\" keys: \"hist_cats\" }", "model.attention[0].keys[0]"},
      {"kind: DIN attention { query: \"nope\" keys: \"hist_items\" }", "model.attention[0].query[0]"},
      {"kind: DIN attention { query: \"hist_items\" keys: \"hist_items\" }", "must be SPARSE"},
      {"kind: DIN attention { query: \"item_id\" keys: \"hist_items\" search { kind: SOFT } }", "kind SIM"},
      {"kind: SIM attention { query: \"item_id\" keys: \"hist_items\" search { match_query: \"item_cat\" } }",
       "model.attention[0].search.match_query"},
      {"kind: SIM attention { query: \"item_id\" keys: \"hist_items\" search { kind: SOFT time: \"time\" } }",
       "all or none"},
      {"kind: MMOE mmoe { task_weight: 1 }", "model.mmoe.task_weight"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<proto::JobConfig> config = proto::ParseJobConfig(Config(c.model), "test");
    ASSERT_TRUE(config.ok()) << c.model << ": " << config.status();
    absl::StatusOr<std::unique_ptr<Model>> model = Model::Create(*config);
    ASSERT_FALSE(model.ok()) << c.model;
    EXPECT_NE(model.status().message().find(c.expect), std::string::npos) << model.status();
  }
}

TEST(ModelTest, CheckBatchRejectsMisalignedViews) {
  absl::StatusOr<proto::JobConfig> config = proto::ParseJobConfig(Config(kDin), "test");
  ASSERT_TRUE(config.ok());
  auto model = Model::Create(*config);
  ASSERT_TRUE(model.ok());
  absl::StatusOr<internal::CoreLayout> layout = internal::BuildCoreLayout(*config);
  std::mt19937_64 rng(3);
  Batch batch = RandomBatch(*layout, 5, 4, rng);
  ASSERT_TRUE((*model)->CheckBatch(batch).ok());
  Batch bad = batch;
  const int v = layout->plan.attention[0].first_view + 1;
  bad.sparse[v].rows.push_back(0);
  bad.sparse[v].offsets.back() += 1;
  EXPECT_NE((*model)->CheckBatch(bad).message().find("not aligned"), std::string::npos);
  bad = batch;
  bad.sparse[0].rows.assign(bad.sparse[0].rows.size(), 99);
  ASSERT_FALSE(bad.sparse[0].rows.empty());  // the user column has values in this batch
  EXPECT_NE((*model)->CheckBatch(bad).message().find(">= 4 keys"), std::string::npos) << (*model)->CheckBatch(bad);
}

TEST(GapBucketTest, LogTwoOfUnits) {
  EXPECT_EQ(GapBucket(-5, 86400, 16), 0u);
  EXPECT_EQ(GapBucket(0, 86400, 16), 0u);
  EXPECT_EQ(GapBucket(86400, 86400, 16), 1u);       // log2(2)
  EXPECT_EQ(GapBucket(3 * 86400, 86400, 16), 2u);   // log2(4)
  EXPECT_EQ(GapBucket(6 * 86400, 86400, 16), 2u);   // log2(7)
  EXPECT_EQ(GapBucket(int64_t{1} << 40, 1, 16), 15u);  // capped
}

}  // namespace
}  // namespace ember::models
