// Building blocks of DIN, SIM and MMoE on top of layers.h: activations with
// parameters (PReLU, Dice), an MLP that composes dense layers and
// activations, DIN's activation unit over packed sequences, attention
// pooling, softmax gates with the expert mixture, and the weighted
// multi-task loss. Formulas: docs/models.md.
//
// Conventions (as in layers.h):
// - Batches are row-major matrices, one sample (or one sequence item) per row.
// - Parameters live in the caller's flat vector `params`; each block knows
//   its offset and writes its own slice of `grad` (same layout), leaving the
//   rest untouched. Non-gradient state (Dice's moving averages) lives in a
//   separate flat vector `state`, each block at its own state offset; the
//   batch statistics a training forward pass measured are written to `stats`
//   with the same layout as `state`.
// - Packed sequences: the items of all samples are stacked, R rows in all;
//   sample i owns rows [segments[i], segments[i+1]). segments has B + 1
//   non-decreasing entries from 0 to R. This replaces padding and masks: no
//   work is spent on absent items.
// - Scratch: each block keeps caller-owned scratch (its Cache struct), sized
//   on first use and reused, so a steady stream of batches allocates nothing.
//   A block object itself is immutable after construction and may be shared;
//   a Cache belongs to one thread.
// - Templated on the scalar: float in production, double in the
//   finite-difference tests.
#ifndef EMBER_MODELS_NN_H_
#define EMBER_MODELS_NN_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "Eigen/Core"
#include "absl/types/span.h"
#include "glog/logging.h"
#include "models/layers.h"

namespace ember::models {

enum class Act { kRelu, kSigmoid, kPrelu, kDice };

namespace internal {

// A grow-only buffer handing out row-major views of any shape. It grows (with
// 1/8 headroom, as batch sizes fluctuate) only when a view needs more room;
// growing discards the contents and invalidates earlier views.
template <typename T>
class Scratch {
 public:
  Eigen::Map<RowMatrix<T>> View(Eigen::Index rows, Eigen::Index cols) {
    const Eigen::Index n = rows * cols;
    if (buffer_.size() < n) buffer_.resize(n + n / 8);
    return Eigen::Map<RowMatrix<T>>(buffer_.data(), rows, cols);
  }
  // A view of what a non-const View of this shape or larger left there.
  Eigen::Map<const RowMatrix<T>> View(Eigen::Index rows, Eigen::Index cols) const {
    DCHECK_GE(buffer_.size(), rows * cols);
    return Eigen::Map<const RowMatrix<T>>(buffer_.data(), rows, cols);
  }

