// Neural-network layers with explicit forward and backward passes over whole
// batches. Batches are row-major matrices (one sample per row) viewed through
// Eigen::Ref over caller-owned buffers; parameters and their gradients live in
// caller-owned flat vectors (the dense parameter vector pulled from the
// servers), so no layer owns storage. Templated on the scalar: float in
// production, double in the finite-difference tests.
//
// Shapes are programmer contracts, checked with DCHECK only.
#ifndef EMBER_MODELS_LAYERS_H_
#define EMBER_MODELS_LAYERS_H_

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "Eigen/Core"
#include "absl/types/span.h"
#include "glog/logging.h"

namespace ember::models {

// A batch matrix: one sample per row. Row-major so that a sample's features
// (and a pulled embedding row) are contiguous.
template <typename T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename T>
using ColVector = Eigen::Matrix<T, Eigen::Dynamic, 1>;
template <typename T>
using RowVector = Eigen::Matrix<T, 1, Eigen::Dynamic>;

// Non-owning views. Ref (rather than Map) so that a column block of a wider
// matrix, e.g. one feature's slice of the concatenated input, binds without a
// copy: row-major blocks keep a unit inner stride.
template <typename T>
using MatrixRef = Eigen::Ref<RowMatrix<T>>;
template <typename T>
using ConstMatrixRef = Eigen::Ref<const RowMatrix<T>>;
template <typename T>
using VectorRef = Eigen::Ref<ColVector<T>>;
template <typename T>
using ConstVectorRef = Eigen::Ref<const ColVector<T>>;

namespace internal {

// Eigen's GEMM packs its operand blocks into a buffer it takes per product
// call: on the stack up to EIGEN_STACK_ALLOCATION_LIMIT (128 KB by default),
// else from the heap. Batch-sized products (512 x 152 by 152 x 128 floats)
// need ~300 KB, and measured on glibc that malloc/free made the allocator
// mmap or trim and page-fault on every call, about a third of a training
// step. Multiplying in tiles keeps each packed block under the limit (no
// heap traffic at all) and cache-sized, as Eigen's own blocking would.
// A quarter of headroom under the limit; the floor only matters if someone
// builds with a tiny limit, where some heap traffic is then unavoidable.
inline constexpr size_t kPackBudgetBytes =
    std::max<size_t>(16384, static_cast<size_t>(EIGEN_STACK_ALLOCATION_LIMIT) / 4 * 3);
inline constexpr Eigen::Index kMaxDepthTile = 128;

// Splits [0, n) into the fewest tiles of at most max_tile, of equal size
// (the last may be smaller), so that no tile is a sliver.
inline Eigen::Index TileSize(Eigen::Index n, Eigen::Index max_tile) {
  const Eigen::Index tiles = (n + max_tile - 1) / max_tile;
  return tiles <= 1 ? n : (n + tiles - 1) / tiles;
}

// dst = lhs * rhs, in tiles (see above). Operands are any Eigen expressions
// with direct access (maps, blocks, transposes of them); dst must not alias
// either.
template <typename T, typename Lhs, typename Rhs, typename Dst>
void TiledProduct(const Lhs& lhs, const Rhs& rhs, Dst&& dst) {
  const Eigen::Index m = lhs.rows(), k = lhs.cols(), n = rhs.cols();
  DCHECK_EQ(rhs.rows(), k);
  DCHECK_EQ(dst.rows(), m);
  DCHECK_EQ(dst.cols(), n);
  if (k == 0) {
    dst.setZero();
    return;
  }
  const Eigen::Index max_outer = std::max<Eigen::Index>(
      8, static_cast<Eigen::Index>(kPackBudgetBytes / (kMaxDepthTile * sizeof(T))));
  const Eigen::Index tm = TileSize(m, max_outer);
  const Eigen::Index tn = TileSize(n, max_outer);
  const Eigen::Index tk = TileSize(k, kMaxDepthTile);
  for (Eigen::Index i = 0; i < m; i += tm) {
    const Eigen::Index mi = std::min(tm, m - i);
    for (Eigen::Index j = 0; j < n; j += tn) {
      const Eigen::Index nj = std::min(tn, n - j);
      auto d = dst.block(i, j, mi, nj);
      d.noalias() = lhs.block(i, 0, mi, std::min(tk, k)) * rhs.block(0, j, std::min(tk, k), nj);
      for (Eigen::Index p = tk; p < k; p += tk) {
        const Eigen::Index kp = std::min(tk, k - p);
        d.noalias() += lhs.block(i, p, mi, kp) * rhs.block(p, j, kp, nj);
      }
    }
  }
}

}  // namespace internal

// Fully connected layer Y = X W + b.
//
// Parameter layout inside the flat vector, starting at offset():
//   W: in x out floats, row-major (W(i, j) at offset + i * out + j), then
//   b: out floats.
// This layout is part of the checkpoint/parameter-server contract of every
// model built from it; change it only with a format version bump.
//
// Holds only shapes and the offset; immutable after construction, so one
// instance may be used from several threads.
template <typename T>
class DenseLayer {
 public:
  DenseLayer(Eigen::Index in, Eigen::Index out, size_t offset)
      : in_(in), out_(out), offset_(offset) {
    DCHECK_GT(in, 0);
    DCHECK_GT(out, 0);
  }

