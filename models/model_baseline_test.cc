// Tests of Model with kind EMBEDDING_MLP (the baseline, default ReLU) that
// model_test.cc does not cover: the input layout over every column kind,
// config errors of the columns, tables and widths, whole-model finite
// differences with ReLU (with and without hidden layers, with and without
// embeddings), float/double agreement, initialisation, batch checks, the
// empty batch, and a small end-to-end training run.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "models/internal/gradient_check.h"
#include "models/internal/model_core.h"
#include "models/metrics.h"
#include "models/model.h"
#include "proto/config.h"

namespace ember::models {
namespace {

using internal::CoreLayout;
using internal::GradientsMatch;
using internal::MaxAbs;
using internal::ModelCore;
using internal::NumericGradient;

proto::JobConfig ParseOrDie(const std::string& text) {
  absl::StatusOr<proto::JobConfig> config = proto::ParseJobConfig(text, "test");
  EXPECT_TRUE(config.ok()) << config.status();
  return *config;
}

// Every column kind, two label columns (the baseline trains on the first),
// an unused table, an IGNORE column, a table shared by three columns, and
// DENSE columns between the sparse ones. Default kind and activation
// (EMBEDDING_MLP, ReLU).
constexpr char kMixedConfig[] = R"pb(
  tables { name: "item" dim: 4 }
  tables { name: "user" dim: 3 }
  tables { name: "unused" dim: 2 }
  data {
    train: "x"
    columns { name: "click" type: LABEL }
    columns { name: "user" type: SPARSE table: "user" }
    columns { name: "price" type: DENSE }
    columns { name: "item" type: SPARSE table: "item" }
    columns { name: "hist" type: MULTI_SPARSE table: "item" pooling: MEAN }
    columns { name: "junk" type: IGNORE }
    columns { name: "seq" type: SEQUENCE table: "item" }
    columns { name: "age" type: DENSE }
    columns { name: "buy" type: LABEL }
  }
  model { hidden: 6 hidden: 5 seed: 11 }
)pb";

// The input layer of kMixedConfig (docs/models.md): the pooled sparse
// columns in config order, user(3) item(4) hist(4) seq(4), then the DENSE
// columns price and age.
constexpr int kInputDim = 17;
constexpr int kPooledOffset[] = {0, 3, 7, 11};
constexpr int kDenseOffset = 15;

// Five samples over kMixedConfig. Item row 0 is used by the item, hist and
// seq columns; row 1 twice in one hist bag; sample 1 has an empty hist bag,
// sample 2 no user and an empty seq bag.
Batch MixedBatch() {
  Batch b;
  b.size = 5;
  b.num_labels = 2;
  b.num_dense = 2;
  b.labels = {1, 0.3f, 0, 0.9f, 1, 0.1f, 0, 0.5f, 1, 0.2f};
  b.dense = {0.5f, -1.0f, 1.5f, 0.25f, -0.75f, 2.0f, 0.1f, -0.3f, -1.2f, 0.8f};
  b.tables.resize(3);
  b.tables[0].keys = {100, 101, 102, 103, 104, 105};
  b.tables[0].server_begin = {0, 6};
  b.tables[1].keys = {7, 8, 9};
  b.tables[1].server_begin = {0, 3};
  b.tables[2].server_begin = {0, 0};
  b.sparse.resize(4);
  b.sparse[0] = {1, 1, {0, 1, 2, 2, 3, 4}, {0, 1, 0, 2}};
  b.sparse[1] = {3, 0, {0, 1, 2, 3, 4, 5}, {0, 1, 0, 2, 3}};
  b.sparse[2] = {4, 0, {0, 3, 3, 5, 6, 8}, {1, 0, 1, 4, 5, 0, 2, 3}};
  b.sparse[3] = {6, 0, {0, 2, 3, 3, 5, 6}, {5, 0, 1, 2, 2, 4}};
  return b;
}

template <typename T>
std::vector<T> RandomVector(size_t n, std::mt19937_64& rng, double lo, double hi) {
  std::uniform_real_distribution<double> u(lo, hi);
  std::vector<T> v(n);
  for (T& x : v) x = static_cast<T>(u(rng));
  return v;
}

CoreLayout LayoutOrDie(const proto::JobConfig& config) {
  absl::StatusOr<CoreLayout> layout = internal::BuildCoreLayout(config);
  EXPECT_TRUE(layout.ok()) << layout.status();
  return *layout;
}

TEST(BaselineLayoutTest, PooledColumnsInConfigOrderThenDenseColumns) {
  const CoreLayout layout = LayoutOrDie(ParseOrDie(kMixedConfig));
  EXPECT_EQ(layout.plan.sparse_column, (std::vector<int>{1, 3, 4, 6}));
  EXPECT_EQ(layout.plan.sparse_table, (std::vector<int>{1, 0, 0, 0}));
  ASSERT_EQ(layout.pooled.size(), 4u);
  for (int k = 0; k < 4; ++k) {
    EXPECT_EQ(layout.pooled[k].sparse, k);
    EXPECT_EQ(layout.pooled[k].offset, kPooledOffset[k]) << k;
  }
  EXPECT_EQ(layout.pooled[0].table, 1);
  EXPECT_EQ(layout.pooled[0].dim, 3);
  EXPECT_EQ(layout.pooled[1].dim, 4);
  EXPECT_EQ(layout.pooled[2].pooling, PoolingMode::kMean);
  EXPECT_EQ(layout.pooled[3].pooling, PoolingMode::kSum);
  EXPECT_EQ(layout.dense_offset, kDenseOffset);
  EXPECT_EQ(layout.num_dense, 2);
  EXPECT_EQ(layout.input_dim, kInputDim);

  absl::StatusOr<std::unique_ptr<Model>> model = Model::Create(ParseOrDie(kMixedConfig));
  ASSERT_TRUE(model.ok()) << model.status();
  // ReLU layers: W and b only, no alphas, no state.
  EXPECT_EQ((*model)->num_params(), 17u * 6 + 6 + 6 * 5 + 5 + 5 * 1 + 1);
  EXPECT_EQ((*model)->num_state(), 0u);
  EXPECT_EQ((*model)->dense_size(), (*model)->num_params());
  // Two LABEL columns, one task: the baseline trains on the first.
  EXPECT_EQ((*model)->tasks(), (std::vector<std::string>{"click"}));
}

// The layout seen through the math: without hidden layers the logit is
// x w + b, so the predictions over a batch pin down where every pooled
// column and dense value sits in x.
TEST(BaselineLayoutTest, InputIsConcatenationSeenThroughTheLogit) {
  proto::JobConfig config = ParseOrDie(kMixedConfig);
  config.mutable_model()->clear_hidden();
  ModelCore<double> core(LayoutOrDie(config));
  ASSERT_EQ(core.num_params(), static_cast<size_t>(kInputDim + 1));
  const Batch batch = MixedBatch();
  std::mt19937_64 rng(17);
  const std::vector<double> e0 = RandomVector<double>(6 * 4, rng, -1, 1);
  const std::vector<double> e1 = RandomVector<double>(3 * 3, rng, -1, 1);
  const std::vector<double> params = RandomVector<double>(kInputDim + 1, rng, -0.5, 0.5);
  std::vector<const double*> emb = {e0.data(), e1.data(), nullptr};
  std::vector<double> pred(batch.size);
  core.Predict(batch, params, emb, absl::MakeSpan(pred));

  // The expected input, built by hand from the batch.
  std::vector<std::vector<double>> x(batch.size, std::vector<double>(kInputDim, 0.0));
  const std::vector<double>* table_of[] = {&e1, &e0, &e0, &e0};
  const int dim_of[] = {3, 4, 4, 4};
  for (int k = 0; k < 4; ++k) {
    const SparseColumnBatch& s = batch.sparse[k];
    for (int i = 0; i < batch.size; ++i) {
      const uint32_t n = s.offsets[i + 1] - s.offsets[i];
      for (uint32_t r = s.offsets[i]; r < s.offsets[i + 1]; ++r) {
        for (int d = 0; d < dim_of[k]; ++d) {
          const double v = (*table_of[k])[s.rows[r] * dim_of[k] + d];
          x[i][kPooledOffset[k] + d] += k == 2 ? v / n : v;  // hist is MEAN-pooled
        }
      }
    }
  }
  for (int i = 0; i < batch.size; ++i) {
    x[i][kDenseOffset] = batch.dense[i * 2];
    x[i][kDenseOffset + 1] = batch.dense[i * 2 + 1];
  }
  for (int i = 0; i < batch.size; ++i) {
    double z = params[kInputDim];
    for (int j = 0; j < kInputDim; ++j) z += x[i][j] * params[j];
    EXPECT_NEAR(pred[i], 1 / (1 + std::exp(-z)), 1e-12) << "sample " << i;
  }
}

TEST(BaselineCreateTest, RejectsInconsistentConfigsNamingTheField) {
  struct Case {
    const char* config;
    const char* field;
  };
  const Case cases[] = {
      {R"pb(tables { name: "a" }
            data {
              columns { name: "y" type: LABEL }
              columns { name: "c" type: SPARSE table: "b" }
            })pb",
       "data.columns[1].table"},
      {R"pb(tables { name: "a" }
            data {
              columns { name: "y" type: LABEL }
              columns { name: "c" type: MULTI_SPARSE }
            })pb",
       "data.columns[1].table"},
      {R"pb(tables { name: "a" dim: 0 }
            data {
              columns { name: "y" type: LABEL }
              columns { name: "c" type: SPARSE table: "a" }
            })pb",
       "tables[0].dim"},
      {R"pb(tables { name: "a" dim: 4097 }
            data {
              columns { name: "y" type: LABEL }
              columns { name: "c" type: SPARSE table: "a" }
            })pb",
       "tables[0].dim"},
      {R"pb(data {
              columns { name: "y" type: LABEL }
              columns { name: "d" type: DENSE }
            }
            model { hidden: 4 hidden: 0 })pb",
       "model.hidden[1]"},
      {R"pb(data { columns { name: "d" type: DENSE } })pb", "data.columns"},
      {R"pb(data {
              columns { name: "y" type: LABEL }
              columns { name: "i" type: IGNORE }
            })pb",
       "data.columns"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<std::unique_ptr<Model>> model = Model::Create(ParseOrDie(c.config));
    ASSERT_FALSE(model.ok()) << c.config;
    EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(model.status().message().find(c.field), std::string::npos) << model.status();
  }
}

