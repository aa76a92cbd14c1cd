// The scalar-templated core of EmbeddingMlp: the feature layout derived from
// the job config, and forward/backward over a Batch. Internal to models/:
// EmbeddingMlp wraps the float instantiation, and the tests run the double
// one against finite differences.
#ifndef EMBER_MODELS_INTERNAL_EMBEDDING_MLP_CORE_H_
#define EMBER_MODELS_INTERNAL_EMBEDDING_MLP_CORE_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "Eigen/Core"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "glog/logging.h"
#include "models/batch.h"
#include "models/layers.h"
#include "proto/config.pb.h"

namespace ember::models::internal {

// One SPARSE/MULTI_SPARSE/SEQUENCE column as the model sees it.
struct SparseFeature {
  int column = 0;  // index in DataConfig.columns
  int table = 0;   // index in JobConfig.tables
  Eigen::Index dim = 0;
  PoolingMode pooling = PoolingMode::kSum;
  Eigen::Index input_offset = 0;  // first column of its slice of the input
};

// Everything the model needs from the config, resolved once.
struct ModelLayout {
  // In config order; entry k pairs with Batch::sparse[k].
  std::vector<SparseFeature> sparse;
  // Input column of the j-th DENSE column (Batch::dense[i * num_dense + j]).
  std::vector<Eigen::Index> dense_offsets;
  std::vector<int> dense_columns;        // their indices in DataConfig.columns
  std::vector<Eigen::Index> table_dims;  // per JobConfig.tables entry
  int num_labels = 0;
  // Layer widths: input_dim, hidden..., 1 (the logit).
  std::vector<Eigen::Index> widths;
  size_t num_params = 0;
  uint64_t seed = 0;

  Eigen::Index input_dim() const { return widths.front(); }
};

// Resolves `config` into a layout. InvalidArgument naming the config field on
// an unknown table, a dim or hidden width out of range, or a config without a
// LABEL or feature column.
[[nodiscard]] absl::StatusOr<ModelLayout> BuildLayout(const proto::JobConfig& config);

// Checks that `batch` has the shape `layout` expects (sparse columns, CSR
// offsets and row indices, label and dense matrices, table count). O(rows).
// InvalidArgument naming the first inconsistency.
[[nodiscard]] absl::Status CheckBatch(const ModelLayout& layout, const Batch& batch);

// Glorot-uniform weights, zero biases; see EmbeddingMlp::InitParams.
void InitGlorot(const ModelLayout& layout, absl::Span<float> params);

// Forward and backward of the Embedding+MLP over one batch. Parameter layout:
// the DenseLayer slices (W then b) of hidden layer 1, 2, ..., then the output
// layer, back to back from offset 0.
//
// Not thread-safe: the scratch buffers are members, sized on first use and
// reused, so a steady stream of batches allocates nothing.
template <typename T>
class EmbeddingMlpCore {
 public:
  explicit EmbeddingMlpCore(ModelLayout layout) : layout_(std::move(layout)) {
    size_t offset = 0;
    for (size_t l = 0; l + 1 < layout_.widths.size(); ++l) {
      layers_.emplace_back(layout_.widths[l], layout_.widths[l + 1], offset);
      offset += layers_.back().num_params();
    }
    DCHECK_EQ(offset, layout_.num_params);
    acts_.resize(layers_.size());  // input + every hidden layer's output
  }
  EmbeddingMlpCore(const EmbeddingMlpCore&) = delete;
  EmbeddingMlpCore& operator=(const EmbeddingMlpCore&) = delete;

  const ModelLayout& layout() const { return layout_; }

  // See EmbeddingMlp::TrainStep; the batch must pass CheckBatch.
  double TrainStep(const Batch& batch, absl::Span<const T> params, absl::Span<const T* const> emb,
                   absl::Span<T> grad, absl::Span<T* const> emb_grad, absl::Span<T> predictions) {
    DCHECK_EQ(grad.size(), layout_.num_params);
    DCHECK_EQ(emb_grad.size(), layout_.table_dims.size());
    DCHECK_GE(batch.num_labels, 1);
    // The gradient contract is "overwritten" even for tables no column reads.
    for (size_t t = 0; t < emb_grad.size(); ++t) {
      const size_t n = batch.tables[t].keys.size() * static_cast<size_t>(layout_.table_dims[t]);
      if (n == 0) continue;
      DCHECK(emb_grad[t] != nullptr) << "table " << t;
      std::fill_n(emb_grad[t], n, T(0));
    }
    const Eigen::Index b = batch.size;
    if (b == 0) {
      std::fill(grad.begin(), grad.end(), T(0));
      return 0;
    }
    Forward(batch, params, emb);
    WritePredictions(b, predictions);

    T* labels = Grow(labels_, b);
    for (Eigen::Index i = 0; i < b; ++i) {
      labels[i] = static_cast<T>(batch.labels[i * batch.num_labels]);
    }
    const Eigen::Index max_width = MaxWidth();
    T* delta[2] = {Grow(delta_[0], b * max_width), Grow(delta_[1], b * max_width)};
    const double loss = BceWithLogits<T>(Eigen::Map<const ColVector<T>>(logits_.data(), b),
                                         Eigen::Map<const ColVector<T>>(labels, b),
                                         Eigen::Map<ColVector<T>>(delta[0], b));

    // Walk the layers back. delta[cur] holds d(mean loss)/d(output of layer
    // l) before the activation; the input gradient goes to the other buffer.
    int cur = 0;
    const bool need_input_grad = !layout_.sparse.empty();
    for (size_t l = layers_.size(); l-- > 0;) {
      const DenseLayer<T>& layer = layers_[l];
      Eigen::Map<const RowMatrix<T>> x(acts_[l].data(), b, layer.in_dim());
      Eigen::Map<const RowMatrix<T>> dy(delta[cur], b, layer.out_dim());
      layer.ParamGradient(x, dy, grad);
      if (l == 0 && !need_input_grad) break;
      Eigen::Map<RowMatrix<T>> dx(delta[1 - cur], b, layer.in_dim());
      layer.InputGradient(params, dy, dx);
      // Hidden activations are post-ReLU, which is all ReluBackward needs.
      if (l > 0) ReluBackward<T>(x, dx, dx);
      cur = 1 - cur;
    }
    if (!need_input_grad) return loss;

    // delta[cur] is now d(mean loss)/d(input): scatter each feature's slice
    // into its table's row gradients (dense-column gradients are dropped).
    Eigen::Map<const RowMatrix<T>> dinput(delta[cur], b, layout_.input_dim());
    for (size_t k = 0; k < layout_.sparse.size(); ++k) {
      const SparseFeature& f = layout_.sparse[k];
      const SparseColumnBatch& s = batch.sparse[k];
      if (s.rows.empty()) continue;  // the table may have no buffer at all
      Eigen::Map<RowMatrix<T>> table_grad(
          emb_grad[f.table], static_cast<Eigen::Index>(batch.tables[f.table].keys.size()), f.dim);
      PoolBackward<T>(f.pooling, s.offsets, s.rows, dinput.middleCols(f.input_offset, f.dim),
                      table_grad);
    }
    return loss;
  }