  static size_t NumParams(Eigen::Index in, Eigen::Index out) {
    return static_cast<size_t>(in) * static_cast<size_t>(out) + static_cast<size_t>(out);
  }
  Eigen::Index in_dim() const { return in_; }
  Eigen::Index out_dim() const { return out_; }
  size_t offset() const { return offset_; }
  size_t num_params() const { return NumParams(in_, out_); }
  // Offset of b in the flat vector.
  size_t bias_offset() const { return offset_ + static_cast<size_t>(in_ * out_); }

  // y (batch x out) = x (batch x in) W + b. `params` is the whole flat
  // parameter vector. y must not alias x.
  void Forward(absl::Span<const T> params, ConstMatrixRef<T> x, MatrixRef<T> y) const {
    DCHECK_GE(params.size(), offset_ + num_params());
    DCHECK_EQ(x.cols(), in_);
    DCHECK_EQ(y.cols(), out_);
    DCHECK_EQ(x.rows(), y.rows());
    internal::TiledProduct<T>(x, Weights(params), y);
    y.rowwise() += Bias(params);
  }

  // Overwrites this layer's slice of `grad` (same layout as `params`) with
  // dW = x^T dy and db = column sums of dy. Other slices are untouched.
  void ParamGradient(ConstMatrixRef<T> x, ConstMatrixRef<T> dy, absl::Span<T> grad) const {
    DCHECK_GE(grad.size(), offset_ + num_params());
    DCHECK_EQ(x.cols(), in_);
    DCHECK_EQ(dy.cols(), out_);
    DCHECK_EQ(x.rows(), dy.rows());
    Eigen::Map<RowMatrix<T>> dw(grad.data() + offset_, in_, out_);
    Eigen::Map<RowVector<T>> db(grad.data() + bias_offset(), out_);
    internal::TiledProduct<T>(x.transpose(), dy, dw);
    // Zero rows (an attention unit over no items): dy's data may be null,
    // and Eigen's column blocks would offset it (UBSan: null pointer offset).
    if (dy.rows() == 0) {
      db.setZero();
    } else {
      db.noalias() = dy.colwise().sum();
    }
  }

  // dx (batch x in) = dy W^T. Separate from ParamGradient because the first
  // layer of a model without embeddings needs no input gradient. dx must not
  // alias dy.
  void InputGradient(absl::Span<const T> params, ConstMatrixRef<T> dy, MatrixRef<T> dx) const {
    DCHECK_GE(params.size(), offset_ + num_params());
    DCHECK_EQ(dy.cols(), out_);
    DCHECK_EQ(dx.cols(), in_);
    DCHECK_EQ(dx.rows(), dy.rows());
    internal::TiledProduct<T>(dy, Weights(params).transpose(), dx);
  }

 private:
  Eigen::Map<const RowMatrix<T>> Weights(absl::Span<const T> params) const {
    return Eigen::Map<const RowMatrix<T>>(params.data() + offset_, in_, out_);
  }
  Eigen::Map<const RowVector<T>> Bias(absl::Span<const T> params) const {
    return Eigen::Map<const RowVector<T>>(params.data() + bias_offset(), out_);
  }