// The core in double against central differences of the mean loss, w.r.t.
// every dense parameter and every pulled embedding row. ReLU, the default.
void CheckMixedGradients(const proto::JobConfig& config) {
  const CoreLayout layout = LayoutOrDie(config);
  const Batch batch = MixedBatch();
  ASSERT_TRUE(internal::CheckBatch(layout, batch).ok()) << internal::CheckBatch(layout, batch);
  ModelCore<double> core(layout);
  ASSERT_EQ(core.num_state(), 0u);
  const size_t num_params = core.num_params();

  std::mt19937_64 rng(5);
  std::vector<double> params = RandomVector<double>(num_params, rng, -0.6, 0.6);
  std::vector<std::vector<double>> emb = {
      RandomVector<double>(6 * 4, rng, -1, 1), RandomVector<double>(3 * 3, rng, -1, 1), {}};
  // The unused table has no keys: null buffers, as the worker may pass.
  std::vector<const double*> emb_ptr = {emb[0].data(), emb[1].data(), nullptr};

  // Garbage in the outputs: TrainStep must overwrite, not accumulate.
  std::vector<double> grad(num_params, 1e3);
  std::vector<std::vector<double>> emb_grad = {std::vector<double>(6 * 4, 1e3),
                                               std::vector<double>(3 * 3, 1e3)};
  std::vector<double*> emb_grad_ptr = {emb_grad[0].data(), emb_grad[1].data(), nullptr};
  std::vector<double> predictions(batch.size);
  std::vector<double> task_loss = {1e3};
  core.TrainStep(batch, params, emb_ptr, absl::MakeSpan(grad), emb_grad_ptr,
                 absl::MakeSpan(predictions), absl::MakeSpan(task_loss));

  std::vector<double> scratch_grad(num_params), scratch_e0(6 * 4), scratch_e1(3 * 3), scratch_p(5),
      scratch_loss(1);
  std::vector<double*> scratch_ptr = {scratch_e0.data(), scratch_e1.data(), nullptr};
  auto mean_loss = [&] {
    core.TrainStep(batch, params, emb_ptr, absl::MakeSpan(scratch_grad), scratch_ptr,
                   absl::MakeSpan(scratch_p), absl::MakeSpan(scratch_loss));
    return scratch_loss[0] / batch.size;
  };

  // The loss itself, from the predictions and the FIRST label column.
  double expect = 0;
  for (int i = 0; i < batch.size; ++i) {
    const double y = batch.labels[i * batch.num_labels];
    expect -= y * std::log(predictions[i]) + (1 - y) * std::log(1 - predictions[i]);
  }
  EXPECT_NEAR(task_loss[0], expect, 1e-10);

  const std::vector<double> num_grad = NumericGradient(mean_loss, absl::MakeSpan(params));
  EXPECT_TRUE(GradientsMatch(grad, num_grad));
  EXPECT_GT(MaxAbs(grad), 0.01);
  for (int t = 0; t < 2; ++t) {
    const std::vector<double> num_emb = NumericGradient(mean_loss, absl::MakeSpan(emb[t]));
    EXPECT_TRUE(GradientsMatch(emb_grad[t], num_emb)) << "table " << t;
    EXPECT_GT(MaxAbs(emb_grad[t]), 1e-3) << "table " << t;
  }

  // Every pulled row here is used, so every row has a gradient; a bug that
  // dropped, say, the hist column's contribution would be caught by the
  // comparison above, and so would dropping the 1/n of mean pooling: the
  // tolerance rejects even a 1% error.
  std::vector<double> wrong = emb_grad[0];
  for (double& g : wrong) g *= 1.01;
  EXPECT_FALSE(GradientsMatch(wrong, NumericGradient(mean_loss, absl::MakeSpan(emb[0]))));
}

