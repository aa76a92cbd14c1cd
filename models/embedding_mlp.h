// The Embedding+MLP click-through-rate model: each sparse column's embedding
// rows are sum- or mean-pooled, concatenated with the dense columns, and fed
// through a ReLU MLP to one logit. The worker owns all buffers (dense
// parameters and embedding rows pulled from the servers, their gradients);
// the model only computes on them.
#ifndef EMBER_MODELS_EMBEDDING_MLP_H_
#define EMBER_MODELS_EMBEDDING_MLP_H_

#include <cstddef>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "models/batch.h"
#include "models/internal/embedding_mlp_core.h"
#include "proto/config.pb.h"

namespace ember::models {

// Dense parameter layout (what the servers store, flat): for each hidden
// layer in order and then the output layer, W (in x out floats, row-major)
// followed by b (out floats). The input of the first layer is the
// concatenation, in config column order, of each sparse column's pooled
// embedding (its table's dim floats) and each dense column's value.
//
// Thread safety: num_params, InitParams and CheckBatch are const and may be
// called concurrently; TrainStep and Predict reuse the instance's scratch
// buffers, so use one instance per thread (instances are independent).
class EmbeddingMlp {
 public:
  // Builds the model from config.data().columns (in config order: each
  // SPARSE/MULTI_SPARSE/SEQUENCE column contributes its table's dim floats,
  // pooled with ColumnConfig.pooling; each DENSE column one float) and
  // config.model().hidden() (ReLU layers), then one output unit (logit).
  // Returns InvalidArgument naming the field if something is inconsistent
  // (unknown table, dim or hidden width out of range, no LABEL column, no
  // feature column). Does not keep a reference to `config`.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<EmbeddingMlp>> Create(
      const proto::JobConfig& config);

  EmbeddingMlp(const EmbeddingMlp&) = delete;
  EmbeddingMlp& operator=(const EmbeddingMlp&) = delete;

  // Dense float count (the length of params and grad).
  size_t num_params() const;

  // Glorot-uniform weights (U(-a, a), a = sqrt(6 / (fan_in + fan_out))), zero
  // biases, deterministic from config.model().seed(): the same seed gives the
  // same vector on every node and platform (mt19937_64 and our own
  // bits-to-float mapping, no std distributions). params must hold
  // num_params() floats.
  void InitParams(absl::Span<float> params) const;

  // Checks that `batch` has the shape this model expects: one sparse entry
  // per sparse column in config order with matching column/table, CSR offsets
  // of size+1 non-decreasing entries from 0 to rows.size(), row indices below
  // the table's key count, num_labels and num_dense matching the config's
  // LABEL and DENSE columns, labels and dense of size x num_labels /
  // num_dense floats, one TableBatch per table. O(total rows).
  // TrainStep and Predict assume a batch that passes (they only DCHECK); call
  // this where a batch may come from an untrusted or new code path.
  [[nodiscard]] absl::Status CheckBatch(const Batch& batch) const;

  // Forward + backward of the mean binary cross-entropy over the batch on the
  // FIRST label column (batch.labels[i * batch.num_labels]).
  // emb[t]: batch.tables[t].keys.size() x dim(t) floats row-major, the pulled
  //   rows of table t (may be nullptr if the table has no keys in the batch).
  // grad (num_params floats): overwritten with d(mean loss)/d params.
  // emb_grad[t] (same shape as emb[t]): overwritten with d(mean loss)/d row,
  //   summed over every use of the row in the batch.
  // predictions (batch.size floats): sigmoid outputs.
  // Returns the SUM of per-sample losses. Not thread-safe (scratch buffers
  // are reused between calls; one instance per thread).
  // An empty batch returns 0 with zero gradients. Buffers are borrowed for the
  // call only; none may alias another.
  double TrainStep(const Batch& batch, absl::Span<const float> params,
                   absl::Span<const float* const> emb, absl::Span<float> grad,
                   absl::Span<float* const> emb_grad, absl::Span<float> predictions);

  // Forward only: predictions (batch.size floats) = sigmoid outputs. Labels
  // are not read. Same buffer rules and thread safety as TrainStep.
  void Predict(const Batch& batch, absl::Span<const float> params,
               absl::Span<const float* const> emb, absl::Span<float> predictions);

 private:
  explicit EmbeddingMlp(internal::ModelLayout layout);

  internal::EmbeddingMlpCore<float> core_;
};

}  // namespace ember::models

#endif  // EMBER_MODELS_EMBEDDING_MLP_H_