  Eigen::Index in_;
  Eigen::Index out_;
  size_t offset_;
};

// Element-wise max(x, 0). y may be x (in place).
template <typename T>
void ReluForward(ConstMatrixRef<T> x, MatrixRef<T> y) {
  DCHECK_EQ(x.rows(), y.rows());
  DCHECK_EQ(x.cols(), y.cols());
  y = x.cwiseMax(T(0));
}

// dx = dy where the forward OUTPUT y is positive, else 0. Taking y rather
// than x lets callers keep only post-activation values; the two agree since
// y > 0 exactly when x > 0. dx may be dy (in place).
template <typename T>
void ReluBackward(ConstMatrixRef<T> y, ConstMatrixRef<T> dy, MatrixRef<T> dx) {
  DCHECK_EQ(y.rows(), dy.rows());
  DCHECK_EQ(y.cols(), dy.cols());
  dx = (y.array() > T(0)).select(dy, T(0));
}

// Element-wise 1 / (1 + exp(-x)). Saturates cleanly to 0 or 1: exp overflows
// to +inf for very negative x, and 1 / inf is 0. y may be x.
template <typename T>
void SigmoidForward(ConstMatrixRef<T> x, MatrixRef<T> y) {
  DCHECK_EQ(x.rows(), y.rows());
  DCHECK_EQ(x.cols(), y.cols());
  y = ((-x.array()).exp() + T(1)).inverse().matrix();
}

// dx = dy * y * (1 - y), with y the forward output. dx may be dy.
template <typename T>
void SigmoidBackward(ConstMatrixRef<T> y, ConstMatrixRef<T> dy, MatrixRef<T> dx) {
  DCHECK_EQ(y.rows(), dy.rows());
  DCHECK_EQ(y.cols(), dy.cols());
  dx = (dy.array() * y.array() * (T(1) - y.array())).matrix();
}

enum class PoolingMode { kSum, kMean };

// Pools embedding rows per sample over a CSR: sample i's bag is
// rows[offsets[i] .. offsets[i+1]), each an index into `table`
// (num_rows x dim, e.g. the pulled rows of one embedding table). Writes
// out.row(i) = sum (kSum) or mean (kMean) of its bag; empty bags give zero.
// `out` (batch x dim) is typically a column block of the model's
// concatenated input, which is why the rows are pooled straight into it.
// offsets must have out.rows() + 1 non-decreasing entries and every row index
// must be < table.rows().
template <typename T>
void PoolForward(PoolingMode mode, absl::Span<const uint32_t> offsets,
                 absl::Span<const uint32_t> rows, ConstMatrixRef<T> table, MatrixRef<T> out) {
  DCHECK_EQ(offsets.size(), static_cast<size_t>(out.rows()) + 1);
  DCHECK_EQ(table.cols(), out.cols());
  for (Eigen::Index i = 0; i < out.rows(); ++i) {
    const uint32_t begin = offsets[i];
    const uint32_t end = offsets[i + 1];
    DCHECK_LE(begin, end);
    DCHECK_LE(end, rows.size());
    auto o = out.row(i);
    if (begin == end) {
      o.setZero();
      continue;
    }
    DCHECK_LT(rows[begin], table.rows());
    o = table.row(rows[begin]);
    for (uint32_t k = begin + 1; k < end; ++k) {
      DCHECK_LT(rows[k], table.rows());
      o += table.row(rows[k]);
    }
    if (mode == PoolingMode::kMean && end - begin > 1) o *= T(1) / static_cast<T>(end - begin);
  }
}

// Backward of PoolForward: for each sample i and each row r in its bag,
// table_grad.row(r) += dout.row(i) (times 1 / bag size for kMean). ADDS into
// `table_grad` (num_rows x dim) so that a row used by several samples or
// columns accumulates every use; the caller zeroes it once per batch.
template <typename T>
void PoolBackward(PoolingMode mode, absl::Span<const uint32_t> offsets,
                  absl::Span<const uint32_t> rows, ConstMatrixRef<T> dout,
                  MatrixRef<T> table_grad) {
  DCHECK_EQ(offsets.size(), static_cast<size_t>(dout.rows()) + 1);
  DCHECK_EQ(table_grad.cols(), dout.cols());
  for (Eigen::Index i = 0; i < dout.rows(); ++i) {
    const uint32_t begin = offsets[i];
    const uint32_t end = offsets[i + 1];
    DCHECK_LE(begin, end);
    DCHECK_LE(end, rows.size());
    if (begin == end) continue;
    if (mode == PoolingMode::kMean && end - begin > 1) {
      const T scale = T(1) / static_cast<T>(end - begin);
      for (uint32_t k = begin; k < end; ++k) {
        DCHECK_LT(rows[k], table_grad.rows());
        table_grad.row(rows[k]) += scale * dout.row(i);
      }
    } else {
      for (uint32_t k = begin; k < end; ++k) {
        DCHECK_LT(rows[k], table_grad.rows());
        table_grad.row(rows[k]) += dout.row(i);
      }
    }
  }
}

// Binary cross-entropy on logits z against labels y in [0, 1], in the stable
// form max(z, 0) - z y + log(1 + exp(-|z|)), which never evaluates exp of a
// large positive number. Writes dlogits = d(mean loss)/dz = (sigmoid(z) - y) / n
// and returns the SUM of per-sample losses (accumulated in double), so callers
// can average across batches of different sizes. dlogits may alias logits.
// Returns 0 and writes nothing for n = 0.
template <typename T>
double BceWithLogits(ConstVectorRef<T> logits, ConstVectorRef<T> labels, VectorRef<T> dlogits) {
  DCHECK_EQ(logits.size(), labels.size());
  DCHECK_EQ(logits.size(), dlogits.size());
  const Eigen::Index n = logits.size();
  if (n == 0) return 0;
  const auto z = logits.array();
  const auto y = labels.array();
  // Sum first: dlogits may alias logits.
  const double loss =
      (z.max(T(0)) - z * y + (-z.abs()).exp().log1p()).template cast<double>().sum();
  dlogits = ((((-z).exp() + T(1)).inverse() - y) / static_cast<T>(n)).matrix();
  return loss;
}

}  // namespace ember::models

#endif  // EMBER_MODELS_LAYERS_H_
