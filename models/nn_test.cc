// Tests of the building blocks in nn.h: forward values against the formulas
// of docs/models.md and finite-difference gradients in double.
#include "models/nn.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "models/internal/gradient_check.h"

namespace ember::models {

// Compile every member of the production (float) instantiations.
template class Mlp<float>;
template class ActivationUnit<float>;

namespace {

using internal::GradientsMatch;
using internal::MaxAbs;
using internal::NumericGradient;
using Mat = Eigen::Map<RowMatrix<double>>;
using ConstMat = Eigen::Map<const RowMatrix<double>>;
using Vec = Eigen::Map<ColVector<double>>;
using ConstVec = Eigen::Map<const ColVector<double>>;

constexpr double kSentinel = 123.0;

std::string ActName(Act act) {
  switch (act) {
    case Act::kRelu:
      return "Relu";
    case Act::kSigmoid:
      return "Sigmoid";
    case Act::kPrelu:
      return "Prelu";
    case Act::kDice:
      return "Dice";
  }
  return "?";
}

double Sigmoid(double x) { return 1 / (1 + std::exp(-x)); }

class NnTest : public internal::GradientTest {
 protected:
  NnTest() : GradientTest(7) {}
  static std::vector<double> Slice(const std::vector<double>& v, size_t begin, size_t n) {
    return std::vector<double>(v.begin() + begin, v.begin() + begin + n);
  }
  // Numeric gradient of f w.r.t. v[begin, begin + n).
  static std::vector<double> NumericSlice(const std::function<double()>& f, std::vector<double>& v,
                                          size_t begin, size_t n) {
    return NumericGradient(f, absl::MakeSpan(v).subspan(begin, n));
  }

};

// ---------------------------------------------------------------------------
// PReLU

TEST_F(NnTest, PreluForwardAndGradient) {
  const int b = 5, n = 4;
  std::vector<double> x = RandomAwayFromZero(b * n), alpha = Random(n, -0.5, 0.8);
  std::vector<double> r = Random(b * n), y(b * n);
  auto objective = [&] {
    PreluForward<double>(alpha, ConstMat(x.data(), b, n), Mat(y.data(), b, n));
    return Dot(r, y.data());
  };
  objective();
  for (int i = 0; i < b; ++i) {
    for (int j = 0; j < n; ++j) {
      const double v = x[i * n + j];
      EXPECT_DOUBLE_EQ(y[i * n + j], v > 0 ? v : alpha[j] * v) << i << "," << j;
    }
  }
  std::vector<double> dx(b * n), dalpha(n, kSentinel);
  PreluBackward<double>(alpha, ConstMat(x.data(), b, n), ConstMat(r.data(), b, n),
                        Mat(dx.data(), b, n), absl::MakeSpan(dalpha));
  EXPECT_TRUE(GradientsMatch(dx, NumericGradient(objective, absl::MakeSpan(x))));
  EXPECT_TRUE(GradientsMatch(dalpha, NumericGradient(objective, absl::MakeSpan(alpha))));
  EXPECT_GT(MaxAbs(dalpha), 0.05);

  // dx may alias dy.
  std::vector<double> inplace = r, dalpha2(n);
  PreluBackward<double>(alpha, ConstMat(x.data(), b, n), ConstMat(inplace.data(), b, n),
                        Mat(inplace.data(), b, n), absl::MakeSpan(dalpha2));
  EXPECT_EQ(inplace, dx);
  EXPECT_EQ(dalpha2, dalpha);
}

// ---------------------------------------------------------------------------
// Dice

struct DiceCase {
  int rows = 7;
  int units = 3;
  double eps = 1e-3;
};

TEST_F(NnTest, DiceTrainWritesBatchStatisticsAndGradientsFlowThroughThem) {
  const DiceCase c;
  const int rows = c.rows, n = c.units;
  std::vector<double> x = Random(rows * n, -2, 2), alpha = Random(n, -0.5, 0.5);
  const std::vector<double> avg_mean = Random(n), avg_var = Random(n, 0.5, 2);
  std::vector<double> r = Random(rows * n), y(rows * n), bm(n), bv(n);
  DiceCache<double> cache;
  auto objective = [&] {
    DiceForward<double>(Mode::kTrain, alpha, avg_mean, avg_var, c.eps, ConstMat(x.data(), rows, n),
                        Mat(y.data(), rows, n), absl::MakeSpan(bm), absl::MakeSpan(bv), &cache);
    return Dot(r, y.data());
  };
  objective();

  // Forward: biased column statistics, then the formula.
  for (int j = 0; j < n; ++j) {
    double m = 0, v = 0;
    for (int i = 0; i < rows; ++i) m += x[i * n + j];
    m /= rows;
    for (int i = 0; i < rows; ++i) v += (x[i * n + j] - m) * (x[i * n + j] - m);
    v /= rows;
    EXPECT_NEAR(bm[j], m, 1e-14);
    EXPECT_NEAR(bv[j], v, 1e-14);
    for (int i = 0; i < rows; ++i) {
      const double xi = x[i * n + j];
      const double p = Sigmoid((xi - m) / std::sqrt(v + c.eps));
      EXPECT_NEAR(y[i * n + j], p * xi + (1 - p) * alpha[j] * xi, 1e-14);
    }
  }

  std::vector<double> dx(rows * n), dalpha(n, kSentinel);
  DiceBackward<double>(alpha, ConstMat(x.data(), rows, n), ConstMat(r.data(), rows, n), cache,
                       Mat(dx.data(), rows, n), absl::MakeSpan(dalpha));
  const std::vector<double> num_x = NumericGradient(objective, absl::MakeSpan(x));
  EXPECT_TRUE(GradientsMatch(dx, num_x));
  EXPECT_TRUE(GradientsMatch(dalpha, NumericGradient(objective, absl::MakeSpan(alpha))));
  EXPECT_GT(MaxAbs(dx), 0.1);
  EXPECT_GT(MaxAbs(dalpha), 0.1);

  // The statistics' share of the gradient is not negligible: the gradient
  // with mean and var held fixed is caught.
  std::vector<double> fixed(rows * n);
  for (int i = 0; i < rows; ++i) {
    for (int j = 0; j < n; ++j) {
      const double xi = x[i * n + j], p = cache.p(i, j), dy = r[i * n + j];
      fixed[i * n + j] = dy * (alpha[j] + (1 - alpha[j]) * p) +
                         dy * xi * (1 - alpha[j]) * p * (1 - p) * cache.inv_std[j];
    }
  }
  EXPECT_FALSE(GradientsMatch(fixed, num_x));
}

TEST_F(NnTest, DiceEvalUsesGivenAverages) {
  const DiceCase c;
  const int rows = c.rows, n = c.units;
  const std::vector<double> x = Random(rows * n, -2, 2), alpha = Random(n, -0.5, 0.5);
  const std::vector<double> mean = Random(n), var = Random(n, 0.5, 2);
  std::vector<double> y(rows * n);
  DiceCache<double> cache;
  DiceForward<double>(Mode::kEval, alpha, mean, var, c.eps, ConstMat(x.data(), rows, n),
                      Mat(y.data(), rows, n), {}, {}, &cache);
  for (int i = 0; i < rows; ++i) {
    for (int j = 0; j < n; ++j) {
      const double xi = x[i * n + j];
      const double p = Sigmoid((xi - mean[j]) / std::sqrt(var[j] + c.eps));
      EXPECT_NEAR(y[i * n + j], p * xi + (1 - p) * alpha[j] * xi, 1e-14) << i << "," << j;
    }
  }
}

TEST_F(NnTest, DiceWithoutRowsReportsTheAverages) {
  const int n = 3;
  const std::vector<double> alpha = Random(n), mean = Random(n), var = Random(n, 0.5, 2);
  std::vector<double> bm(n, kSentinel), bv(n, kSentinel), dalpha(n, kSentinel);
  DiceCache<double> cache;
  RowMatrix<double> x(0, n), y(0, n), dx(0, n);
  DiceForward<double>(Mode::kTrain, alpha, mean, var, 1e-3, x, y, absl::MakeSpan(bm),
                      absl::MakeSpan(bv), &cache);
  EXPECT_EQ(bm, mean);
  EXPECT_EQ(bv, var);
  DiceBackward<double>(alpha, x, y, cache, dx, absl::MakeSpan(dalpha));
  EXPECT_EQ(dalpha, std::vector<double>(n, 0.0));
}

// ---------------------------------------------------------------------------
// Softmax

TEST_F(NnTest, SoftmaxValuesAndGradient) {
  const int b = 4, n = 5;
  std::vector<double> x = Random(b * n, -3, 3), r = Random(b * n), y(b * n);
  auto objective = [&] {
    SoftmaxForward<double>(ConstMat(x.data(), b, n), Mat(y.data(), b, n));
    return Dot(r, y.data());
  };
  objective();
  for (int i = 0; i < b; ++i) {
    double z = 0;
    for (int j = 0; j < n; ++j) z += std::exp(x[i * n + j]);
    for (int j = 0; j < n; ++j) EXPECT_NEAR(y[i * n + j], std::exp(x[i * n + j]) / z, 1e-15);
  }
  std::vector<double> dx(b * n);
  SoftmaxBackward<double>(ConstMat(y.data(), b, n), ConstMat(r.data(), b, n), Mat(dx.data(), b, n));
  // dx may alias dy (models run the gates' backward in place).
  std::vector<double> inplace_dx = r;
  SoftmaxBackward<double>(ConstMat(y.data(), b, n), ConstMat(inplace_dx.data(), b, n),
                          Mat(inplace_dx.data(), b, n));
  EXPECT_EQ(inplace_dx, dx);
  EXPECT_TRUE(GradientsMatch(dx, NumericGradient(objective, absl::MakeSpan(x))));
  EXPECT_GT(MaxAbs(dx), 0.01);

  // y may alias x.
  objective();
  std::vector<double> inplace = x;
  SoftmaxForward<double>(ConstMat(inplace.data(), b, n), Mat(inplace.data(), b, n));
  EXPECT_EQ(inplace, y);
  // Nor does the buffers' alignment change a bit (x and y one and three
  // doubles past an aligned start).
  std::vector<double> shifted_x(b * n + 1), shifted_y(b * n + 3);
  std::copy(x.begin(), x.end(), shifted_x.begin() + 1);
  SoftmaxForward<double>(ConstMat(shifted_x.data() + 1, b, n), Mat(shifted_y.data() + 3, b, n));
  EXPECT_EQ(std::vector<double>(shifted_y.begin() + 3, shifted_y.end()), y);
}

TEST_F(NnTest, SoftmaxIsStableForLargeLogits) {
  std::vector<float> x = {1000.f, 1001.f, -1000.f, 88.f, 89.f, 90.f}, y(6);
  SoftmaxForward<float>(Eigen::Map<const RowMatrix<float>>(x.data(), 2, 3),
                        Eigen::Map<RowMatrix<float>>(y.data(), 2, 3));
  EXPECT_NEAR(y[0], 1 / (1 + std::exp(1.0)), 1e-6);
  EXPECT_NEAR(y[1], 1 / (1 + std::exp(-1.0)), 1e-6);
  EXPECT_EQ(y[2], 0.f);
  const double z = std::exp(-2.0) + std::exp(-1.0) + 1;
  EXPECT_NEAR(y[3], std::exp(-2.0) / z, 1e-6);
  EXPECT_NEAR(y[5], 1 / z, 1e-6);
}

// ---------------------------------------------------------------------------
// Mlp

// Finds params (and inputs) for which every hidden pre-activation of `mlp`
// is at least `margin` away from 0, so that finite differences never cross
// a ReLU/PReLU kink. `draw` redraws them.
template <typename Draw, typename Pre>
::testing::AssertionResult AwayFromKinks(Draw draw, Pre pre_abs_min, double margin = 1e-3) {
  for (int attempt = 0; attempt < 200; ++attempt) {
    draw();
    if (pre_abs_min() >= margin) return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "no draw kept the pre-activations away from 0";
}

double MinAbsPre(const Mlp<double>::Cache& cache, const std::vector<Eigen::Index>& widths,
                 size_t activated_layers) {
  double m = std::numeric_limits<double>::infinity();
  for (size_t l = 0; l < activated_layers; ++l) {
    m = std::min(m, cache.Pre(l, widths[l + 1]).cwiseAbs().minCoeff());
  }
  return m;
}

class MlpGradientTest : public NnTest,
                        public ::testing::WithParamInterface<std::tuple<Act, bool>> {};

TEST_P(MlpGradientTest, MatchesFiniteDifferences) {
  const auto [act, activate_last] = GetParam();
  const std::vector<Eigen::Index> widths = {5, 6, 4, 3};
  const int rows = 7, in = 5, out = 3;
  const size_t param_offset = 4, state_offset = 3;
  Mlp<double> mlp(widths, act, activate_last, param_offset, state_offset, 1e-3);
  EXPECT_EQ(mlp.in_dim(), in);
  EXPECT_EQ(mlp.out_dim(), out);
  const size_t total = param_offset + mlp.num_params() + 5;
  const size_t state_total = state_offset + mlp.num_state() + 2;
  std::vector<double> params, x;
  std::vector<double> state = Random(state_total, 0.5, 1.5), stats(state_total);
  const std::vector<double> r = Random(rows * out);
  Mlp<double>::Cache cache;
  auto objective = [&] {
    const RowMatrix<double>& y = mlp.Forward(
        Mode::kTrain, params, state, ConstMat(x.data(), rows, in), &cache, absl::MakeSpan(stats));
    return Dot(r, y.data());
  };
  const size_t activated = activate_last ? 3 : 2;
  ASSERT_TRUE(AwayFromKinks(
      [&] {
        params = Random(total);
        x = Random(rows * in, -2, 2);
      },
      [&] {
        objective();
        return MinAbsPre(cache, widths, activated);
      }));

  std::vector<double> grad(total, kSentinel), dx(rows * in);
  objective();
  MatrixRef<double> dx_ref = Mat(dx.data(), rows, in);
  mlp.Backward(params, ConstMat(x.data(), rows, in), ConstMat(r.data(), rows, out), &cache,
               absl::MakeSpan(grad), &dx_ref);
  const std::vector<double> g = Slice(grad, param_offset, mlp.num_params());
  EXPECT_TRUE(GradientsMatch(g, NumericSlice(objective, params, param_offset, mlp.num_params())));
  EXPECT_GT(MaxAbs(g), 0.05);
  EXPECT_TRUE(GradientsMatch(dx, NumericGradient(objective, absl::MakeSpan(x))));
  EXPECT_GT(MaxAbs(dx), 0.01);
  for (size_t i = 0; i < param_offset; ++i) EXPECT_EQ(grad[i], kSentinel);
  for (size_t i = param_offset + mlp.num_params(); i < total; ++i) EXPECT_EQ(grad[i], kSentinel);

  // Without dx: the same parameter gradient, overwritten (not added).
  objective();
  mlp.Backward(params, ConstMat(x.data(), rows, in), ConstMat(r.data(), rows, out), &cache,
               absl::MakeSpan(grad), nullptr);
  EXPECT_EQ(Slice(grad, param_offset, mlp.num_params()), g);
}

std::string MlpCaseName(const ::testing::TestParamInfo<std::tuple<Act, bool>>& info) {
  return ActName(std::get<0>(info.param)) +
         (std::get<1>(info.param) ? "ActivateLast" : "LinearLast");
}

INSTANTIATE_TEST_SUITE_P(Acts, MlpGradientTest,
                         ::testing::Combine(::testing::Values(Act::kRelu, Act::kSigmoid,
                                                              Act::kPrelu, Act::kDice),
                                            ::testing::Bool()),
                         MlpCaseName);

// Pins the parameter layout: per layer W (row-major in x out), b, alpha.
TEST_F(NnTest, MlpParameterLayout) {
  const size_t offset = 3;
  Mlp<double> mlp({3, 4, 2}, Act::kPrelu, /*activate_last=*/true, offset, 0, 1e-3);
  ASSERT_EQ(mlp.num_params(), (3 * 4 + 4 + 4) + (4 * 2 + 2 + 2));
  EXPECT_EQ(mlp.num_state(), 0u);
  const std::vector<double> params = Random(offset + mlp.num_params());
  const int rows = 4;
  const std::vector<double> x = Random(rows * 3);
  Mlp<double>::Cache cache;
  const RowMatrix<double>& y =
      mlp.Forward(Mode::kEval, params, {}, ConstMat(x.data(), rows, 3), &cache, {});
  ASSERT_EQ(y.rows(), rows);
  ASSERT_EQ(y.cols(), 2);
  auto layer = [&](const std::vector<double>& in, int n_in, int n_out, size_t off) {
    std::vector<double> o(rows * n_out);
    for (int i = 0; i < rows; ++i) {
      for (int j = 0; j < n_out; ++j) {
        double z = params[off + n_in * n_out + j];
        for (int k = 0; k < n_in; ++k) z += in[i * n_in + k] * params[off + k * n_out + j];
        const double alpha = params[off + n_in * n_out + n_out + j];
        o[i * n_out + j] = z > 0 ? z : alpha * z;
      }
    }
    return o;
  };
  const std::vector<double> h = layer(x, 3, 4, offset);
  const std::vector<double> expect = layer(h, 4, 2, offset + 20);
  for (int i = 0; i < rows * 2; ++i) EXPECT_NEAR(y.data()[i], expect[i], 1e-14) << i;
}

TEST_F(NnTest, MlpWritesOnlyItsSliceOfGrad) {
  for (Act act : {Act::kRelu, Act::kDice}) {
    const size_t offset = 11;
    Mlp<double> mlp({4, 5, 2}, act, false, offset, 0, 1e-3);
    const size_t total = offset + mlp.num_params() + 9;
    const std::vector<double> params = Random(total), x = Random(6 * 4), r = Random(6 * 2);
    const std::vector<double> state = Random(mlp.num_state(), 0.5, 1);
    std::vector<double> stats(mlp.num_state()), grad(total, kSentinel);
    Mlp<double>::Cache cache;
    mlp.Forward(Mode::kTrain, params, state, ConstMat(x.data(), 6, 4), &cache,
                absl::MakeSpan(stats));
    mlp.Backward(params, ConstMat(x.data(), 6, 4), ConstMat(r.data(), 6, 2), &cache,
                 absl::MakeSpan(grad), nullptr);
    for (size_t i = 0; i < total; ++i) {
      const bool inside = i >= offset && i < offset + mlp.num_params();
      if (inside) {
        EXPECT_NE(grad[i], kSentinel) << ActName(act) << " " << i;
      } else {
        EXPECT_EQ(grad[i], kSentinel) << ActName(act) << " " << i;
      }
    }
  }
}

// State layout: per Dice layer, mean then var. Train mode writes the batch
// statistics there in `stats`; eval mode with those as the averages
// reproduces the training output.
TEST_F(NnTest, MlpDiceStatisticsLayout) {
  const size_t state_offset = 6;
  const int rows = 9;
  Mlp<double> linear_last({4, 5, 3, 2}, Act::kDice, false, 0, state_offset, 1e-3);
  EXPECT_EQ(linear_last.num_state(), 2u * (5 + 3));
  Mlp<double> mlp({4, 5, 3, 2}, Act::kDice, /*activate_last=*/true, 0, state_offset, 1e-3);
  ASSERT_EQ(mlp.num_state(), 2u * (5 + 3 + 2));
  const std::vector<double> params = Random(mlp.num_params()), x = Random(rows * 4, -2, 2);
  const size_t total = state_offset + mlp.num_state() + 4;
  std::vector<double> state = Random(total, 0.5, 1.5), stats(total, kSentinel);
  Mlp<double>::Cache cache;
  const RowMatrix<double> train = mlp.Forward(
      Mode::kTrain, params, state, ConstMat(x.data(), rows, 4), &cache, absl::MakeSpan(stats));
  size_t at = state_offset;
  for (int l = 0; l < 3; ++l) {
    const RowMatrix<double> pre = cache.Pre(l, std::vector<Eigen::Index>{4, 5, 3, 2}[l + 1]);
    const RowVector<double> mean = pre.colwise().mean();
    const RowVector<double> var = (pre.rowwise() - mean).array().square().colwise().mean();
    for (Eigen::Index j = 0; j < pre.cols(); ++j) {
      EXPECT_NEAR(stats[at + j], mean[j], 1e-14) << "layer " << l << " mean " << j;
      EXPECT_NEAR(stats[at + pre.cols() + j], var[j], 1e-14) << "layer " << l << " var " << j;
    }
    at += 2 * pre.cols();
  }
  for (size_t i = 0; i < state_offset; ++i) EXPECT_EQ(stats[i], kSentinel);
  for (size_t i = at; i < total; ++i) EXPECT_EQ(stats[i], kSentinel);

  const RowMatrix<double> eval =
      mlp.Forward(Mode::kEval, params, stats, ConstMat(x.data(), rows, 4), &cache, {});
  EXPECT_LT((eval - train).cwiseAbs().maxCoeff(), 1e-13);
  // ... and the averages do matter.
  const RowMatrix<double>& other =
      mlp.Forward(Mode::kEval, params, state, ConstMat(x.data(), rows, 4), &cache, {});
  EXPECT_GT((other - train).cwiseAbs().maxCoeff(), 1e-3);
}

// ---------------------------------------------------------------------------
// ActivationUnit

// Six samples: three items, none, one, four, two, and one item.
struct UnitCase {
  Eigen::Index dq = 3;
  Eigen::Index dk = 3;
  std::vector<Eigen::Index> hidden = {4, 3};
  std::vector<uint32_t> segments = {0, 3, 3, 4, 8, 10, 11};
  size_t param_offset = 5;
  size_t state_offset = 2;
  double eps = 1e-3;
  int b() const { return static_cast<int>(segments.size()) - 1; }
  int rows() const { return static_cast<int>(segments.back()); }
  Eigen::Index in() const { return 3 * dq + dk; }
};

// [q_i, k_r, q_i - k_r[:dq], q_i * k_r[:dq]] for every row.
RowMatrix<double> Concatenate(const UnitCase& c, const std::vector<double>& q,
                              const std::vector<double>& k) {
  const Eigen::Index dq = c.dq, dk = c.dk;
  RowMatrix<double> x(c.rows(), c.in());
  ConstMat qm(q.data(), c.b(), dq), km(k.data(), c.rows(), dk);
  for (int i = 0; i < c.b(); ++i) {
    for (uint32_t r = c.segments[i]; r < c.segments[i + 1]; ++r) {
      x.row(r) << qm.row(i), km.row(r), qm.row(i) - km.row(r).head(dq),
          qm.row(i).cwiseProduct(km.row(r).head(dq));
    }
  }
  return x;
}

class ActivationUnitTest : public NnTest,
                           public ::testing::WithParamInterface<std::tuple<Act, int>> {
 protected:
  void SetUp() override {
    act_ = std::get<0>(GetParam());
    c_.dk = c_.dq + std::get<1>(GetParam());
  }

  Act act_ = Act::kRelu;
  UnitCase c_;
};

TEST_P(ActivationUnitTest, MatchesFiniteDifferences) {
  const UnitCase& c = c_;
  ActivationUnit<double> unit(c.dq, c.dk, c.hidden, act_, c.param_offset, c.state_offset, c.eps);
  // The equivalent Mlp, only to watch the kinks (its equality with the unit
  // is the next test).
  Mlp<double> mlp({c.in(), 4, 3, 1}, act_, false, c.param_offset, c.state_offset, c.eps);
  ASSERT_EQ(unit.num_params(), mlp.num_params());
  ASSERT_EQ(unit.num_state(), mlp.num_state());
  const size_t total = c.param_offset + unit.num_params() + 4;
  const size_t state_total = c.state_offset + unit.num_state() + 3;
  const int b = c.b(), rows = c.rows();
  std::vector<double> params, q, k, scores(rows), stats(state_total);
  const std::vector<double> state = Random(state_total, 0.5, 1.5), r = Random(rows);
  ActivationUnit<double>::Cache cache;
  Mlp<double>::Cache mlp_cache;
  auto objective = [&] {
    unit.Forward(Mode::kTrain, params, state, ConstMat(q.data(), b, c.dq),
                 ConstMat(k.data(), rows, c.dk), c.segments, Vec(scores.data(), rows), &cache,
                 absl::MakeSpan(stats));
    return Dot(r, scores.data());
  };
  ASSERT_TRUE(AwayFromKinks(
      [&] {
        params = Random(total);
        q = Random(b * c.dq, -1.5, 1.5);
        k = Random(rows * c.dk, -1.5, 1.5);
      },
      [&] {
        const RowMatrix<double> x = Concatenate(c, q, k);
        mlp.Forward(Mode::kTrain, params, state, x, &mlp_cache, absl::MakeSpan(stats));
        return MinAbsPre(mlp_cache, {c.in(), 4, 3, 1}, 2);
      }));

  // dq and dk start non-zero: Backward adds.
  const std::vector<double> dq0 = Random(b * c.dq), dk0 = Random(rows * c.dk);
  std::vector<double> grad(total, kSentinel), dq = dq0, dk = dk0;
  objective();
  unit.Backward(params, ConstMat(q.data(), b, c.dq), ConstMat(k.data(), rows, c.dk), c.segments,
                ConstVec(r.data(), rows), &cache, absl::MakeSpan(grad), Mat(dq.data(), b, c.dq),
                Mat(dk.data(), rows, c.dk));
  for (size_t i = 0; i < dq.size(); ++i) dq[i] -= dq0[i];
  for (size_t i = 0; i < dk.size(); ++i) dk[i] -= dk0[i];

  const std::vector<double> g = Slice(grad, c.param_offset, unit.num_params());
  EXPECT_TRUE(GradientsMatch(g, NumericSlice(objective, params, c.param_offset, g.size())));
  EXPECT_GT(MaxAbs(g), 0.05);
  for (size_t i = 0; i < c.param_offset; ++i) EXPECT_EQ(grad[i], kSentinel);
  for (size_t i = c.param_offset + g.size(); i < total; ++i) EXPECT_EQ(grad[i], kSentinel);
  // Integer-level tolerance for the entries that should be exactly zero: the
  // sample without items gets no query gradient.
  const std::vector<double> num_q = NumericGradient(objective, absl::MakeSpan(q));
  EXPECT_TRUE(GradientsMatch(dq, num_q, 1e-6, 1e-9));
  EXPECT_GT(MaxAbs(dq), 0.01);
  for (Eigen::Index j = 0; j < c.dq; ++j) EXPECT_EQ(dq[1 * c.dq + j], 0.0) << "empty sample";
  EXPECT_TRUE(GradientsMatch(dk, NumericGradient(objective, absl::MakeSpan(k)), 1e-6, 1e-9));
  EXPECT_GT(MaxAbs(dk), 0.01);
}

// The unit is the Mlp over the concatenated input with the same parameters:
// scores, Dice statistics, eval scores, the parameter gradient, and the input
// gradients pulled back through the concatenation all agree.
TEST_P(ActivationUnitTest, EqualsMlpOnConcatenatedInput) {
  const UnitCase& c = c_;
  const Eigen::Index dq = c.dq, dk = c.dk;
  ActivationUnit<double> unit(dq, dk, c.hidden, act_, c.param_offset, c.state_offset, c.eps);
  Mlp<double> mlp({c.in(), 4, 3, 1}, act_, false, c.param_offset, c.state_offset, c.eps);
  const size_t total = c.param_offset + unit.num_params();
  const size_t state_total = c.state_offset + unit.num_state();
  const int b = c.b(), rows = c.rows();
  const std::vector<double> params = Random(total), q = Random(b * dq), k = Random(rows * dk);
  const std::vector<double> state = Random(state_total, 0.5, 1.5), r = Random(rows);
  std::vector<double> scores(rows), stats(state_total, kSentinel);
  std::vector<double> mlp_stats(state_total, kSentinel);

  ActivationUnit<double>::Cache cache;
  unit.Forward(Mode::kTrain, params, state, ConstMat(q.data(), b, dq), ConstMat(k.data(), rows, dk),
               c.segments, Vec(scores.data(), rows), &cache, absl::MakeSpan(stats));
  const RowMatrix<double> x = Concatenate(c, q, k);
  Mlp<double>::Cache mlp_cache;
  const RowMatrix<double>& y =
      mlp.Forward(Mode::kTrain, params, state, x, &mlp_cache, absl::MakeSpan(mlp_stats));
  ASSERT_EQ(y.rows(), rows);
  for (int i = 0; i < rows; ++i) EXPECT_NEAR(scores[i], y(i, 0), 1e-13) << i;
  EXPECT_GT(Eigen::Map<const ColVector<double>>(scores.data(), rows).cwiseAbs().maxCoeff(), 0.05);
  for (size_t i = 0; i < state_total; ++i) EXPECT_NEAR(stats[i], mlp_stats[i], 1e-13) << i;

  // Gradients.
  std::vector<double> grad(total), dq_v(b * dq, 0.0), dk_v(rows * dk, 0.0);
  unit.Backward(params, ConstMat(q.data(), b, dq), ConstMat(k.data(), rows, dk), c.segments,
                ConstVec(r.data(), rows), &cache, absl::MakeSpan(grad), Mat(dq_v.data(), b, dq),
                Mat(dk_v.data(), rows, dk));
  std::vector<double> mlp_grad(total);
  RowMatrix<double> dx(rows, c.in());
  MatrixRef<double> dx_ref = dx;
  mlp.Backward(params, x, ConstMat(r.data(), rows, 1), &mlp_cache, absl::MakeSpan(mlp_grad),
               &dx_ref);
  for (size_t i = c.param_offset; i < total; ++i) {
    EXPECT_NEAR(grad[i], mlp_grad[i], 1e-12) << "param " << i - c.param_offset;
  }
  RowMatrix<double> expect_dq = RowMatrix<double>::Zero(b, dq);
  RowMatrix<double> expect_dk = RowMatrix<double>::Zero(rows, dk);
  ConstMat qm(q.data(), b, dq), km(k.data(), rows, dk);
  for (int i = 0; i < b; ++i) {
    for (uint32_t row = c.segments[i]; row < c.segments[i + 1]; ++row) {
      const auto d = dx.row(row);
      const auto d_diff = d.segment(dq + dk, dq);
      const auto d_prod = d.tail(dq);
      expect_dq.row(i) += d.head(dq) + d_diff + d_prod.cwiseProduct(km.row(row).head(dq));
      expect_dk.row(row) = d.segment(dq, dk);
      expect_dk.row(row).head(dq) += -d_diff + d_prod.cwiseProduct(qm.row(i));
    }
  }
  EXPECT_LT((ConstMat(dq_v.data(), b, dq) - expect_dq).cwiseAbs().maxCoeff(), 1e-12);
  EXPECT_LT((ConstMat(dk_v.data(), rows, dk) - expect_dk).cwiseAbs().maxCoeff(), 1e-12);

  // Eval mode (Dice reads the averages in `state`).
  std::vector<double> eval_scores(rows);
  unit.Forward(Mode::kEval, params, state, ConstMat(q.data(), b, dq), ConstMat(k.data(), rows, dk),
               c.segments, Vec(eval_scores.data(), rows), &cache, {});
  const RowMatrix<double>& eval_y = mlp.Forward(Mode::kEval, params, state, x, &mlp_cache, {});
  for (int i = 0; i < rows; ++i) EXPECT_NEAR(eval_scores[i], eval_y(i, 0), 1e-13) << i;
}

std::string UnitCaseName(const ::testing::TestParamInfo<std::tuple<Act, int>>& info) {
  return ActName(std::get<0>(info.param)) +
         (std::get<1>(info.param) == 0 ? "KeyEqualsQuery" : "KeyWiderThanQuery");
}

INSTANTIATE_TEST_SUITE_P(Acts, ActivationUnitTest,
                         ::testing::Combine(::testing::Values(Act::kRelu, Act::kSigmoid,
                                                              Act::kPrelu, Act::kDice),
                                            ::testing::Values(0, 2)),
                         UnitCaseName);

// A batch whose samples have no items at all.
TEST_F(NnTest, ActivationUnitWithoutItems) {
  const Eigen::Index dq = 2, dk = 3;
  ActivationUnit<double> unit(dq, dk, {4, 3}, Act::kDice, 0, 0, 1e-3);
  const std::vector<uint32_t> segments = {0, 0, 0};
  const std::vector<double> params = Random(unit.num_params()), q = Random(2 * dq);
  const std::vector<double> state = Random(unit.num_state(), 0.5, 1.5);
  std::vector<double> stats(unit.num_state(), kSentinel), grad(unit.num_params(), kSentinel);
  std::vector<double> dq_v(2 * dq, 1.0);
  RowMatrix<double> k(0, dk), dk_v(0, dk);
  ColVector<double> scores(0), dscores(0);
  ActivationUnit<double>::Cache cache;
  unit.Forward(Mode::kTrain, params, state, ConstMat(q.data(), 2, dq), k, segments, scores, &cache,
               absl::MakeSpan(stats));
  EXPECT_EQ(stats, state) << "no rows: the statistics are the averages (push 0)";
  unit.Backward(params, ConstMat(q.data(), 2, dq), k, segments, dscores, &cache,
                absl::MakeSpan(grad), Mat(dq_v.data(), 2, dq), dk_v);
  EXPECT_EQ(grad, std::vector<double>(unit.num_params(), 0.0));
  EXPECT_EQ(dq_v, std::vector<double>(2 * dq, 1.0));
}

// A unit without hidden layers is one linear layer on the concatenation.
TEST_F(NnTest, ActivationUnitWithoutHiddenLayers) {
  UnitCase c;
  c.dk = 4;
  ActivationUnit<double> unit(c.dq, c.dk, {}, Act::kRelu, 0, 0, 1e-3);
  ASSERT_EQ(unit.num_params(), static_cast<size_t>(c.in() + 1));
  const int b = c.b(), rows = c.rows();
  std::vector<double> params = Random(unit.num_params()), q = Random(b * c.dq);
  std::vector<double> k = Random(rows * c.dk), scores(rows);
  const std::vector<double> r = Random(rows);
  ActivationUnit<double>::Cache cache;
  auto objective = [&] {
    unit.Forward(Mode::kTrain, params, {}, ConstMat(q.data(), b, c.dq),
                 ConstMat(k.data(), rows, c.dk), c.segments, Vec(scores.data(), rows), &cache, {});
    return Dot(r, scores.data());
  };
  objective();
  const RowMatrix<double> x = Concatenate(c, q, k);
  for (int i = 0; i < rows; ++i) {
    double expect = params[c.in()];
    for (Eigen::Index j = 0; j < c.in(); ++j) expect += x(i, j) * params[j];
    EXPECT_NEAR(scores[i], expect, 1e-13);
  }
  std::vector<double> grad(unit.num_params()), dq(b * c.dq), dk(rows * c.dk);
  unit.Backward(params, ConstMat(q.data(), b, c.dq), ConstMat(k.data(), rows, c.dk), c.segments,
                ConstVec(r.data(), rows), &cache, absl::MakeSpan(grad), Mat(dq.data(), b, c.dq),
                Mat(dk.data(), rows, c.dk));
  EXPECT_TRUE(GradientsMatch(grad, NumericGradient(objective, absl::MakeSpan(params))));
  EXPECT_TRUE(GradientsMatch(dq, NumericGradient(objective, absl::MakeSpan(q)), 1e-6, 1e-9));
  EXPECT_TRUE(GradientsMatch(dk, NumericGradient(objective, absl::MakeSpan(k)), 1e-6, 1e-9));
}

// The float instantiation at a size where every product is tiled, against
// double; the cache is reused across batches of different sizes.
TEST_F(NnTest, ActivationUnitFloatAgreesWithDouble) {
  const Eigen::Index dq = 8, dk = 10;
  const std::vector<Eigen::Index> hidden = {20, 10};
  ActivationUnit<double> ud(dq, dk, hidden, Act::kDice, 0, 0, 1e-3);
  ActivationUnit<float> uf(dq, dk, hidden, Act::kDice, 0, 0, 1e-3f);
  ActivationUnit<double>::Cache cd;
  ActivationUnit<float>::Cache cf;
  std::mt19937 gen(3);
  for (int batch : {40, 25, 60}) {
    std::vector<uint32_t> segments = {0};
    for (int i = 0; i < batch; ++i) segments.push_back(segments.back() + gen() % 12);
    const int rows = static_cast<int>(segments.back());
    const std::vector<double> params = Random(ud.num_params(), -0.5, 0.5);
    const std::vector<double> q = Random(batch * dq), k = Random(rows * dk), r = Random(rows);
    const std::vector<double> state(ud.num_state(), 1.0);
    std::vector<double> scores(rows), stats(ud.num_state()), grad(ud.num_params());
    std::vector<double> dqv(batch * dq, 0.0), dkv(rows * dk, 0.0);
    ud.Forward(Mode::kTrain, params, state, ConstMat(q.data(), batch, dq),
               ConstMat(k.data(), rows, dk), segments, Vec(scores.data(), rows), &cd,
               absl::MakeSpan(stats));
    ud.Backward(params, ConstMat(q.data(), batch, dq), ConstMat(k.data(), rows, dk), segments,
                ConstVec(r.data(), rows), &cd, absl::MakeSpan(grad), Mat(dqv.data(), batch, dq),
                Mat(dkv.data(), rows, dk));

    auto to_float = [](const std::vector<double>& v) {
      return std::vector<float>(v.begin(), v.end());
    };
    const std::vector<float> pf = to_float(params), qf = to_float(q), kf = to_float(k);
    const std::vector<float> rf = to_float(r), sf_state = to_float(state);
    std::vector<float> sf(rows), statsf(ud.num_state()), gradf(ud.num_params());
    std::vector<float> dqf(batch * dq, 0.f), dkf(rows * dk, 0.f);
    using FMat = Eigen::Map<RowMatrix<float>>;
    using CFMat = Eigen::Map<const RowMatrix<float>>;
    uf.Forward(Mode::kTrain, pf, sf_state, CFMat(qf.data(), batch, dq), CFMat(kf.data(), rows, dk),
               segments, Eigen::Map<ColVector<float>>(sf.data(), rows), &cf,
               absl::MakeSpan(statsf));
    uf.Backward(pf, CFMat(qf.data(), batch, dq), CFMat(kf.data(), rows, dk), segments,
                Eigen::Map<const ColVector<float>>(rf.data(), rows), &cf, absl::MakeSpan(gradf),
                FMat(dqf.data(), batch, dq), FMat(dkf.data(), rows, dk));
    auto close = [](const auto& f, const std::vector<double>& d, const char* what) {
      const double scale = std::max(1.0, MaxAbs(d));
      for (size_t i = 0; i < d.size(); ++i) {
        ASSERT_NEAR(f[i], d[i], 2e-4 * scale) << what << " " << i;
      }
    };
    close(sf, scores, "scores");
    close(statsf, stats, "stats");
    close(gradf, grad, "grad");
    close(dqf, dqv, "dq");
    close(dkf, dkv, "dk");
  }
}

// ---------------------------------------------------------------------------
// Attention pooling

TEST_F(NnTest, AttentionPoolValuesAndGradients) {
  const std::vector<uint32_t> segments = {0, 2, 2, 5, 6};
  const int b = 4, rows = 6, dv = 3;
  std::vector<double> scores = Random(rows), v = Random(rows * dv), out(b * dv);
  const std::vector<double> r = Random(b * dv);
  auto objective = [&] {
    AttentionPoolForward<double>(ConstVec(scores.data(), rows), ConstMat(v.data(), rows, dv),
                                 segments, Mat(out.data(), b, dv));
    return Dot(r, out.data());
  };
  objective();
  for (int i = 0; i < b; ++i) {
    for (int j = 0; j < dv; ++j) {
      double expect = 0;
      for (uint32_t row = segments[i]; row < segments[i + 1]; ++row) {
        expect += scores[row] * v[row * dv + j];
      }
      EXPECT_NEAR(out[i * dv + j], expect, 1e-15) << i << "," << j;
    }
  }
  for (int j = 0; j < dv; ++j) EXPECT_EQ(out[1 * dv + j], 0.0) << "no items";

  const std::vector<double> dv0 = Random(rows * dv);
  std::vector<double> dscores(rows, kSentinel), dvv = dv0;
  AttentionPoolBackward<double>(ConstVec(scores.data(), rows), ConstMat(v.data(), rows, dv),
                                segments, ConstMat(r.data(), b, dv), Vec(dscores.data(), rows),
                                Mat(dvv.data(), rows, dv));
  for (size_t i = 0; i < dvv.size(); ++i) dvv[i] -= dv0[i];
  EXPECT_TRUE(GradientsMatch(dscores, NumericGradient(objective, absl::MakeSpan(scores))));
  EXPECT_TRUE(GradientsMatch(dvv, NumericGradient(objective, absl::MakeSpan(v))));
  EXPECT_GT(MaxAbs(dscores), 0.05);
  EXPECT_GT(MaxAbs(dvv), 0.05);
}

// ---------------------------------------------------------------------------
// Mixture of experts

TEST_F(NnTest, MixtureValuesAndGradients) {
  const int b = 3, e = 3, h = 2;
  std::vector<double> logits = Random(b * e), gates(b * e);
  SoftmaxForward<double>(ConstMat(logits.data(), b, e), Mat(gates.data(), b, e));
  std::vector<double> experts = Random(b * e * h), out(b * h);
  const std::vector<double> r = Random(b * h);
  auto objective = [&] {
    MixtureForward<double>(ConstMat(gates.data(), b, e), ConstMat(experts.data(), b, e * h),
                           Mat(out.data(), b, h));
    return Dot(r, out.data());
  };
  objective();
  for (int i = 0; i < b; ++i) {
    for (int j = 0; j < h; ++j) {
      double expect = 0;
      for (int x = 0; x < e; ++x) expect += gates[i * e + x] * experts[i * e * h + x * h + j];
      EXPECT_NEAR(out[i * h + j], expect, 1e-15);
    }
  }
  const std::vector<double> de0 = Random(b * e * h);
  std::vector<double> dgates(b * e, kSentinel), dexperts = de0;
  MixtureBackward<double>(ConstMat(gates.data(), b, e), ConstMat(experts.data(), b, e * h),
                          ConstMat(r.data(), b, h), Mat(dgates.data(), b, e),
                          Mat(dexperts.data(), b, e * h));
  for (size_t i = 0; i < dexperts.size(); ++i) dexperts[i] -= de0[i];
  EXPECT_TRUE(GradientsMatch(dgates, NumericGradient(objective, absl::MakeSpan(gates))));
  EXPECT_TRUE(GradientsMatch(dexperts, NumericGradient(objective, absl::MakeSpan(experts))));
  EXPECT_GT(MaxAbs(dgates), 0.05);
  EXPECT_GT(MaxAbs(dexperts), 0.05);
}

// ---------------------------------------------------------------------------
// Multi-task loss

TEST_F(NnTest, MultiTaskBceValueAndGradient) {
  const int b = 6, t = 2;
  std::vector<double> z = Random(b * t, -4, 4);
  const std::vector<double> y = {1, 0, 0, 0, 1, 1, 0.25, 1, 0, 1, 1, 0};
  const std::vector<double> weights = {0.7, 1.3};
  std::vector<double> dz(b * t), sums(t, kSentinel);
  auto loss = [&] {
    std::vector<double> scratch(b * t), s(t);
    return MultiTaskBce<double>(ConstMat(z.data(), b, t), ConstMat(y.data(), b, t), weights,
                                Mat(scratch.data(), b, t), absl::MakeSpan(s));
  };
  const double value = MultiTaskBce<double>(ConstMat(z.data(), b, t), ConstMat(y.data(), b, t),
                                            weights, Mat(dz.data(), b, t), absl::MakeSpan(sums));
  double expect = 0;
  for (int task = 0; task < t; ++task) {
    double sum = 0;
    for (int i = 0; i < b; ++i) {
      const double p = Sigmoid(z[i * t + task]), l = y[i * t + task];
      sum -= l * std::log(p) + (1 - l) * std::log(1 - p);
    }
    EXPECT_NEAR(sums[task], sum, 1e-12) << task;
    expect += weights[task] * sum / b;
  }
  EXPECT_NEAR(value, expect, 1e-12);
  EXPECT_TRUE(GradientsMatch(dz, NumericGradient(loss, absl::MakeSpan(z))));
  EXPECT_GT(MaxAbs(dz), 0.01);
}

TEST_F(NnTest, MultiTaskBceIsStableAndMayAlias) {
  // Task 0: confident right, confident wrong, a coin flip; task 1 likewise.
  std::vector<float> z = {200.f, -200.f, -200.f, 200.f, 0.f, 0.f};
  const std::vector<float> y = {1.f, 0.f, 1.f, 0.f, 1.f, 0.f};
  const std::vector<float> weights = {2.f, 0.5f};
  std::vector<double> sums(2);
  using FMat = Eigen::Map<RowMatrix<float>>;
  using CFMat = Eigen::Map<const RowMatrix<float>>;
  const double loss = MultiTaskBce<float>(CFMat(z.data(), 3, 2), CFMat(y.data(), 3, 2), weights,
                                          FMat(z.data(), 3, 2), absl::MakeSpan(sums));
  EXPECT_NEAR(sums[0], 200 + std::log(2.0), 1e-4);
  EXPECT_NEAR(sums[1], 200 + std::log(2.0), 1e-4);
  EXPECT_NEAR(loss, (2 * sums[0] + 0.5 * sums[1]) / 3, 1e-9);
  // z now holds dlogits = w_t (sigmoid(z) - y) / B.
  EXPECT_NEAR(z[0], 0.f, 1e-7);
  EXPECT_NEAR(z[1], 0.f, 1e-7);
  EXPECT_NEAR(z[2], 2.f * -1.f / 3, 1e-6);
  EXPECT_NEAR(z[3], 0.5f * 1.f / 3, 1e-6);
  EXPECT_NEAR(z[4], 2.f * -0.5f / 3, 1e-6);
  EXPECT_NEAR(z[5], 0.5f * 0.5f / 3, 1e-6);
}

}  // namespace
}  // namespace ember::models
