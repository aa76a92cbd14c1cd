// Checks that a steady stream of TrainStep/Predict calls does no heap
// allocation at all: neither our scratch buffers nor Eigen's GEMM packing
// (see internal::TiledProduct in layers.h). Allocations are counted by
// interposing malloc, which every other allocator path (operator new, Eigen's
// aligned_malloc) ends in on glibc. Its own binary so that no other test runs
// under the interposer.
#include <atomic>
#include <cstddef>
#include <random>
#include <string>
#include <vector>

#include "Eigen/Core"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "models/embedding_mlp.h"
#include "proto/config.pb.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
    __has_feature(memory_sanitizer)
#define EMBER_SANITIZER_MALLOC 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define EMBER_SANITIZER_MALLOC 1
#endif
#if defined(__GLIBC__) && !defined(EMBER_SANITIZER_MALLOC)
#define EMBER_COUNT_MALLOC 1
#endif

namespace {
std::atomic<long> g_mallocs{0};
}  // namespace

#ifdef EMBER_COUNT_MALLOC
extern "C" void* __libc_malloc(size_t size);
extern "C" void* malloc(size_t size) {
  g_mallocs.fetch_add(1, std::memory_order_relaxed);
  return __libc_malloc(size);
}
#endif

namespace ember::models {
namespace {

// The production shape the performance target names: ten sparse columns of
// dim 8 and 16 (some multi-valued with MEAN pooling), two dense columns, MLP
// (128, 64), batch 512.
class AllocationTest : public ::testing::Test {
 protected:
  void SetUp() override {
#ifndef EMBER_COUNT_MALLOC
    GTEST_SKIP() << "malloc cannot be interposed in this build (sanitizer or non-glibc)";
#endif
    proto::JobConfig config;
    proto::TableConfig* a = config.add_tables();
    a->set_name("a");
    a->set_dim(16);
    proto::TableConfig* b = config.add_tables();
    b->set_name("b");
    b->set_dim(8);
    proto::ColumnConfig* label = config.mutable_data()->add_columns();
    label->set_name("y");
    label->set_type(proto::ColumnConfig::LABEL);
    for (int c = 0; c < 10; ++c) {
      proto::ColumnConfig* col = config.mutable_data()->add_columns();
      col->set_name(absl::StrCat("c", c));
      col->set_type(c % 3 == 2 ? proto::ColumnConfig::MULTI_SPARSE : proto::ColumnConfig::SPARSE);
      col->set_table(c % 2 ? "a" : "b");
      col->set_pooling(proto::ColumnConfig::MEAN);
    }
    for (const char* name : {"d0", "d1"}) {
      proto::ColumnConfig* col = config.mutable_data()->add_columns();
      col->set_name(name);
      col->set_type(proto::ColumnConfig::DENSE);
    }
    config.mutable_model()->add_hidden(128);
    config.mutable_model()->add_hidden(64);
    absl::StatusOr<std::unique_ptr<EmbeddingMlp>> model = EmbeddingMlp::Create(config);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = *std::move(model);
    params_.resize(model_->num_params());
    grad_.resize(model_->num_params());
    model_->InitParams(absl::MakeSpan(params_));
    for (int t = 0; t < 2; ++t) {
      emb_[t].assign(kKeys * (t == 0 ? 16 : 8), 0.01f * (t + 1));
      emb_grad_[t].resize(emb_[t].size());
    }
  }

  Batch MakeBatch(int size) {
    std::mt19937 rng(size);
    Batch b;
    b.size = size;
    b.num_labels = 1;
    b.num_dense = 2;
    for (int i = 0; i < size; ++i) {
      b.labels.push_back(static_cast<float>(rng() % 2));
      b.dense.push_back(0.5f);
      b.dense.push_back(-0.25f);
    }
    b.tables.resize(2);
    for (auto& t : b.tables) t.keys.resize(kKeys);
    for (int c = 0; c < 10; ++c) {
      SparseColumnBatch s;
      s.column = c + 1;
      s.table = c % 2 ? 0 : 1;
      s.offsets.push_back(0);
      for (int i = 0; i < size; ++i) {
        const int n = c % 3 == 2 ? static_cast<int>(rng() % 6) : 1;
        for (int k = 0; k < n; ++k) s.rows.push_back(rng() % kKeys);
        s.offsets.push_back(static_cast<uint32_t>(s.rows.size()));
      }
      b.sparse.push_back(std::move(s));
    }
    return b;
  }

  double Train(const Batch& b) {
    const float* emb[2] = {emb_[0].data(), emb_[1].data()};
    float* emb_grad[2] = {emb_grad_[0].data(), emb_grad_[1].data()};
    return model_->TrainStep(b, params_, emb, absl::MakeSpan(grad_), emb_grad,
                             absl::MakeSpan(predictions_.data(), b.size));
  }
  void Predict(const Batch& b) {
    const float* emb[2] = {emb_[0].data(), emb_[1].data()};
    model_->Predict(b, params_, emb, absl::MakeSpan(predictions_.data(), b.size));
  }

  static constexpr int kKeys = 2000;
  std::unique_ptr<EmbeddingMlp> model_;
  std::vector<float> params_, grad_, emb_[2], emb_grad_[2];
  std::vector<float> predictions_ = std::vector<float>(512);
};

// Without this, a zero count could mean the interposer is not in effect.
TEST_F(AllocationTest, CounterSeesAllocations) {
  const long before = g_mallocs.load();
  auto v = std::make_unique<std::vector<float>>(1000);
  Eigen::MatrixXf m(300, 300);
  m.setZero();
  EXPECT_GE(g_mallocs.load() - before, 3) << v->size() << m.sum();
}

TEST_F(AllocationTest, SteadyStateTrainAndPredictDoNotAllocate) {
  const Batch full = MakeBatch(512);
  const Batch small = MakeBatch(100);  // a chunk's last, shorter batch
  ASSERT_TRUE(model_->CheckBatch(full).ok());
  ASSERT_TRUE(model_->CheckBatch(small).ok());
  Train(full);  // sizes the scratch buffers

  const long before = g_mallocs.load();
  double loss = 0;
  for (int i = 0; i < 3; ++i) {
    loss += Train(full);
    Predict(full);
    loss += Train(small);
    Predict(small);
  }
  EXPECT_EQ(g_mallocs.load() - before, 0) << "loss " << loss;
}

}  // namespace
}  // namespace ember::models