TEST(BaselineGradientTest, WholeModelMatchesFiniteDifferences) {
  CheckMixedGradients(ParseOrDie(kMixedConfig));
}

TEST(BaselineGradientTest, ModelWithoutHiddenLayersMatchesFiniteDifferences) {
  proto::JobConfig config = ParseOrDie(kMixedConfig);
  config.mutable_model()->clear_hidden();
  CheckMixedGradients(config);
}

TEST(BaselineGradientTest, DenseOnlyModelWithoutHiddenLayers) {
  // Logistic regression on dense columns: no embedding gradient to compute.
  const proto::JobConfig config = ParseOrDie(R"pb(
    tables { name: "t" }
    data {
      columns { name: "y" type: LABEL }
      columns { name: "a" type: DENSE }
      columns { name: "b" type: DENSE }
    })pb");
  const CoreLayout layout = LayoutOrDie(config);
  Batch batch;
  batch.size = 3;
  batch.num_labels = 1;
  batch.num_dense = 2;
  batch.labels = {1, 0, 1};
  batch.dense = {1, 2, -1, 0.5f, 0.3f, -2};
  batch.tables.resize(1);
  ASSERT_TRUE(internal::CheckBatch(layout, batch).ok()) << internal::CheckBatch(layout, batch);
  ModelCore<double> core(layout);
  ASSERT_EQ(core.num_params(), 3u);
  ASSERT_EQ(core.num_state(), 0u);
  std::vector<double> params = {0.3, -0.2, 0.1}, grad(3, 7.0), pred(3), loss(1);
  std::vector<const double*> emb = {nullptr};
  std::vector<double*> emb_grad = {nullptr};
  auto mean_loss = [&] {
    std::vector<double> g(3), p(3), l(1);
    core.TrainStep(batch, params, emb, absl::MakeSpan(g), emb_grad, absl::MakeSpan(p),
                   absl::MakeSpan(l));
    return l[0] / 3;
  };
  core.TrainStep(batch, params, emb, absl::MakeSpan(grad), emb_grad, absl::MakeSpan(pred),
                 absl::MakeSpan(loss));
  EXPECT_TRUE(GradientsMatch(grad, NumericGradient(mean_loss, absl::MakeSpan(params))));
  EXPECT_GT(MaxAbs(grad), 0.01);
  EXPECT_NEAR(pred[0], 1 / (1 + std::exp(-(0.3 * 1 - 0.2 * 2 + 0.1))), 1e-12);
  const double x20 = 0.3f;  // dense values are floats
  EXPECT_NEAR(pred[2], 1 / (1 + std::exp(-(0.3 * x20 - 0.2 * -2 + 0.1))), 1e-12);
}

