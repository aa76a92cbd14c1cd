// Finite-difference gradient tests of every layer in layers.h, in double.
#include "models/layers.h"

#include <cmath>
#include <random>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "models/internal/gradient_check.h"

namespace ember::models {
namespace {

using internal::GradientsMatch;
using internal::MaxAbs;
using internal::NumericGradient;
using Mat = Eigen::Map<RowMatrix<double>>;
using ConstMat = Eigen::Map<const RowMatrix<double>>;

class LayersTest : public internal::GradientTest {};

TEST_F(LayersTest, DenseForwardMatchesDefinition) {
  const int b = 3, in = 4, out = 2;
  const size_t offset = 5;
  std::vector<double> params = Random(offset + DenseLayer<double>::NumParams(in, out));
  DenseLayer<double> layer(in, out, offset);
  std::vector<double> x = Random(b * in), y(b * out);
  layer.Forward(params, ConstMat(x.data(), b, in), Mat(y.data(), b, out));
  for (int i = 0; i < b; ++i) {
    for (int j = 0; j < out; ++j) {
      double expect = params[offset + in * out + j];  // b[j]
      for (int k = 0; k < in; ++k) expect += x[i * in + k] * params[offset + k * out + j];
      EXPECT_NEAR(y[i * out + j], expect, 1e-12) << i << "," << j;
    }
  }
}

// Shapes (batch, in, out): a small one, and one large enough in double that
// every product is split into several tiles in every dimension.
class DenseGradientTest : public LayersTest,
                          public ::testing::WithParamInterface<std::tuple<int, int, int>> {};

TEST_P(DenseGradientTest, MatchesFiniteDifferences) {
  // Not a structured binding: clang before 16 cannot capture one in a lambda.
  const int b = std::get<0>(GetParam()), in = std::get<1>(GetParam()), out = std::get<2>(GetParam());
  const size_t offset = 7;  // the layer's slice sits inside a larger vector
  const size_t total = offset + DenseLayer<double>::NumParams(in, out) + 3;
  DenseLayer<double> layer(in, out, offset);
  std::vector<double> params = Random(total);
  std::vector<double> x = Random(b * in);
  std::vector<double> r = Random(b * out);
  std::vector<double> y(b * out);
  auto objective = [&] {
    layer.Forward(params, ConstMat(x.data(), b, in), Mat(y.data(), b, out));
    return Dot(r, y.data());
  };

  // Sentinels outside the slice must survive ParamGradient.
  std::vector<double> grad(total, 123.0);
  std::vector<double> dx(b * in);
  layer.ParamGradient(ConstMat(x.data(), b, in), ConstMat(r.data(), b, out), absl::MakeSpan(grad));
  layer.InputGradient(params, ConstMat(r.data(), b, out), Mat(dx.data(), b, in));

  // The objective is linear in each of params and x, so central differences
  // are exact up to rounding for any step: a large one keeps rounding small
  // even for the large shape's big sums.
  const double h = 1e-2;
  // The large shape has ~20,000 parameters and ~45,000 inputs; check a
  // strided sample of ~150 of each (every tile still gets several).
  auto check = [&](std::vector<double>& wrt, size_t begin, size_t count,
                   const std::vector<double>& analytic, size_t analytic_begin) {
    const size_t stride = count <= 2000 ? 1 : count / 150 + 1;
    std::vector<double> a, n;
    for (size_t i = 0; i < count; i += stride) {
      a.push_back(analytic[analytic_begin + i]);
      n.push_back(NumericGradient(objective, absl::MakeSpan(&wrt[begin + i], 1), h)[0]);
    }
    EXPECT_GT(MaxAbs(a), 0.1);
    return GradientsMatch(a, n);
  };
  EXPECT_TRUE(check(params, offset, layer.num_params(), grad, offset)) << "params";
  for (size_t i = 0; i < offset; ++i) EXPECT_EQ(grad[i], 123.0);
  for (size_t i = offset + layer.num_params(); i < total; ++i) EXPECT_EQ(grad[i], 123.0);
  EXPECT_TRUE(check(x, 0, x.size(), dx, 0)) << "inputs";
}

INSTANTIATE_TEST_SUITE_P(Shapes, DenseGradientTest,
                         ::testing::Values(std::make_tuple(6, 5, 4),
                                           std::make_tuple(200, 140, 100)));

// TiledProduct against Eigen's plain product, over shapes that need one tile,
// several uneven tiles in each dimension, and an empty inner dimension.
TEST_F(LayersTest, TiledProductMatchesPlainProduct) {
  const int shapes[][3] = {{1, 1, 1}, {5, 3, 7}, {513, 301, 257}, {97, 700, 3}, {4, 0, 6}};
  for (const auto& s : shapes) {
    const int m = s[0], k = s[1], n = s[2];
    std::vector<double> a = Random(m * k), b = Random(k * n), c(m * n, 9.0), ct(m * n);
    ConstMat am(a.data(), m, k), bm(b.data(), k, n);
    internal::TiledProduct<double>(am, bm, Mat(c.data(), m, n));
    const RowMatrix<double> expect = am * bm;
    EXPECT_LT((Mat(c.data(), m, n) - expect).cwiseAbs().maxCoeff(), 1e-12)
        << m << "x" << k << "x" << n;
    // Transposed operands, as the backward pass uses them.
    std::vector<double> at(a.size()), bt(b.size());
    Mat(at.data(), k, m) = am.transpose();
    Mat(bt.data(), n, k) = bm.transpose();
    internal::TiledProduct<double>(ConstMat(at.data(), k, m).transpose(),
                                   ConstMat(bt.data(), n, k).transpose(), Mat(ct.data(), m, n));
    EXPECT_LT((Mat(ct.data(), m, n) - expect).cwiseAbs().maxCoeff(), 1e-12)
        << m << "x" << k << "x" << n;
  }
}

// The check must be able to fail: a gradient off in one entry, or a layer
// whose backward forgets a transpose, is caught.
TEST_F(LayersTest, GradientCheckDetectsWrongGradients) {
  const int b = 4, in = 3, out = 3;
  DenseLayer<double> layer(in, out, 0);
  std::vector<double> params = Random(layer.num_params());
  std::vector<double> x = Random(b * in), r = Random(b * out), y(b * out);
  auto objective = [&] {
    layer.Forward(params, ConstMat(x.data(), b, in), Mat(y.data(), b, out));
    return Dot(r, y.data());
  };
  std::vector<double> grad(layer.num_params());
  layer.ParamGradient(ConstMat(x.data(), b, in), ConstMat(r.data(), b, out), absl::MakeSpan(grad));
  const std::vector<double> numeric = NumericGradient(objective, absl::MakeSpan(params));
  ASSERT_TRUE(GradientsMatch(grad, numeric));

  std::vector<double> off_by_a_bit = grad;
  off_by_a_bit[5] += 1e-4;
  EXPECT_FALSE(GradientsMatch(off_by_a_bit, numeric));

  // dx = dy W (no transpose) instead of dy W^T: same shapes since in == out.
  std::vector<double> dx(b * in), num_x = NumericGradient(objective, absl::MakeSpan(x));
  Mat(dx.data(), b, in).noalias() = ConstMat(r.data(), b, out) * ConstMat(params.data(), in, out);
  EXPECT_FALSE(GradientsMatch(dx, num_x));
}

TEST_F(LayersTest, ReluGradientMatchesFiniteDifferences) {
  const int b = 5, n = 7;
  std::vector<double> x = RandomAwayFromZero(b * n), r = Random(b * n), y(b * n);
  auto objective = [&] {
    ReluForward<double>(ConstMat(x.data(), b, n), Mat(y.data(), b, n));
    return Dot(r, y.data());
  };
  objective();
  for (size_t i = 0; i < x.size(); ++i) EXPECT_EQ(y[i], std::max(x[i], 0.0));
  std::vector<double> dx(b * n);
  ReluBackward<double>(ConstMat(y.data(), b, n), ConstMat(r.data(), b, n), Mat(dx.data(), b, n));
  EXPECT_TRUE(GradientsMatch(dx, NumericGradient(objective, absl::MakeSpan(x))));

  // In place, as the model uses it.
  std::vector<double> inplace = r;
  ReluBackward<double>(ConstMat(y.data(), b, n), ConstMat(inplace.data(), b, n),
                       Mat(inplace.data(), b, n));
  EXPECT_EQ(inplace, dx);
}

TEST_F(LayersTest, SigmoidGradientMatchesFiniteDifferences) {
  const int b = 4, n = 6;
  std::vector<double> x = Random(b * n, -4, 4), r = Random(b * n), y(b * n);
  auto objective = [&] {
    SigmoidForward<double>(ConstMat(x.data(), b, n), Mat(y.data(), b, n));
    return Dot(r, y.data());
  };
  objective();
  for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(y[i], 1 / (1 + std::exp(-x[i])), 1e-15);
  std::vector<double> dx(b * n);
  SigmoidBackward<double>(ConstMat(y.data(), b, n), ConstMat(r.data(), b, n), Mat(dx.data(), b, n));
  EXPECT_TRUE(GradientsMatch(dx, NumericGradient(objective, absl::MakeSpan(x))));
  EXPECT_GT(MaxAbs(dx), 0.01);
}

TEST_F(LayersTest, SigmoidSaturatesWithoutNan) {
  std::vector<float> x = {-1000.f, -50.f, 0.f, 50.f, 1000.f}, y(5);
  SigmoidForward<float>(Eigen::Map<const RowMatrix<float>>(x.data(), 1, 5),
                        Eigen::Map<RowMatrix<float>>(y.data(), 1, 5));
  EXPECT_EQ(y[0], 0.f);
  EXPECT_NEAR(y[1], 0.f, 1e-20);
  EXPECT_EQ(y[2], 0.5f);
  EXPECT_EQ(y[3], 1.f);
  EXPECT_EQ(y[4], 1.f);
}

// A CSR with an empty bag, a row repeated inside one bag, and rows shared
// between samples.
struct PoolCase {
  std::vector<uint32_t> offsets = {0, 2, 2, 5, 6, 9};
  std::vector<uint32_t> rows = {0, 3, /*empty*/ 1, 1, 4, 3, 0, 2, 3};
  int batch = 5;
  int num_rows = 6;  // row 5 is never used: its gradient must stay as it was
  int dim = 3;
};

class PoolTest : public LayersTest, public ::testing::WithParamInterface<PoolingMode> {};

TEST_P(PoolTest, ForwardMatchesDefinition) {
  const PoolingMode mode = GetParam();
  PoolCase c;
  std::vector<double> table = Random(c.num_rows * c.dim);
  // Pool into a column block of a wider matrix, as the model does.
  const int width = c.dim + 4, at = 2;
  std::vector<double> out(c.batch * width, 7.0);
  Mat wide(out.data(), c.batch, width);
  PoolForward<double>(mode, c.offsets, c.rows, ConstMat(table.data(), c.num_rows, c.dim),
                      wide.middleCols(at, c.dim));
  for (int i = 0; i < c.batch; ++i) {
    const uint32_t n = c.offsets[i + 1] - c.offsets[i];
    for (int d = 0; d < c.dim; ++d) {
      double expect = 0;
      for (uint32_t k = c.offsets[i]; k < c.offsets[i + 1]; ++k) {
        expect += table[c.rows[k] * c.dim + d];
      }
      if (mode == PoolingMode::kMean && n > 0) expect /= n;
      EXPECT_NEAR(wide(i, at + d), expect, 1e-14) << i << "," << d;
    }
    // Columns outside the block are not touched.
    for (int d = 0; d < width; ++d) {
      if (d < at || d >= at + c.dim) {
        EXPECT_EQ(wide(i, d), 7.0);
      }
    }
  }
  for (int d = 0; d < c.dim; ++d) EXPECT_EQ(wide(1, at + d), 0.0) << "empty bag pools to zero";
}

TEST_P(PoolTest, BackwardMatchesFiniteDifferencesAndAccumulates) {
  const PoolingMode mode = GetParam();
  PoolCase c;
  std::vector<double> table = Random(c.num_rows * c.dim);
  std::vector<double> r = Random(c.batch * c.dim), out(c.batch * c.dim);
  auto objective = [&] {
    PoolForward<double>(mode, c.offsets, c.rows, ConstMat(table.data(), c.num_rows, c.dim),
                        Mat(out.data(), c.batch, c.dim));
    return Dot(r, out.data());
  };
  // Start from a non-zero gradient: backward must add, not overwrite.
  std::vector<double> start = Random(c.num_rows * c.dim), grad = start;
  PoolBackward<double>(mode, c.offsets, c.rows, ConstMat(r.data(), c.batch, c.dim),
                       Mat(grad.data(), c.num_rows, c.dim));
  std::vector<double> added(grad.size());
  for (size_t i = 0; i < grad.size(); ++i) added[i] = grad[i] - start[i];
  const std::vector<double> numeric = NumericGradient(objective, absl::MakeSpan(table));
  EXPECT_TRUE(GradientsMatch(added, numeric, 1e-6, 1e-8));
  EXPECT_GT(MaxAbs(added), 0.05);
  for (int d = 0; d < c.dim; ++d) EXPECT_EQ(added[5 * c.dim + d], 0.0) << "unused row";
}

INSTANTIATE_TEST_SUITE_P(Modes, PoolTest, ::testing::Values(PoolingMode::kSum, PoolingMode::kMean),
                         [](const auto& info) {
                           return info.param == PoolingMode::kSum ? "Sum" : "Mean";
                         });

TEST_F(LayersTest, MeanPoolingWithSumBackwardIsDetected) {
  PoolCase c;
  std::vector<double> table = Random(c.num_rows * c.dim);
  std::vector<double> r = Random(c.batch * c.dim), out(c.batch * c.dim);
  auto objective = [&] {
    PoolForward<double>(PoolingMode::kMean, c.offsets, c.rows,
                        ConstMat(table.data(), c.num_rows, c.dim), Mat(out.data(), c.batch, c.dim));
    return Dot(r, out.data());
  };
  std::vector<double> grad(table.size(), 0.0);
  PoolBackward<double>(PoolingMode::kSum, c.offsets, c.rows, ConstMat(r.data(), c.batch, c.dim),
                       Mat(grad.data(), c.num_rows, c.dim));
  EXPECT_FALSE(GradientsMatch(grad, NumericGradient(objective, absl::MakeSpan(table))));
}

TEST_F(LayersTest, BceWithLogitsValueAndGradient) {
  const int n = 9;
  std::vector<double> z = Random(n, -5, 5);
  std::vector<double> y = {0, 1, 1, 0, 0.3, 1, 0, 0.75, 1};
  std::vector<double> dz(n);
  auto mean_loss = [&] {
    std::vector<double> scratch(n);
    return BceWithLogits<double>(Eigen::Map<const ColVector<double>>(z.data(), n),
                                 Eigen::Map<const ColVector<double>>(y.data(), n),
                                 Eigen::Map<ColVector<double>>(scratch.data(), n)) /
           n;
  };
  const double sum = BceWithLogits<double>(Eigen::Map<const ColVector<double>>(z.data(), n),
                                           Eigen::Map<const ColVector<double>>(y.data(), n),
                                           Eigen::Map<ColVector<double>>(dz.data(), n));
  double expect = 0;
  for (int i = 0; i < n; ++i) {
    const double p = 1 / (1 + std::exp(-z[i]));
    expect -= y[i] * std::log(p) + (1 - y[i]) * std::log(1 - p);
  }
  EXPECT_NEAR(sum, expect, 1e-12);
  EXPECT_TRUE(GradientsMatch(dz, NumericGradient(mean_loss, absl::MakeSpan(z))));
  EXPECT_GT(MaxAbs(dz), 0.01);
}

TEST_F(LayersTest, BceWithLogitsIsStableForLargeLogits) {
  std::vector<float> z = {-200.f, 200.f, -200.f, 200.f, 0.f}, y = {0.f, 1.f, 1.f, 0.f, 1.f}, dz(5);
  const double sum = BceWithLogits<float>(Eigen::Map<const ColVector<float>>(z.data(), 5),
                                          Eigen::Map<const ColVector<float>>(y.data(), 5),
                                          Eigen::Map<ColVector<float>>(dz.data(), 5));
  // Two confident right answers (~0), two confident wrong ones (200 each),
  // one coin flip (log 2).
  EXPECT_NEAR(sum, 400 + std::log(2.0), 1e-4);
  EXPECT_NEAR(dz[0], 0.f, 1e-7);
  EXPECT_NEAR(dz[1], 0.f, 1e-7);
  EXPECT_NEAR(dz[2], -1.f / 5, 1e-7);
  EXPECT_NEAR(dz[3], 1.f / 5, 1e-7);
  EXPECT_NEAR(dz[4], -0.5f / 5, 1e-7);

  // Aliasing dlogits with logits is allowed.
  std::vector<float> inplace = z;
  const double sum2 = BceWithLogits<float>(Eigen::Map<const ColVector<float>>(inplace.data(), 5),
                                           Eigen::Map<const ColVector<float>>(y.data(), 5),
                                           Eigen::Map<ColVector<float>>(inplace.data(), 5));
  EXPECT_EQ(sum2, sum);
  EXPECT_EQ(inplace, dz);
}

}  // namespace
}  // namespace ember::models