  // See EmbeddingMlp::Predict.
  void Predict(const Batch& batch, absl::Span<const T> params, absl::Span<const T* const> emb,
               absl::Span<T> predictions) {
    if (batch.size == 0) return;
    Forward(batch, params, emb);
    WritePredictions(batch.size, predictions);
  }

 private:
  // Grows `v` to at least n elements (never shrinks, so capacity settles at
  // the largest batch seen) and returns its data.
  static T* Grow(std::vector<T>& v, Eigen::Index n) {
    if (v.size() < static_cast<size_t>(n)) v.resize(static_cast<size_t>(n));
    return v.data();
  }

  Eigen::Index MaxWidth() const {
    Eigen::Index w = 0;
    for (Eigen::Index x : layout_.widths) w = std::max(w, x);
    return w;
  }

  // Fills acts_ (the input and each hidden layer's post-ReLU output) and
  // logits_ for batch.size > 0.
  void Forward(const Batch& batch, absl::Span<const T> params, absl::Span<const T* const> emb) {
    DCHECK_EQ(params.size(), layout_.num_params);
    DCHECK_EQ(emb.size(), layout_.table_dims.size());
    const Eigen::Index b = batch.size;
    for (size_t l = 0; l < layers_.size(); ++l) Grow(acts_[l], b * layers_[l].in_dim());
    Grow(logits_, b);

    // Pool each sparse column straight from the pulled rows into its slice of
    // the concatenated input: every embedding value is read exactly once.
    Eigen::Map<RowMatrix<T>> input(acts_[0].data(), b, layout_.input_dim());
    for (size_t k = 0; k < layout_.sparse.size(); ++k) {
      const SparseFeature& f = layout_.sparse[k];
      const SparseColumnBatch& s = batch.sparse[k];
      const Eigen::Index num_rows = static_cast<Eigen::Index>(batch.tables[f.table].keys.size());
      DCHECK(num_rows == 0 || emb[f.table] != nullptr) << "table " << f.table;
      Eigen::Map<const RowMatrix<T>> table(emb[f.table], num_rows, f.dim);
      PoolForward<T>(f.pooling, s.offsets, s.rows, table, input.middleCols(f.input_offset, f.dim));
    }
    const Eigen::Index num_dense = batch.num_dense;
    for (size_t j = 0; j < layout_.dense_offsets.size(); ++j) {
      Eigen::Map<const Eigen::VectorXf, 0, Eigen::InnerStride<>> column(
          batch.dense.data() + j, b, Eigen::InnerStride<>(num_dense));
      input.col(layout_.dense_offsets[j]) = column.template cast<T>();
    }

    for (size_t l = 0; l + 1 < layers_.size(); ++l) {
      Eigen::Map<const RowMatrix<T>> x(acts_[l].data(), b, layers_[l].in_dim());
      Eigen::Map<RowMatrix<T>> y(acts_[l + 1].data(), b, layers_[l].out_dim());
      layers_[l].Forward(params, x, y);
      ReluForward<T>(y, y);
    }
    Eigen::Map<const RowMatrix<T>> x(acts_.back().data(), b, layers_.back().in_dim());
    layers_.back().Forward(params, x, Eigen::Map<RowMatrix<T>>(logits_.data(), b, 1));
  }

  void WritePredictions(Eigen::Index b, absl::Span<T> predictions) const {
    DCHECK_GE(predictions.size(), static_cast<size_t>(b));
    Eigen::Map<const RowMatrix<T>> z(logits_.data(), b, 1);
    SigmoidForward<T>(z, Eigen::Map<RowMatrix<T>>(predictions.data(), b, 1));
  }

  const ModelLayout layout_;
  std::vector<DenseLayer<T>> layers_;  // hidden..., output
  // acts_[l] (batch x widths[l]): the input of layer l.
  std::vector<std::vector<T>> acts_;
  std::vector<T> logits_;
  std::vector<T> labels_;
  std::vector<T> delta_[2];  // ping-pong gradient buffers, batch x max width
};

}  // namespace ember::models::internal

#endif  // EMBER_MODELS_INTERNAL_EMBEDDING_MLP_CORE_H_