TEST(BaselineModelTest, FloatModelAgreesWithDoubleCore) {
  const proto::JobConfig config = ParseOrDie(kMixedConfig);
  absl::StatusOr<std::unique_ptr<Model>> model = Model::Create(config);
  ASSERT_TRUE(model.ok()) << model.status();
  Model& m = **model;
  const Batch batch = MixedBatch();
  ASSERT_TRUE(m.CheckBatch(batch).ok()) << m.CheckBatch(batch);

  std::vector<float> dense(m.dense_size());
  m.InitDense(absl::MakeSpan(dense));
  std::mt19937_64 rng(9);
  // Non-zero biases too, so that their gradients are compared meaningfully.
  std::uniform_real_distribution<float> jitter(-0.1f, 0.1f);
  for (float& p : dense) p += jitter(rng);
  std::vector<float> e0 = RandomVector<float>(24, rng, -1, 1),
                     e1 = RandomVector<float>(9, rng, -1, 1);
  std::vector<const float*> emb = {e0.data(), e1.data(), nullptr};
  std::vector<float> grad(m.dense_size()), g0(24), g1(9), pred(5), pred_only(5);
  std::vector<float*> emb_grad = {g0.data(), g1.data(), nullptr};
  std::vector<double> loss(1);
  m.TrainStep(batch, dense, emb, absl::MakeSpan(grad), emb_grad, absl::MakeSpan(pred),
              absl::MakeSpan(loss));
  m.Predict(batch, dense, emb, absl::MakeSpan(pred_only));
  EXPECT_EQ(pred, pred_only);

  ModelCore<double> core(LayoutOrDie(config));
  ASSERT_EQ(core.num_params(), m.num_params());
  std::vector<double> ddense(dense.begin(), dense.end()), de0(e0.begin(), e0.end()),
      de1(e1.begin(), e1.end());
  std::vector<const double*> demb = {de0.data(), de1.data(), nullptr};
  std::vector<double> dgrad(m.dense_size()), dg0(24), dg1(9), dpred(5), dloss(1);
  std::vector<double*> demb_grad = {dg0.data(), dg1.data(), nullptr};
  core.TrainStep(batch, ddense, demb, absl::MakeSpan(dgrad), demb_grad, absl::MakeSpan(dpred),
                 absl::MakeSpan(dloss));
  EXPECT_GT(dloss[0], 0.1);
  EXPECT_NEAR(loss[0], dloss[0], 1e-5);
  EXPECT_GT(MaxAbs(dgrad), 1e-2);
  for (int i = 0; i < 5; ++i) EXPECT_NEAR(pred[i], dpred[i], 1e-6);
  for (size_t i = 0; i < grad.size(); ++i) EXPECT_NEAR(grad[i], dgrad[i], 1e-5) << i;
  for (size_t i = 0; i < g0.size(); ++i) EXPECT_NEAR(g0[i], dg0[i], 1e-5) << i;
  for (size_t i = 0; i < g1.size(); ++i) EXPECT_NEAR(g1[i], dg1[i], 1e-5) << i;
}