 private:
  ColVector<T> buffer_;
};

}  // namespace internal
enum class Mode { kTrain, kEval };

// ---------------------------------------------------------------------------
// PReLU: y = max(x, 0) + alpha[j] * min(x, 0) for unit (column) j.

template <typename T>
void PreluForward(absl::Span<const T> alpha, ConstMatrixRef<T> x, MatrixRef<T> y);
// dx = dy * (x > 0 ? 1 : alpha); dalpha[j] = sum_i dy(i, j) * min(x(i, j), 0),
// overwritten. Needs the forward INPUT x. dx may alias dy.
template <typename T>
void PreluBackward(absl::Span<const T> alpha, ConstMatrixRef<T> x, ConstMatrixRef<T> dy,
                   MatrixRef<T> dx, absl::Span<T> dalpha);

// ---------------------------------------------------------------------------
// Dice: y = p x + (1 - p) alpha x, p = sigmoid((x - mean) / sqrt(var + eps)),
// per unit j. Train mode: mean and var (biased) are the column statistics of
// x over its rows, gradients flow through them, and they are written to
// batch_mean / batch_var. Eval mode: mean and var are the given moving
// averages.
template <typename T>
struct DiceCache {
  RowMatrix<T> p;        // rows x units
  RowMatrix<T> xhat;     // (x - mean) / sqrt(var + eps)
  RowVector<T> inv_std;  // 1 / sqrt(var + eps)
};
template <typename T>
void DiceForward(Mode mode, absl::Span<const T> alpha, absl::Span<const T> mean,
                 absl::Span<const T> var, T eps, ConstMatrixRef<T> x, MatrixRef<T> y,
                 absl::Span<T> batch_mean, absl::Span<T> batch_var, DiceCache<T>* cache);
// Backward of a TRAIN-mode forward (the cache holds its values). dx
// overwritten (may not alias dy), dalpha overwritten.
template <typename T>
void DiceBackward(absl::Span<const T> alpha, ConstMatrixRef<T> x, ConstMatrixRef<T> dy,
                  const DiceCache<T>& cache, MatrixRef<T> dx, absl::Span<T> dalpha);

// ---------------------------------------------------------------------------
// Row-wise softmax; y may alias x. Backward: dx = y * (dy - rowsum(dy * y));
// dx may alias dy. Aliased or not, and whatever the buffers' alignment, the
// results are the same bits (one scalar kernel, sums in index order).
template <typename T>
void SoftmaxForward(ConstMatrixRef<T> x, MatrixRef<T> y);
template <typename T>
void SoftmaxBackward(ConstMatrixRef<T> y, ConstMatrixRef<T> dy, MatrixRef<T> dx);

// ---------------------------------------------------------------------------
// An MLP: widths = (in, w1, ..., wn); layer l maps w(l-1) -> w(l) with a
// DenseLayer followed by `act`, except that the last layer is linear unless
// activate_last. Parameter layout from param_offset: per layer W, b, then the
// activation's alpha (wl floats) for PReLU/Dice. State layout from
// state_offset: per Dice layer, mean (wl floats) then var (wl floats).
template <typename T>
class Mlp {
 public:
  // Grow-only buffers: a batch of another size (a chunk's shorter last
  // batch) reuses them, so a stream of batches allocates only when a batch is
  // larger than any before it.
  struct Cache {
    Eigen::Index rows = 0;  // rows of the last Forward
    std::vector<internal::Scratch<T>> pre;   // per layer: pre-activation output
    std::vector<internal::Scratch<T>> post;  // per layer: post-activation output (last: the output)
    std::vector<internal::Scratch<T>> p, xhat;  // per Dice layer (see DiceCache)
    std::vector<RowVector<T>> inv_std;
    internal::Scratch<T> delta[2];
    // Layer l's pre-activation output of the last Forward (rows x width).
    Eigen::Map<const RowMatrix<T>> Pre(size_t l, Eigen::Index width) const {
      return pre[l].View(rows, width);
    }
  };

  Mlp(std::vector<Eigen::Index> widths, Act act, bool activate_last, size_t param_offset,
      size_t state_offset, T dice_eps);

  size_t num_params() const;
  size_t num_state() const;  // 0 unless act is Dice
  Eigen::Index in_dim() const;
  Eigen::Index out_dim() const;

  // Runs x (rows x in) through the layers. Returns a view of the output
  // (rows x out), valid until the next call with the same cache. Train mode
  // writes the Dice batch statistics into this block's slice of `stats`.
  Eigen::Map<const RowMatrix<T>> Forward(Mode mode, absl::Span<const T> params, absl::Span<const T> state,
                                         ConstMatrixRef<T> x, Cache* cache,
                                         absl::Span<T> stats) const;
  // Backward of the last TRAIN forward with this cache: writes this block's
  // slice of grad; if dx is non-null, overwrites it with d/dx (rows x in).
  void Backward(absl::Span<const T> params, ConstMatrixRef<T> x, ConstMatrixRef<T> dy,
                Cache* cache, absl::Span<T> grad, MatrixRef<T>* dx) const;

 private:
  // The layout, fixed by the constructor.
  std::vector<DenseLayer<T>> layers_;
  std::vector<size_t> state_offsets_;  // per layer: its Dice mean (var follows) in `state`
  Act act_;
  bool activate_last_;
  T dice_eps_;
  size_t num_params_ = 0;
  size_t num_state_ = 0;
};

// ---------------------------------------------------------------------------
// DIN's activation unit. q: B x dq (one query per sample); k: R x dk packed
// items, dk >= dq: the first dq columns pair with q, any extra columns (SIM's
// time-gap embedding) join the input only as part of k. For row r of sample i
// the unit's input is [q_i, k_r, q_i - k_r[:dq], q_i * k_r[:dq]] (3 dq + dk
// wide), fed to an MLP with `hidden` widths, `act`, and 1 linear output: the
// score s_r (no sigmoid, no softmax).
//
// The first layer is evaluated in parts: q_i (W_q + W_d) once per SAMPLE, and
// k_r [W_k with W_d subtracted from its first dq rows] + (q_i * k_r) W_p per
// item, which is what makes long sequences affordable. The parameter layout
// is that of Mlp({3 dq + dk, hidden..., 1}) with rows of the first W in input
// order, so it equals a plain dense layer on the concatenated input.
template <typename T>
class ActivationUnit {
 public:
  struct Cache;  // defined by the implementation

