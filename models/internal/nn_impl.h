// Template definitions of the building blocks declared in models/nn.h.
// Include models/nn.h, not this file.
//
// Implementation notes:
// - Kernels walk row-major matrices row by row, so every Eigen expression
//   runs over contiguous memory; per-unit accumulators live on the stack
//   (UnitAccumulator), so no call allocates.
// - Large products go through internal::TiledProduct (see layers.h).
// - ActivationUnit sees a different number of rows R in every batch, so its
//   Cache holds grow-only buffers (Scratch) rather than exact-size matrices:
//   once the largest batch has been seen nothing is reallocated.
#ifndef EMBER_MODELS_INTERNAL_NN_IMPL_H_
#define EMBER_MODELS_INTERNAL_NN_IMPL_H_

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "Eigen/Core"
#include "absl/types/span.h"
#include "glog/logging.h"
#include "models/layers.h"
#include "models/nn.h"

namespace ember::models {
namespace internal {

// Kernels with per-unit accumulators process the units in column tiles of at
// most this width, so that the accumulators fit in fixed stack storage.
inline constexpr Eigen::Index kUnitTile = 256;
template <typename T>
using UnitAccumulator = Eigen::Array<T, 1, Eigen::Dynamic, Eigen::RowMajor, 1, kUnitTile>;

inline bool HasAlpha(Act act) { return act == Act::kPrelu || act == Act::kDice; }

template <typename T>
Eigen::Map<const RowVector<T>> ConstRowOf(absl::Span<const T> s, size_t offset, Eigen::Index n) {
  DCHECK_LE(offset + static_cast<size_t>(n), s.size());
  return Eigen::Map<const RowVector<T>>(s.data() + offset, n);
}

// Empty views, for the optional scratch of the Dice kernels.
template <typename T>
Eigen::Map<RowVector<T>> NoRow() {
  return Eigen::Map<RowVector<T>>(nullptr, 0);
}
template <typename T>
Eigen::Map<RowMatrix<T>> NoMatrix() {
  return Eigen::Map<RowMatrix<T>>(nullptr, 0, 0);
}

// DiceForward over caller-provided scratch views: p (rows x units) and
// inv_std (units) always; xhat (rows x units) only if it has rows, and the
// mean used (units) only if it has entries. A caller that keeps the mean
// rather than xhat saves a rows x units stream each way; the backward then
// recomputes xhat. In train mode the column statistics are computed straight
// into batch_mean / batch_var and then used; a batch without rows copies the
// given averages there instead. batch_mean / batch_var are unused in eval
// mode. y may alias x.
template <typename T>
void DiceForwardKernel(Mode mode, absl::Span<const T> alpha, absl::Span<const T> mean,
                       absl::Span<const T> var, T eps, ConstMatrixRef<T> x, MatrixRef<T> y,
                       absl::Span<T> batch_mean, absl::Span<T> batch_var, MatrixRef<T> p,
                       MatrixRef<T> xhat, Eigen::Ref<RowVector<T>> mean_used,
                       Eigen::Ref<RowVector<T>> inv_std) {
  const Eigen::Index rows = x.rows();
  const Eigen::Index units = x.cols();
  const bool keep_xhat = xhat.rows() > 0;
  DCHECK_EQ(alpha.size(), static_cast<size_t>(units));
  DCHECK_EQ(y.rows(), rows);
  DCHECK_EQ(y.cols(), units);
  DCHECK_EQ(p.rows(), rows);
  DCHECK(xhat.rows() == 0 || xhat.rows() == rows);
  DCHECK(mean_used.size() == 0 || mean_used.size() == units);
  DCHECK_EQ(inv_std.size(), units);
  const T* mu = mean.data();
  const T* sigma2 = var.data();
  if (mode == Mode::kTrain) {
    DCHECK_EQ(batch_mean.size(), static_cast<size_t>(units));
    DCHECK_EQ(batch_var.size(), static_cast<size_t>(units));
    Eigen::Map<RowVector<T>> m(batch_mean.data(), units);
    Eigen::Map<RowVector<T>> v(batch_var.data(), units);
    if (rows == 0) {
      DCHECK_EQ(mean.size(), static_cast<size_t>(units));
      DCHECK_EQ(var.size(), static_cast<size_t>(units));
      m = ConstRowOf(mean, 0, units);
      v = ConstRowOf(var, 0, units);
    } else {
      // Two passes: the variance of deviations, not E[x^2] - E[x]^2, which
      // cancels catastrophically in float.
      m.setZero();
      for (Eigen::Index r = 0; r < rows; ++r) m += x.row(r);
      m *= T(1) / static_cast<T>(rows);
      v.setZero();
      for (Eigen::Index r = 0; r < rows; ++r) v.array() += (x.row(r) - m).array().square();
      v *= T(1) / static_cast<T>(rows);
    }
    mu = m.data();
    sigma2 = v.data();
  } else {
    DCHECK_EQ(mean.size(), static_cast<size_t>(units));
    DCHECK_EQ(var.size(), static_cast<size_t>(units));
  }
  inv_std = (Eigen::Map<const RowVector<T>>(sigma2, units).array() + eps).sqrt().inverse().matrix();
  if (mean_used.size() > 0) mean_used = Eigen::Map<const RowVector<T>>(mu, units);
  const auto m = Eigen::Map<const RowVector<T>>(mu, units).array();
  const auto a = ConstRowOf(alpha, 0, units).array();
  const auto s = inv_std.array();
  // Eigen's logistic() is 1 / (1 + exp(-x)), except in float, where a
  // rational approximation good to a couple of ulps replaces exp and costs
  // about half as much (measured with SSE).
  if (mode == Mode::kEval && !keep_xhat) {
    // Inference keeps no scratch for a backward pass: one pass per row.
    for (Eigen::Index r = 0; r < rows; ++r) {
      y.row(r).array() = x.row(r).array() * (a + ((x.row(r).array() - m) * s).logistic() * (T(1) - a));
    }
    return;
  }
  for (Eigen::Index r = 0; r < rows; ++r) {
    auto pr = p.row(r).array();
    if (keep_xhat) {
      auto xh = xhat.row(r).array();
      xh = (x.row(r).array() - m) * s;
      pr = xh.logistic();
    } else {
      pr = ((x.row(r).array() - m) * s).logistic();
    }
    y.row(r).array() = x.row(r).array() * (a + pr * (T(1) - a));
  }
}

// DiceBackward (train mode) over the forward's scratch; xhat is read if it
// has rows, else recomputed from x and mean_used. With c = 1 - alpha,
// G = dy x p (1 - p) and g = c G = dL/dxhat, the batch-norm backward is
//   dx = dy (alpha + c p) + inv_std (g - mean(g) - xhat mean(g xhat)),
// evaluated as dy (alpha + c p) + k_g G - k_x xhat - k_0 with per-unit
// constants k_g = inv_std c, k_x = inv_std c mean(G xhat),
// k_0 = inv_std c mean(G). dx may alias dy: every row is read before it is
// written.
template <typename T>
void DiceBackwardKernel(absl::Span<const T> alpha, ConstMatrixRef<T> x, ConstMatrixRef<T> dy,
                        ConstMatrixRef<T> p, ConstMatrixRef<T> xhat,
                        const Eigen::Ref<const RowVector<T>>& mean_used,
                        const Eigen::Ref<const RowVector<T>>& inv_std, MatrixRef<T> dx,
                        absl::Span<T> dalpha) {
  const Eigen::Index rows = x.rows();
  const Eigen::Index units = x.cols();
  DCHECK_EQ(alpha.size(), static_cast<size_t>(units));
  DCHECK_EQ(dalpha.size(), static_cast<size_t>(units));
  DCHECK_EQ(dy.rows(), rows);
  DCHECK_EQ(dx.rows(), rows);
  DCHECK_EQ(p.rows(), rows);
  DCHECK(xhat.rows() == rows || mean_used.size() == units);
  DCHECK_EQ(inv_std.size(), units);
  Eigen::Map<RowVector<T>> dalpha_row(dalpha.data(), units);
  if (rows == 0) {
    dalpha_row.setZero();
    return;
  }
  const T inv_rows = T(1) / static_cast<T>(rows);
  UnitAccumulator<T> da, sum_g, sum_gx, g, c, k_g, k_x, k_0;
  // One column tile; xhat_of(r) is row r's xhat on it.
  auto tile = [&](Eigen::Index col, Eigen::Index w, auto xhat_of) {
    const auto a = ConstRowOf(alpha, static_cast<size_t>(col), w).array();
    const auto s = inv_std.segment(col, w).array();
    da.setZero(w);
    sum_g.setZero(w);
    sum_gx.setZero(w);
    for (Eigen::Index r = 0; r < rows; ++r) {
      const auto xr = x.row(r).segment(col, w).array();
      const auto dyr = dy.row(r).segment(col, w).array();
      const auto pr = p.row(r).segment(col, w).array();
      da += dyr * xr * (T(1) - pr);
      g = dyr * xr * pr * (T(1) - pr);
      sum_g += g;
      sum_gx += g * xhat_of(r);
    }
    c = T(1) - a;
    k_g = s * c;
    k_x = k_g * sum_gx * inv_rows;
    k_0 = k_g * sum_g * inv_rows;
    for (Eigen::Index r = 0; r < rows; ++r) {
      const auto xr = x.row(r).segment(col, w).array();
      const auto dyr = dy.row(r).segment(col, w).array();
      const auto pr = p.row(r).segment(col, w).array();
      dx.row(r).segment(col, w).array() =
          dyr * (a + c * pr) + k_g * (dyr * xr * pr * (T(1) - pr)) - k_x * xhat_of(r) - k_0;
    }
    dalpha_row.segment(col, w) = da.matrix();
  };
  for (Eigen::Index col = 0; col < units; col += kUnitTile) {
    const Eigen::Index w = std::min(kUnitTile, units - col);
    if (xhat.rows() == rows) {
      tile(col, w, [&](Eigen::Index r) { return xhat.row(r).segment(col, w).array(); });
    } else {
      tile(col, w, [&](Eigen::Index r) {
        return (x.row(r).segment(col, w).array() - mean_used.segment(col, w).array()) *
               inv_std.segment(col, w).array();
      });
    }
  }
}

// post = act(pre) for one activated layer whose alpha (PReLU, Dice) sits at
// params[alpha_offset] and whose Dice state sits at state[state_offset] (mean,
// then var; batch statistics to the same place in `stats` in train mode).
// p, xhat, mean_used and inv_std are the Dice scratch (see
// DiceForwardKernel), unused for other activations.
template <typename T>
void ActivationForward(Act act, Mode mode, absl::Span<const T> params, size_t alpha_offset,
                       absl::Span<const T> state, size_t state_offset, T eps, ConstMatrixRef<T> pre,
                       MatrixRef<T> post, absl::Span<T> stats, MatrixRef<T> p, MatrixRef<T> xhat,
                       Eigen::Ref<RowVector<T>> mean_used, Eigen::Ref<RowVector<T>> inv_std) {
  const size_t w = static_cast<size_t>(pre.cols());
  switch (act) {
    case Act::kRelu:
      ReluForward<T>(pre, post);
      return;
    case Act::kSigmoid:
      SigmoidForward<T>(pre, post);
      return;
    case Act::kPrelu:
      PreluForward<T>(params.subspan(alpha_offset, w), pre, post);
      return;
    case Act::kDice: {
      DCHECK_GE(state.size(), state_offset + 2 * w);
      absl::Span<T> batch_mean, batch_var;
      if (mode == Mode::kTrain) {
        DCHECK_GE(stats.size(), state_offset + 2 * w);
        batch_mean = stats.subspan(state_offset, w);
        batch_var = stats.subspan(state_offset + w, w);
      }
      DiceForwardKernel<T>(mode, params.subspan(alpha_offset, w), state.subspan(state_offset, w),
                           state.subspan(state_offset + w, w), eps, pre, post, batch_mean,
                           batch_var, p, xhat, mean_used, inv_std);
      return;
    }
  }
}

// In place: d holds dL/d(post) on entry and dL/d(pre) on exit. Writes the
// activation's dalpha into grad at alpha_offset.
template <typename T>
void ActivationBackward(Act act, absl::Span<const T> params, size_t alpha_offset,
                        ConstMatrixRef<T> pre, ConstMatrixRef<T> post, MatrixRef<T> d,
                        ConstMatrixRef<T> p, ConstMatrixRef<T> xhat,
                        const Eigen::Ref<const RowVector<T>>& mean_used,
                        const Eigen::Ref<const RowVector<T>>& inv_std, absl::Span<T> grad) {
  const size_t w = static_cast<size_t>(d.cols());
  switch (act) {
    case Act::kRelu:
      ReluBackward<T>(post, d, d);
      return;
    case Act::kSigmoid:
      SigmoidBackward<T>(post, d, d);
      return;
    case Act::kPrelu:
      PreluBackward<T>(params.subspan(alpha_offset, w), pre, d, d, grad.subspan(alpha_offset, w));
      return;
    case Act::kDice:
      DiceBackwardKernel<T>(params.subspan(alpha_offset, w), pre, d, p, xhat, mean_used, inv_std, d,
                            grad.subspan(alpha_offset, w));
      return;
  }
}

// Builds the layers of Mlp(widths) from param_offset and the Dice state
// offset of each layer (meaningful for activated Dice layers only). Returns
// the totals through num_params / num_state.
template <typename T>
void BuildLayers(const std::vector<Eigen::Index>& widths, Act act, bool activate_last,
                 size_t param_offset, size_t state_offset, std::vector<DenseLayer<T>>* layers,
                 std::vector<size_t>* state_offsets, size_t* num_params, size_t* num_state) {
  CHECK_GE(widths.size(), 2u) << "an MLP needs an input and an output width";
  const size_t n = widths.size() - 1;
  size_t p = param_offset;
  size_t s = state_offset;
  for (size_t l = 0; l < n; ++l) {
    CHECK_GT(widths[l], 0);
    CHECK_GT(widths[l + 1], 0);
    layers->emplace_back(widths[l], widths[l + 1], p);
    state_offsets->push_back(s);
    p += layers->back().num_params();
    if (l + 1 < n || activate_last) {
      const size_t w = static_cast<size_t>(widths[l + 1]);
      if (HasAlpha(act)) p += w;
      if (act == Act::kDice) s += 2 * w;
    }
  }
  *num_params = p - param_offset;
  *num_state = s - state_offset;
}

}  // namespace internal

// ---------------------------------------------------------------------------
// PReLU

template <typename T>
void PreluForward(absl::Span<const T> alpha, ConstMatrixRef<T> x, MatrixRef<T> y) {
  DCHECK_EQ(alpha.size(), static_cast<size_t>(x.cols()));
  DCHECK_EQ(y.rows(), x.rows());
  DCHECK_EQ(y.cols(), x.cols());
  const auto a = internal::ConstRowOf(alpha, 0, x.cols()).array();
  for (Eigen::Index r = 0; r < x.rows(); ++r) {
    const auto xr = x.row(r).array();
    y.row(r).array() = xr.max(T(0)) + a * xr.min(T(0));
  }
}

template <typename T>
void PreluBackward(absl::Span<const T> alpha, ConstMatrixRef<T> x, ConstMatrixRef<T> dy,
                   MatrixRef<T> dx, absl::Span<T> dalpha) {
  const Eigen::Index units = x.cols();
  DCHECK_EQ(alpha.size(), static_cast<size_t>(units));
  DCHECK_EQ(dalpha.size(), static_cast<size_t>(units));
  DCHECK_EQ(dy.rows(), x.rows());
  DCHECK_EQ(dx.rows(), x.rows());
  const auto a = internal::ConstRowOf(alpha, 0, units).array();
  Eigen::Map<RowVector<T>> da(dalpha.data(), units);
  da.setZero();
  for (Eigen::Index r = 0; r < x.rows(); ++r) {
    const auto xr = x.row(r).array();
    const auto dyr = dy.row(r).array();
    da.array() += dyr * xr.min(T(0));
    // Reads dy's row before writing dx's: dx may alias dy.
    dx.row(r).array() = (xr > T(0)).select(dyr, a * dyr);
  }
}

// ---------------------------------------------------------------------------
// Dice

template <typename T>
void DiceForward(Mode mode, absl::Span<const T> alpha, absl::Span<const T> mean,
                 absl::Span<const T> var, T eps, ConstMatrixRef<T> x, MatrixRef<T> y,
                 absl::Span<T> batch_mean, absl::Span<T> batch_var, DiceCache<T>* cache) {
  cache->p.resize(x.rows(), x.cols());
  cache->xhat.resize(x.rows(), x.cols());
  cache->inv_std.resize(x.cols());
  internal::DiceForwardKernel<T>(mode, alpha, mean, var, eps, x, y, batch_mean, batch_var, cache->p,
                                 cache->xhat, internal::NoRow<T>(), cache->inv_std);
}

template <typename T>
void DiceBackward(absl::Span<const T> alpha, ConstMatrixRef<T> x, ConstMatrixRef<T> dy,
                  const DiceCache<T>& cache, MatrixRef<T> dx, absl::Span<T> dalpha) {
  internal::DiceBackwardKernel<T>(alpha, x, dy, cache.p, cache.xhat, internal::NoRow<T>(),
                                  cache.inv_std, dx, dalpha);
}

// ---------------------------------------------------------------------------
// Softmax

// One scalar kernel per row, in index order, for any alignment and either
// aliasing: Eigen's vectorised exp and reductions peel a buffer's unaligned
// head with scalar code, so the same values at two addresses (y aliasing x or
// not) could round differently in the last place. Rows are a few experts
// wide, so the packets bought nothing.
template <typename T>
void SoftmaxForward(ConstMatrixRef<T> x, MatrixRef<T> y) {
  DCHECK_EQ(y.rows(), x.rows());
  DCHECK_EQ(y.cols(), x.cols());
  const Eigen::Index n = x.cols();
  if (n == 0) return;
  for (Eigen::Index r = 0; r < x.rows(); ++r) {
    // Shifting by the row max keeps exp <= 1: no overflow, and the largest
    // term is exactly 1, so the sum is >= 1.
    T m = x(r, 0);
    for (Eigen::Index j = 1; j < n; ++j) m = std::max(m, x(r, j));
    T sum = 0;
    for (Eigen::Index j = 0; j < n; ++j) {
      const T e = std::exp(x(r, j) - m);
      y(r, j) = e;
      sum += e;
    }
    const T inv = T(1) / sum;
    for (Eigen::Index j = 0; j < n; ++j) y(r, j) *= inv;
  }
}

template <typename T>
void SoftmaxBackward(ConstMatrixRef<T> y, ConstMatrixRef<T> dy, MatrixRef<T> dx) {
  DCHECK_EQ(dy.rows(), y.rows());
  DCHECK_EQ(dy.cols(), y.cols());
  DCHECK_EQ(dx.rows(), y.rows());
  DCHECK_EQ(dx.cols(), y.cols());
  const Eigen::Index n = y.cols();
  for (Eigen::Index r = 0; r < y.rows(); ++r) {
    T s = 0;
    for (Eigen::Index j = 0; j < n; ++j) s += dy(r, j) * y(r, j);
    for (Eigen::Index j = 0; j < n; ++j) dx(r, j) = y(r, j) * (dy(r, j) - s);
  }
}

// ---------------------------------------------------------------------------
// Mlp

template <typename T>
Mlp<T>::Mlp(std::vector<Eigen::Index> widths, Act act, bool activate_last, size_t param_offset,
            size_t state_offset, T dice_eps)
    : act_(act), activate_last_(activate_last), dice_eps_(dice_eps) {
  internal::BuildLayers<T>(widths, act, activate_last, param_offset, state_offset, &layers_,
                           &state_offsets_, &num_params_, &num_state_);
}

template <typename T>
size_t Mlp<T>::num_params() const {
  return num_params_;
}

template <typename T>
size_t Mlp<T>::num_state() const {
  return num_state_;
}

template <typename T>
Eigen::Index Mlp<T>::in_dim() const {
  return layers_.front().in_dim();
}

template <typename T>
Eigen::Index Mlp<T>::out_dim() const {
  return layers_.back().out_dim();
}

template <typename T>
Eigen::Map<const RowMatrix<T>> Mlp<T>::Forward(Mode mode, absl::Span<const T> params,
                                               absl::Span<const T> state, ConstMatrixRef<T> x,
                                               Cache* cache, absl::Span<T> stats) const {
  DCHECK_EQ(x.cols(), in_dim());
  const size_t n = layers_.size();
  const Eigen::Index rows = x.rows();
  cache->rows = rows;
  cache->pre.resize(n);
  cache->post.resize(n);
  cache->p.resize(n);
  cache->xhat.resize(n);
  cache->inv_std.resize(n);
  for (size_t l = 0; l < n; ++l) {
    const DenseLayer<T>& layer = layers_[l];
    const Eigen::Index w = layer.out_dim();
    // Grow-only views: a batch of another size reuses the buffers.
    Eigen::Map<RowMatrix<T>> pre = cache->pre[l].View(rows, w);
    Eigen::Map<RowMatrix<T>> post = cache->post[l].View(rows, w);
    if (l == 0) {
      layer.Forward(params, x, pre);
    } else {
      layer.Forward(params, cache->post[l - 1].View(rows, layer.in_dim()), pre);
    }
    if (l + 1 < n || activate_last_) {
      const bool dice = act_ == Act::kDice;
      cache->inv_std[l].resize(dice ? w : 0);
      internal::ActivationForward<T>(act_, mode, params, layer.bias_offset() + w, state,
                                     state_offsets_[l], dice_eps_, pre, post, stats,
                                     cache->p[l].View(dice ? rows : 0, w),
                                     cache->xhat[l].View(dice ? rows : 0, w), internal::NoRow<T>(),
                                     cache->inv_std[l]);
    } else {
      post = pre;
    }
  }
  const internal::Scratch<T>& out = cache->post.back();
  return out.View(rows, out_dim());
}

template <typename T>
void Mlp<T>::Backward(absl::Span<const T> params, ConstMatrixRef<T> x, ConstMatrixRef<T> dy,
                      Cache* cache, absl::Span<T> grad, MatrixRef<T>* dx) const {
  const size_t n = layers_.size();
  const Eigen::Index rows = x.rows();
  DCHECK_EQ(cache->post.size(), n) << "Backward without Forward";
  DCHECK_EQ(cache->rows, rows);
  DCHECK_EQ(dy.rows(), rows);
  DCHECK_EQ(dy.cols(), out_dim());
  Eigen::Index max_width = 0;
  for (const DenseLayer<T>& layer : layers_) max_width = std::max(max_width, layer.out_dim());
  T* buffers[2] = {cache->delta[0].View(rows, max_width).data(),
                   cache->delta[1].View(rows, max_width).data()};
  auto delta = [&](int c, Eigen::Index w) { return Eigen::Map<RowMatrix<T>>(buffers[c], rows, w); };

  // delta[cur] holds dL/d(output of layer l), then, after the activation's
  // backward (in place), dL/d(pre-activation of layer l).
  int cur = 0;
  delta(cur, out_dim()) = dy;
  for (size_t l = n; l-- > 0;) {
    const DenseLayer<T>& layer = layers_[l];
    const Eigen::Index w = layer.out_dim();
    Eigen::Map<RowMatrix<T>> d = delta(cur, w);
    const bool dice = act_ == Act::kDice;
    if (l + 1 < n || activate_last_) {
      internal::ActivationBackward<T>(act_, params, layer.bias_offset() + w,
                                      cache->pre[l].View(rows, w), cache->post[l].View(rows, w), d,
                                      cache->p[l].View(dice ? rows : 0, w),
                                      cache->xhat[l].View(dice ? rows : 0, w), internal::NoRow<T>(),
                                      cache->inv_std[l], grad);
    }
    if (l == 0) {
      layer.ParamGradient(x, d, grad);
    } else {
      layer.ParamGradient(cache->post[l - 1].View(rows, layer.in_dim()), d, grad);
    }
    if (l > 0) {
      layer.InputGradient(params, d, delta(1 - cur, layer.in_dim()));
      cur = 1 - cur;
    } else if (dx != nullptr) {
      layer.InputGradient(params, d, *dx);
    }
  }
}

// ---------------------------------------------------------------------------
// ActivationUnit
//
// With W_q, W_k, W_d, W_p the row blocks of the first layer's W (input
// order), the first layer for row r of sample i is
//   h1_r = q_i (W_q + W_d) + b + k_r M_i,
//   M_i = [W_k[:dq] - W_d + diag(q_i) W_p; W_k[dq:]]   (dk x h1),
// since (q_i - k_r[:dq]) W_d = q_i W_d - k_r[:dq] W_d and
// (q_i * k_r[:dq]) W_p = k_r[:dq] diag(q_i) W_p. The q-only part is one
// B-row GEMM; M_i costs dq x h1 per sample, and the per-item work is one
// GEMM of depth dk per sample instead of depth 3 dq + dk (or dk + dq with
// the product term as an input column block), which halves the first layer
// for dk = dq. The per-sample blocks (~50 x 36 by 36 x 80) stay in L1 and
// measured about twice as fast as one GEMM of twice the depth over all rows.
//
// Backward, with dH_i the rows of dL/dh1 of sample i, S_i their sum and
// dM_i = K_i^T dH_i (dk x h1):
//   dW_q = q^T S,  dW_k = sum_i dM_i,  dW_d = dW_q - dW_k[:dq],
//   dW_p = sum_i diag(q_i) dM_i[:dq],  db = sum_i S_i,
//   dq_i = S_i (W_q + W_d)^T + rowsum(dM_i[:dq] * W_p),  dK_i = dH_i M_i^T.

template <typename T>
struct ActivationUnit<T>::Cache {
  // First-layer weights combined per call (dq x h1 unless noted).
  RowMatrix<T> w_qd;  // W_q + W_d
  RowMatrix<T> w_kd;  // W_k[:dq] - W_d
  RowMatrix<T> m;     // dk x h1: M_i of the sample at hand
  // Forward, per batch.
  internal::Scratch<T> q_part;  // B x h1: q_i (W_q + W_d) + b
  // Per layer, R x width: the pre-activation (the last layer's goes straight
  // to the scores), the activated output, and the Dice scratch (p, and the
  // mean and inv_std used rather than xhat: see DiceForwardKernel).
  std::vector<internal::Scratch<T>> pre;
  std::vector<internal::Scratch<T>> post;
  std::vector<internal::Scratch<T>> p;
  std::vector<RowVector<T>> mean;
  std::vector<RowVector<T>> inv_std;
  // Backward.
  internal::Scratch<T> delta[2];  // R x widest layer
  internal::Scratch<T> seg_sum;   // B x h1: S
  internal::Scratch<T> dq_part;   // B x dq: S (W_q + W_d)^T
  internal::Scratch<T> dk_part;   // longest sample x dk: dK_i
  RowMatrix<T> dm;                // dk x h1: dM_i
  RowMatrix<T> dw_k;              // dk x h1: sum of dM_i
  RowMatrix<T> dw_p;              // dq x h1
};

template <typename T>
ActivationUnit<T>::ActivationUnit(Eigen::Index dq, Eigen::Index dk,
                                  std::vector<Eigen::Index> hidden, Act act, size_t param_offset,
                                  size_t state_offset, T dice_eps)
    : dq_(dq), dk_(dk), act_(act), dice_eps_(dice_eps) {
  CHECK_GT(dq, 0);
  CHECK_GE(dk, dq);
  std::vector<Eigen::Index> widths;
  widths.reserve(hidden.size() + 2);
  widths.push_back(3 * dq + dk);
  widths.insert(widths.end(), hidden.begin(), hidden.end());
  widths.push_back(1);
  internal::BuildLayers<T>(widths, act, /*activate_last=*/false, param_offset, state_offset,
                           &layers_, &state_offsets_, &num_params_, &num_state_);
}

template <typename T>
size_t ActivationUnit<T>::num_params() const {
  return num_params_;
}

template <typename T>
size_t ActivationUnit<T>::num_state() const {
  return num_state_;
}

namespace internal {

// Sets the first dq rows of m to M_i's: W_k[:dq] - W_d + diag(q_i) W_p.
template <typename T, typename Q, typename Wkd, typename Wp>
void SampleWeights(const Q& q_i, const Wkd& w_kd, const Wp& w_p, RowMatrix<T>* m) {
  for (Eigen::Index j = 0; j < w_kd.rows(); ++j) m->row(j) = w_kd.row(j) + q_i[j] * w_p.row(j);
}

}  // namespace internal

template <typename T>
void ActivationUnit<T>::Forward(Mode mode, absl::Span<const T> params, absl::Span<const T> state,
                                ConstMatrixRef<T> q, ConstMatrixRef<T> k,
                                absl::Span<const uint32_t> segments, VectorRef<T> scores,
                                Cache* cache, absl::Span<T> stats) const {
  const Eigen::Index b = q.rows();
  const Eigen::Index rows = k.rows();
  const Eigen::Index dq = dq_, dk = dk_;
  const Eigen::Index h = layers_[0].out_dim();
  const size_t n = layers_.size();
  DCHECK_EQ(q.cols(), dq);
  DCHECK_EQ(k.cols(), dk);
  DCHECK_EQ(segments.size(), static_cast<size_t>(b) + 1);
  DCHECK_EQ(segments.front(), 0u);
  DCHECK_EQ(segments.back(), static_cast<uint32_t>(rows));
  DCHECK_EQ(scores.size(), rows);
  DCHECK_GE(params.size(), layers_[0].offset() + num_params_);
  cache->pre.resize(n);
  cache->post.resize(n);
  cache->p.resize(n);
  cache->mean.resize(n);
  cache->inv_std.resize(n);

  // Combined first-layer weights; resize() keeps the buffers after the first
  // call.
  const Eigen::Map<const RowMatrix<T>> w0(params.data() + layers_[0].offset(), 3 * dq + dk, h);
  const auto w_k = w0.middleRows(dq, dk);
  const auto w_d = w0.middleRows(dq + dk, dq);
  const auto w_p = w0.bottomRows(dq);
  cache->w_qd.resize(dq, h);
  cache->w_qd = w0.topRows(dq) + w_d;
  cache->w_kd.resize(dq, h);
  cache->w_kd = w_k.topRows(dq) - w_d;
  cache->m.resize(dk, h);
  cache->m.bottomRows(dk - dq) = w_k.bottomRows(dk - dq);

  // The per-sample part, with the bias folded in.
  Eigen::Map<RowMatrix<T>> q_part = cache->q_part.View(b, h);
  internal::TiledProduct<T>(q, cache->w_qd, q_part);
  q_part.rowwise() += internal::ConstRowOf(params, layers_[0].bias_offset(), h);

  for (size_t l = 0; l < n; ++l) {
    const DenseLayer<T>& layer = layers_[l];
    const Eigen::Index w = layer.out_dim();
    // The last layer (1 unit, linear) writes the scores.
    Eigen::Map<RowMatrix<T>> pre =
        l + 1 < n ? cache->pre[l].View(rows, w) : Eigen::Map<RowMatrix<T>>(scores.data(), rows, 1);
    if (l == 0) {
      for (Eigen::Index i = 0; i < b; ++i) {
        const Eigen::Index begin = segments[i], len = segments[i + 1] - segments[i];
        if (len == 0) continue;
        internal::SampleWeights(q.row(i), cache->w_kd, w_p, &cache->m);
        auto pre_i = pre.middleRows(begin, len);
        internal::TiledProduct<T>(k.middleRows(begin, len), cache->m, pre_i);
        pre_i.rowwise() += q_part.row(i);
      }
    } else {
      layer.Forward(params, cache->post[l - 1].View(rows, layer.in_dim()), pre);
    }
    if (l + 1 == n) break;
    const bool dice = act_ == Act::kDice;
    if (dice) {
      cache->mean[l].resize(w);
      cache->inv_std[l].resize(w);
    }
    internal::ActivationForward<T>(act_, mode, params, layer.bias_offset() + w, state,
                                   state_offsets_[l], dice_eps_, pre, cache->post[l].View(rows, w),
                                   stats, cache->p[l].View(dice ? rows : 0, w),
                                   internal::NoMatrix<T>(), cache->mean[l], cache->inv_std[l]);
  }
}

template <typename T>
void ActivationUnit<T>::Backward(absl::Span<const T> params, ConstMatrixRef<T> q,
                                 ConstMatrixRef<T> k, absl::Span<const uint32_t> segments,
                                 ConstVectorRef<T> dscores, Cache* cache, absl::Span<T> grad,
                                 MatrixRef<T> dq_out, MatrixRef<T> dk_out) const {
  const Eigen::Index b = q.rows();
  const Eigen::Index rows = k.rows();
  const Eigen::Index dq = dq_, dk = dk_;
  const Eigen::Index h = layers_[0].out_dim();
  const size_t n = layers_.size();
  DCHECK_EQ(cache->pre.size(), n) << "Backward without Forward";
  DCHECK_EQ(segments.size(), static_cast<size_t>(b) + 1);
  DCHECK_EQ(dscores.size(), rows);
  DCHECK_EQ(dq_out.rows(), b);
  DCHECK_EQ(dq_out.cols(), dq);
  DCHECK_EQ(dk_out.rows(), rows);
  DCHECK_EQ(dk_out.cols(), dk);
  DCHECK_GE(grad.size(), layers_[0].offset() + num_params_);

  // Walk the layers back to dL/dh1 (the first layer's pre-activation).
  Eigen::Index max_width = 0;
  for (const DenseLayer<T>& layer : layers_) max_width = std::max(max_width, layer.out_dim());
  // Size both buffers up front: later views must not regrow them.
  cache->delta[0].View(rows, max_width);
  cache->delta[1].View(rows, max_width);
  int cur = 0;
  cache->delta[cur].View(rows, 1) = dscores;
  for (size_t l = n; l-- > 0;) {
    const DenseLayer<T>& layer = layers_[l];
    const Eigen::Index w = layer.out_dim();
    Eigen::Map<RowMatrix<T>> d = cache->delta[cur].View(rows, w);
    if (l + 1 < n) {
      const bool dice = act_ == Act::kDice;
      internal::ActivationBackward<T>(act_, params, layer.bias_offset() + w,
                                      cache->pre[l].View(rows, w), cache->post[l].View(rows, w), d,
                                      cache->p[l].View(dice ? rows : 0, w), internal::NoMatrix<T>(),
                                      cache->mean[l], cache->inv_std[l], grad);
    }
    if (l == 0) break;
    layer.ParamGradient(cache->post[l - 1].View(rows, layer.in_dim()), d, grad);
    layer.InputGradient(params, d, cache->delta[1 - cur].View(rows, layer.in_dim()));
    cur = 1 - cur;
  }
  const Eigen::Map<const RowMatrix<T>> dh1(cache->delta[cur].View(rows, h).data(), rows, h);

  // The q-only part: S, then one product each for dW_q and dq.
  Eigen::Map<RowMatrix<T>> seg_sum = cache->seg_sum.View(b, h);
  Eigen::Index longest = 0;
  for (Eigen::Index i = 0; i < b; ++i) {
    auto s = seg_sum.row(i);
    s.setZero();
    for (Eigen::Index r = segments[i]; r < static_cast<Eigen::Index>(segments[i + 1]); ++r) {
      s += dh1.row(r);
    }
    longest = std::max<Eigen::Index>(longest, segments[i + 1] - segments[i]);
  }
  Eigen::Map<RowMatrix<T>> dw0(grad.data() + layers_[0].offset(), 3 * dq + dk, h);
  Eigen::Map<RowVector<T>>(grad.data() + layers_[0].bias_offset(), h) = seg_sum.colwise().sum();
  internal::TiledProduct<T>(q.transpose(), seg_sum, dw0.topRows(dq));
  Eigen::Map<RowMatrix<T>> dq_part = cache->dq_part.View(b, dq);
  internal::TiledProduct<T>(seg_sum, cache->w_qd.transpose(), dq_part);
  dq_out += dq_part;

  // The per-item part, sample by sample.
  const Eigen::Map<const RowMatrix<T>> w0(params.data() + layers_[0].offset(), 3 * dq + dk, h);
  const auto w_p = w0.bottomRows(dq);
  cache->dm.resize(dk, h);
  cache->dw_k.setZero(dk, h);
  cache->dw_p.setZero(dq, h);
  cache->dk_part.View(longest, dk);  // sized up front, as above
  for (Eigen::Index i = 0; i < b; ++i) {
    const Eigen::Index begin = segments[i], len = segments[i + 1] - segments[i];
    if (len == 0) continue;
    const auto dh_i = dh1.middleRows(begin, len);
    internal::TiledProduct<T>(k.middleRows(begin, len).transpose(), dh_i, cache->dm);
    cache->dw_k += cache->dm;
    const auto dm_q = cache->dm.topRows(dq);
    cache->dw_p.noalias() += q.row(i).transpose().asDiagonal() * dm_q;
    dq_out.row(i) += dm_q.cwiseProduct(w_p).rowwise().sum().transpose();
    internal::SampleWeights(q.row(i), cache->w_kd, w_p, &cache->m);
    Eigen::Map<RowMatrix<T>> dk_i = cache->dk_part.View(len, dk);
    internal::TiledProduct<T>(dh_i, cache->m.transpose(), dk_i);
    dk_out.middleRows(begin, len) += dk_i;
  }
  dw0.middleRows(dq, dk) = cache->dw_k;
  dw0.middleRows(dq + dk, dq) = dw0.topRows(dq) - cache->dw_k.topRows(dq);
  dw0.bottomRows(dq) = cache->dw_p;
}

// ---------------------------------------------------------------------------
// Attention pooling

template <typename T>
void AttentionPoolForward(ConstVectorRef<T> scores, ConstMatrixRef<T> v,
                          absl::Span<const uint32_t> segments, MatrixRef<T> out) {
  DCHECK_EQ(segments.size(), static_cast<size_t>(out.rows()) + 1);
  DCHECK_EQ(scores.size(), v.rows());
  DCHECK_EQ(out.cols(), v.cols());
  for (Eigen::Index i = 0; i < out.rows(); ++i) {
    auto o = out.row(i);
    o.setZero();
    for (Eigen::Index r = segments[i]; r < static_cast<Eigen::Index>(segments[i + 1]); ++r) {
      o += scores[r] * v.row(r);
    }
  }
}

template <typename T>
void AttentionPoolBackward(ConstVectorRef<T> scores, ConstMatrixRef<T> v,
                           absl::Span<const uint32_t> segments, ConstMatrixRef<T> dout,
                           VectorRef<T> dscores, MatrixRef<T> dv) {
  DCHECK_EQ(segments.size(), static_cast<size_t>(dout.rows()) + 1);
  DCHECK_EQ(scores.size(), v.rows());
  DCHECK_EQ(dscores.size(), v.rows());
  DCHECK_EQ(dv.rows(), v.rows());
  DCHECK_EQ(dv.cols(), v.cols());
  DCHECK_EQ(dout.cols(), v.cols());
  for (Eigen::Index i = 0; i < dout.rows(); ++i) {
    const auto di = dout.row(i);
    for (Eigen::Index r = segments[i]; r < static_cast<Eigen::Index>(segments[i + 1]); ++r) {
      dscores[r] = di.dot(v.row(r));
      dv.row(r) += scores[r] * di;
    }
  }
}

// ---------------------------------------------------------------------------
// Mixture of experts

template <typename T>
void MixtureForward(ConstMatrixRef<T> gates, ConstMatrixRef<T> experts, MatrixRef<T> out) {
  const Eigen::Index num_experts = gates.cols();
  const Eigen::Index h = out.cols();
  DCHECK_EQ(experts.cols(), num_experts * h);
  DCHECK_EQ(experts.rows(), gates.rows());
  DCHECK_EQ(out.rows(), gates.rows());
  for (Eigen::Index i = 0; i < gates.rows(); ++i) {
    auto o = out.row(i);
    o.setZero();
    for (Eigen::Index e = 0; e < num_experts; ++e) {
      o += gates(i, e) * experts.row(i).segment(e * h, h);
    }
  }
}

template <typename T>
void MixtureBackward(ConstMatrixRef<T> gates, ConstMatrixRef<T> experts, ConstMatrixRef<T> dout,
                     MatrixRef<T> dgates, MatrixRef<T> dexperts) {
  const Eigen::Index num_experts = gates.cols();
  const Eigen::Index h = dout.cols();
  DCHECK_EQ(experts.cols(), num_experts * h);
  DCHECK_EQ(dexperts.cols(), num_experts * h);
  DCHECK_EQ(dgates.cols(), num_experts);
  DCHECK_EQ(dout.rows(), gates.rows());
  for (Eigen::Index i = 0; i < gates.rows(); ++i) {
    const auto di = dout.row(i);
    for (Eigen::Index e = 0; e < num_experts; ++e) {
      dgates(i, e) = di.dot(experts.row(i).segment(e * h, h));
      dexperts.row(i).segment(e * h, h) += gates(i, e) * di;
    }
  }
}

// ---------------------------------------------------------------------------
// Multi-task loss

template <typename T>
double MultiTaskBce(ConstMatrixRef<T> logits, ConstMatrixRef<T> labels, absl::Span<const T> weights,
                    MatrixRef<T> dlogits, absl::Span<double> task_loss_sums) {
  const Eigen::Index b = logits.rows();
  const Eigen::Index tasks = logits.cols();
  DCHECK_EQ(labels.rows(), b);
  DCHECK_EQ(labels.cols(), tasks);
  DCHECK_EQ(dlogits.rows(), b);
  DCHECK_EQ(dlogits.cols(), tasks);
  DCHECK_EQ(weights.size(), static_cast<size_t>(tasks));
  DCHECK_EQ(task_loss_sums.size(), static_cast<size_t>(tasks));
  std::fill(task_loss_sums.begin(), task_loss_sums.end(), 0.0);
  if (b == 0) return 0;
  const T inv_b = T(1) / static_cast<T>(b);
  for (Eigen::Index i = 0; i < b; ++i) {
    for (Eigen::Index t = 0; t < tasks; ++t) {
      // Read before write: dlogits may alias logits.
      const T z = logits(i, t);
      const T y = labels(i, t);
      // max(z, 0) - z y + log(1 + exp(-|z|)): exp never sees a large positive
      // argument.
      task_loss_sums[t] +=
          static_cast<double>(std::max(z, T(0)) - z * y + std::log1p(std::exp(-std::abs(z))));
      dlogits(i, t) = weights[t] * (T(1) / (T(1) + std::exp(-z)) - y) * inv_b;
    }
  }
  double loss = 0;
  for (Eigen::Index t = 0; t < tasks; ++t) {
    loss += static_cast<double>(weights[t]) * task_loss_sums[t];
  }
  return loss / static_cast<double>(b);
}

}  // namespace ember::models

#endif  // EMBER_MODELS_INTERNAL_NN_IMPL_H_