TEST(BaselineModelTest, InitDenseIsDeterministicGlorot) {
  proto::JobConfig config = ParseOrDie(kMixedConfig);
  auto a = Model::Create(config);
  auto b = Model::Create(config);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ((*a)->num_state(), 0u);  // ReLU: the dense vector is all parameters
  std::vector<float> pa((*a)->dense_size()), pb((*b)->dense_size(), 5.0f), pa2(pa.size(), -3.0f);
  (*a)->InitDense(absl::MakeSpan(pa));
  (*b)->InitDense(absl::MakeSpan(pb));
  (*a)->InitDense(absl::MakeSpan(pa2));
  EXPECT_EQ(pa, pb);
  EXPECT_EQ(pa, pa2);

  // Per layer: weights within +-sqrt(6 / (in + out)) and spread over it,
  // biases zero. The weights are one mt19937_64 stream from model.seed over
  // every weight matrix in parameter order, mapped to U(-a, a) by our own
  // bits-to-double mapping, so the values are the same on every platform.
  const std::vector<size_t> widths = {17, 6, 5, 1};
  std::mt19937_64 rng(11);
  size_t offset = 0;
  for (size_t l = 0; l + 1 < widths.size(); ++l) {
    const size_t in = widths[l], out = widths[l + 1];
    const double limit = std::sqrt(6.0 / static_cast<double>(in + out));
    float max_abs = 0;
    for (size_t i = 0; i < in * out; ++i) {
      EXPECT_LE(std::abs(pa[offset + i]), limit);
      max_abs = std::max(max_abs, std::abs(pa[offset + i]));
      const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53;
      EXPECT_EQ(pa[offset + i], static_cast<float>((2 * u - 1) * limit)) << "layer " << l << " " << i;
    }
    EXPECT_GT(max_abs, 0.4 * limit) << "layer " << l;
    offset += in * out;
    for (size_t j = 0; j < out; ++j) EXPECT_EQ(pa[offset + j], 0.0f);
    offset += out;
  }
  EXPECT_EQ(offset, pa.size());

  config.mutable_model()->set_seed(12);
  auto c = Model::Create(config);
  ASSERT_TRUE(c.ok());
  std::vector<float> pc(pa.size());
  (*c)->InitDense(absl::MakeSpan(pc));
  EXPECT_NE(pa, pc);
}

