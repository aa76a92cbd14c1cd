// ember's models: the sum-pooling Embedding+MLP baseline, DIN, SIM and MMoE,
// as defined in docs/models.md, behind one interface. The worker owns every
// buffer (the dense vector and the embedding rows pulled from the servers,
// their gradients); a model only computes on them.
#ifndef EMBER_MODELS_MODEL_H_
#define EMBER_MODELS_MODEL_H_

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "models/batch.h"
#include "models/plan.h"
#include "proto/config.pb.h"

namespace ember::models {

namespace internal {
template <typename T>
class ModelCore;
}  // namespace internal

// The dense vector a model reads is its trainable parameters (num_params
// floats) followed by its non-gradient state (num_state floats: Dice's moving
// averages); the servers hold and update both.
//
// Thread safety: the const methods may be called concurrently; TrainStep and
// Predict reuse the instance's scratch buffers (a steady stream of batches
// allocates nothing), so use one instance per thread.
class Model {
 public:
  // Builds the model named by config.model().kind from the config's columns,
  // tables and model block. Returns InvalidArgument naming the config field
  // if they do not fit together. Keeps no reference to `config`.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<Model>> Create(
      const proto::JobConfig& config);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  size_t num_params() const;
  size_t num_state() const;
  size_t dense_size() const { return num_params() + num_state(); }
  // What the servers do with a pushed state entry g: avg += state_rate * g,
  // state_rate = 1 - model.dice_momentum.
  float state_rate() const;
  // One task per LABEL column, named after it, in config order.
  const std::vector<std::string>& tasks() const;
  const InputPlan& plan() const;

  // Fills dense (dense_size floats): Glorot-uniform weights, zero biases,
  // PReLU alphas 0.25, Dice alphas 0, Dice averages mean 0 / var 1; the same
  // values on every node and platform for a given model.seed.
  void InitDense(absl::Span<float> dense) const;

  // Checks that `batch` has the layout of plan() (see models/plan.h): sparse
  // entries with matching column/table, CSR offsets of size + 1
  // non-decreasing entries from 0 to rows.size(), rows below the table's key
  // count, a block's views with equal offsets, labels and dense of the right
  // size. O(rows). TrainStep and Predict only DCHECK; call this where a batch
  // comes from an untrusted or new path.
  [[nodiscard]] absl::Status CheckBatch(const Batch& batch) const;

  // Forward + backward over the batch.
  // dense: dense_size floats as pulled. emb[t]: batch.tables[t].keys.size() x
  //   dim(t) floats, the pulled rows of table t (nullptr if it has no keys).
  // dense_grad (dense_size floats), overwritten: the parameters' part with
  //   d(loss)/d(param) of the weighted multi-task mean loss; the state part
  //   with (batch statistic - pulled average), which the servers fold in.
  // emb_grad[t] (shape of emb[t]), overwritten: d(loss)/d(row), summed over
  //   every use of the row.
  // predictions (batch.size x num tasks, row-major): sigmoid outputs.
  // task_loss (num tasks): the SUM over samples of each task's loss.
  // An empty batch gives zero gradients. No buffer may alias another.
  void TrainStep(const Batch& batch, absl::Span<const float> dense,
                 absl::Span<const float* const> emb, absl::Span<float> dense_grad,
                 absl::Span<float* const> emb_grad, absl::Span<float> predictions,
                 absl::Span<double> task_loss);

  // Forward only (Dice uses the moving averages): predictions as above.
  void Predict(const Batch& batch, absl::Span<const float> dense,
               absl::Span<const float* const> emb, absl::Span<float> predictions);

 private:
  explicit Model(std::unique_ptr<internal::ModelCore<float>> core);
  std::unique_ptr<internal::ModelCore<float>> core_;
};

}  // namespace ember::models

#endif  // EMBER_MODELS_MODEL_H_