  ActivationUnit(Eigen::Index dq, Eigen::Index dk, std::vector<Eigen::Index> hidden, Act act,
                 size_t param_offset, size_t state_offset, T dice_eps);
  size_t num_params() const;
  size_t num_state() const;

  // scores: R floats. Dice statistics (train) are over all R rows.
  void Forward(Mode mode, absl::Span<const T> params, absl::Span<const T> state,
               ConstMatrixRef<T> q, ConstMatrixRef<T> k, absl::Span<const uint32_t> segments,
               VectorRef<T> scores, Cache* cache, absl::Span<T> stats) const;
  // Backward of the last TRAIN forward: writes this block's slice of grad,
  // ADDS d/dq into dq (B x dq) and d/dk into dk (R x dk).
  void Backward(absl::Span<const T> params, ConstMatrixRef<T> q, ConstMatrixRef<T> k,
                absl::Span<const uint32_t> segments, ConstVectorRef<T> dscores, Cache* cache,
                absl::Span<T> grad, MatrixRef<T> dq, MatrixRef<T> dk) const;

 private:
  // The layout, fixed by the constructor: layers_ are those of
  // Mlp({3 dq + dk, hidden..., 1}), of which the first is evaluated in parts.
  Eigen::Index dq_;
  Eigen::Index dk_;
  std::vector<DenseLayer<T>> layers_;
  std::vector<size_t> state_offsets_;  // per layer: its Dice mean (var follows) in `state`
  Act act_;
  T dice_eps_;
  size_t num_params_ = 0;
  size_t num_state_ = 0;
};

// ---------------------------------------------------------------------------
// Attention pooling over packed items: out_i = sum over rows r of sample i of
// scores_r v_r (out: B x dv, v: R x dv); a sample without items gets zeros.
template <typename T>
void AttentionPoolForward(ConstVectorRef<T> scores, ConstMatrixRef<T> v,
                          absl::Span<const uint32_t> segments, MatrixRef<T> out);
// dscores_r = <dout_i, v_r> (overwritten); dv_r += scores_r dout_i (ADDED).
template <typename T>
void AttentionPoolBackward(ConstVectorRef<T> scores, ConstMatrixRef<T> v,
                           absl::Span<const uint32_t> segments, ConstMatrixRef<T> dout,
                           VectorRef<T> dscores, MatrixRef<T> dv);

// ---------------------------------------------------------------------------
// Mixture of experts: experts is B x (E * h), expert e's output in columns
// [e h, (e + 1) h); gates is B x E (softmax outputs). out_i = sum_e
// gates(i, e) expert_e,i (B x h).
template <typename T>
void MixtureForward(ConstMatrixRef<T> gates, ConstMatrixRef<T> experts, MatrixRef<T> out);
// dgates overwritten; dexperts ADDED (several tasks mix the same experts).
template <typename T>
void MixtureBackward(ConstMatrixRef<T> gates, ConstMatrixRef<T> experts, ConstMatrixRef<T> dout,
                     MatrixRef<T> dgates, MatrixRef<T> dexperts);

// ---------------------------------------------------------------------------
// Weighted multi-task binary cross-entropy on logits (B x T) against labels
// (B x T): loss = sum_t weights[t] * mean_i BCE(logit(i, t), label(i, t)), in
// the stable form of BceWithLogits. Writes dlogits (B x T, may alias logits)
// and task_loss_sums[t] = unweighted SUM over i of task t's per-sample loss.
// Returns the weighted mean loss.
template <typename T>
double MultiTaskBce(ConstMatrixRef<T> logits, ConstMatrixRef<T> labels,
                    absl::Span<const T> weights, MatrixRef<T> dlogits,
                    absl::Span<double> task_loss_sums);

}  // namespace ember::models

#include "models/internal/nn_impl.h"  // IWYU pragma: export

#endif  // EMBER_MODELS_NN_H_