TEST(BaselineModelTest, CheckBatchRejectsMalformedBatches) {
  auto model = Model::Create(ParseOrDie(kMixedConfig));
  ASSERT_TRUE(model.ok());
  ASSERT_TRUE((*model)->CheckBatch(MixedBatch()).ok()) << (*model)->CheckBatch(MixedBatch());

  const std::vector<std::function<void(Batch&)>> breakers = {
      [](Batch& b) { b.sparse[2].rows[3] = 6; },         // row beyond the table's keys
      [](Batch& b) { b.sparse[1].offsets.pop_back(); },  // offsets not size + 1
      [](Batch& b) { std::swap(b.sparse[2].offsets[2], b.sparse[2].offsets[3]); },  // decreasing
      [](Batch& b) { b.sparse[0].offsets.back() = 3; },  // does not end at rows.size()
      [](Batch& b) { b.sparse[0].offsets.front() = 1; },  // does not start at 0
      [](Batch& b) { b.sparse[3].table = 1; },           // wrong table
      [](Batch& b) { b.sparse[1].column = 4; },          // wrong column
      [](Batch& b) { b.sparse.pop_back(); },             // missing column
      [](Batch& b) { b.tables.pop_back(); },             // missing table
      [](Batch& b) { b.num_dense = 1; },                 // config has two
      [](Batch& b) { b.dense.pop_back(); },              // size x num_dense
      [](Batch& b) { b.labels.pop_back(); },             // size x num_labels
      [](Batch& b) { b.num_labels = 1; },                // labels no longer size x num_labels
      [](Batch& b) {                                     // fewer label columns than tasks
        b.num_labels = 0;
        b.labels.clear();
      },
      [](Batch& b) { b.size = -1; },
  };
  for (size_t i = 0; i < breakers.size(); ++i) {
    Batch b = MixedBatch();
    breakers[i](b);
    const absl::Status st = (*model)->CheckBatch(b);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << "breaker " << i << ": " << st;
    EXPECT_NE(st.message().find("malformed batch"), std::string::npos) << "breaker " << i << ": " << st;
  }
}

TEST(BaselineModelTest, EmptyBatchGivesZeroLossAndGradient) {
  auto model = Model::Create(ParseOrDie(kMixedConfig));
  ASSERT_TRUE(model.ok());
  Batch b;
  b.num_labels = 2;
  b.num_dense = 2;
  b.tables.resize(3);
  b.sparse = {{1, 1, {0}, {}}, {3, 0, {0}, {}}, {4, 0, {0}, {}}, {6, 0, {0}, {}}};
  ASSERT_TRUE((*model)->CheckBatch(b).ok()) << (*model)->CheckBatch(b);
  std::vector<float> dense((*model)->dense_size(), 0.5f), grad(dense.size(), 9.0f);
  std::vector<const float*> emb = {nullptr, nullptr, nullptr};
  std::vector<float*> emb_grad = {nullptr, nullptr, nullptr};
  std::vector<double> loss = {9.0};
  (*model)->TrainStep(b, dense, emb, absl::MakeSpan(grad), emb_grad, {}, absl::MakeSpan(loss));
  EXPECT_EQ(loss[0], 0.0);
  for (float g : grad) EXPECT_EQ(g, 0.0f);
  (*model)->Predict(b, dense, emb, {});  // nothing to do, and nothing to crash on
}

// A click log where the id decides the label and the tags and the dense
// column are noise: the model must learn the id embeddings.
class BaselineTrainingTest : public ::testing::Test {
 protected:
  static constexpr int kIds = 300;
  static constexpr int kTags = 40;
  static constexpr int kDim = 8;

  struct Sample {
    float label;
    uint32_t id;
    std::vector<uint32_t> tags;
    float x;
  };

  void SetUp() override {
    config_ = ParseOrDie(R"pb(
      tables { name: "id" dim: 8 }
      tables { name: "tag" dim: 8 }
      data {
        columns { name: "y" type: LABEL }
        columns { name: "id" type: SPARSE table: "id" }
        columns { name: "tags" type: MULTI_SPARSE table: "tag" pooling: MEAN }
        columns { name: "x" type: DENSE }
      }
      model { kind: EMBEDDING_MLP hidden: 16 hidden: 8 seed: 3 })pb");
    std::bernoulli_distribution coin(0.5);
    for (int i = 0; i < kIds; ++i) positive_.push_back(coin(rng_));
    // Embedding tables held by the test, as the servers would.
    std::uniform_real_distribution<float> u(-0.05f, 0.05f);
    for (int t = 0; t < 2; ++t) {
      store_[t].resize((t == 0 ? kIds : kTags) * kDim);
      for (float& v : store_[t]) v = u(rng_);
    }
  }

  Sample Draw() {
    Sample s;
    s.id = std::uniform_int_distribution<uint32_t>(0, kIds - 1)(rng_);
    s.label = positive_[s.id] ? 1.0f : 0.0f;
    const int n = std::uniform_int_distribution<int>(0, 3)(rng_);  // 0: empty bag
    std::uniform_int_distribution<uint32_t> tag(0, kTags - 1);
    for (int k = 0; k < n; ++k) s.tags.push_back(tag(rng_));
    s.x = std::normal_distribution<float>(0, 1)(rng_);
    return s;
  }

  // Builds the batch the way the worker does: distinct keys per table in
  // first-seen order, rows pointing into them, and the pulled rows gathered
  // into one contiguous buffer per table.
  Batch Build(const std::vector<Sample>& samples) {
    Batch b;
    b.size = static_cast<int>(samples.size());
    b.num_labels = 1;
    b.num_dense = 1;
    b.tables.resize(2);
    b.sparse = {{1, 0, {0}, {}}, {2, 1, {0}, {}}};
    std::unordered_map<uint32_t, uint32_t> index[2];
    auto row_of = [&](int t, uint32_t key) {
      auto [it, inserted] = index[t].emplace(key, static_cast<uint32_t>(b.tables[t].keys.size()));
      if (inserted) b.tables[t].keys.push_back(key);
      return it->second;
    };
    for (const Sample& s : samples) {
      b.labels.push_back(s.label);
      b.dense.push_back(s.x);
      b.sparse[0].rows.push_back(row_of(0, s.id));
      b.sparse[0].offsets.push_back(static_cast<uint32_t>(b.sparse[0].rows.size()));
      for (uint32_t tag : s.tags) b.sparse[1].rows.push_back(row_of(1, tag));
      b.sparse[1].offsets.push_back(static_cast<uint32_t>(b.sparse[1].rows.size()));
    }
    for (int t = 0; t < 2; ++t) {
      b.tables[t].server_begin = {0, static_cast<uint32_t>(b.tables[t].keys.size())};
      pulled_[t].clear();
      for (uint64_t key : b.tables[t].keys) {
        pulled_[t].insert(pulled_[t].end(), store_[t].begin() + key * kDim,
                          store_[t].begin() + (key + 1) * kDim);
      }
    }
    return b;
  }

  proto::JobConfig config_;
  std::mt19937_64 rng_{2024};
  std::vector<bool> positive_;
  std::vector<float> store_[2];
  std::vector<float> pulled_[2];
};

TEST_F(BaselineTrainingTest, SgdLearnsSeparableData) {
  auto created = Model::Create(config_);
  ASSERT_TRUE(created.ok()) << created.status();
  Model& model = **created;
  ASSERT_EQ(model.num_state(), 0u);
  std::vector<float> dense(model.dense_size()), grad(model.dense_size());
  model.InitDense(absl::MakeSpan(dense));

  // Plain SGD. Row gradients are of the MEAN loss, so a row seen once in a
  // batch gets 1/B of its sample's gradient: the embedding step is larger,
  // as an adaptive optimizer would make it.
  const int kBatch = 64, kSteps = 600;
  const float lr = 0.2f, emb_lr = 0.2f * kBatch / 4;
  std::vector<float> emb_grad[2], predictions(kBatch);
  std::vector<double> task_loss(1);
  double first_loss = 0, last_loss = 0;
  for (int step = 0; step < kSteps; ++step) {
    std::vector<Sample> samples;
    for (int i = 0; i < kBatch; ++i) samples.push_back(Draw());
    const Batch batch = Build(samples);
    ASSERT_TRUE(model.CheckBatch(batch).ok());
    for (int t = 0; t < 2; ++t) emb_grad[t].resize(pulled_[t].size());
    const float* emb[2] = {pulled_[0].data(), pulled_[1].data()};
    float* emb_grad_ptr[2] = {emb_grad[0].data(), emb_grad[1].data()};
    model.TrainStep(batch, dense, emb, absl::MakeSpan(grad), emb_grad_ptr,
                    absl::MakeSpan(predictions), absl::MakeSpan(task_loss));
    const double loss = task_loss[0] / kBatch;
    ASSERT_TRUE(std::isfinite(loss));
    if (step < 20) first_loss += loss / 20;
    if (step >= kSteps - 20) last_loss += loss / 20;
    for (size_t i = 0; i < dense.size(); ++i) dense[i] -= lr * grad[i];
    for (int t = 0; t < 2; ++t) {
      for (size_t r = 0; r < batch.tables[t].keys.size(); ++r) {
        float* row = store_[t].data() + batch.tables[t].keys[r] * kDim;
        for (int d = 0; d < kDim; ++d) row[d] -= emb_lr * emb_grad[t][r * kDim + d];
      }
    }
  }
  EXPECT_LT(last_loss, 0.5 * first_loss) << "first " << first_loss << " last " << last_loss;

  // Held-out samples (fresh tags and dense values), predicted in batches.
  std::vector<float> scores, labels;
  for (int k = 0; k < 8; ++k) {
    std::vector<Sample> samples;
    for (int i = 0; i < 128; ++i) samples.push_back(Draw());
    const Batch batch = Build(samples);
    const float* emb[2] = {pulled_[0].data(), pulled_[1].data()};
    std::vector<float> p(batch.size);
    model.Predict(batch, dense, emb, absl::MakeSpan(p));
    scores.insert(scores.end(), p.begin(), p.end());
    labels.insert(labels.end(), batch.labels.begin(), batch.labels.end());
  }
  const double auc = ExactAuc(scores, labels);
  std::printf("loss %.4f -> %.4f, held-out AUC %.4f\n", first_loss, last_loss, auc);
  EXPECT_GT(auc, 0.9) << "loss " << first_loss << " -> " << last_loss;
  EXPECT_LT(LogLoss(scores, labels), 0.4);
}

}  // namespace
}  // namespace ember::models
