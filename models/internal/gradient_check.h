// Test-only helpers: central finite differences and a tolerance check, for
// the gradient tests of layers and models (double precision).
#ifndef EMBER_MODELS_INTERNAL_GRADIENT_CHECK_H_
#define EMBER_MODELS_INTERNAL_GRADIENT_CHECK_H_

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <random>
#include <sstream>
#include <vector>

#include "absl/types/span.h"
#include "gtest/gtest.h"

namespace ember::models::internal {

// d f / d x[i] for every i by central differences (f(x + h) - f(x - h)) / 2h.
// Perturbs x in place and restores each entry exactly.
inline std::vector<double> NumericGradient(const std::function<double()>& f, absl::Span<double> x,
                                           double h = 1e-5) {
  std::vector<double> g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + h;
    const double plus = f();
    x[i] = saved - h;
    const double minus = f();
    x[i] = saved;
    g[i] = (plus - minus) / (2 * h);
  }
  return g;
}

// Succeeds when every |analytic - numeric| <= atol + rtol * max(|a|, |n|).
// The defaults sit well above central-difference error in double (~1e-10 for
// smooth O(1) functions) and far below any real mistake.
inline ::testing::AssertionResult GradientsMatch(absl::Span<const double> analytic,
                                                 absl::Span<const double> numeric,
                                                 double rtol = 1e-6, double atol = 1e-8) {
  if (analytic.size() != numeric.size()) {
    return ::testing::AssertionFailure() << "size " << analytic.size() << " vs " << numeric.size();
  }
  int bad = 0;
  std::ostringstream msg;
  for (size_t i = 0; i < analytic.size(); ++i) {
    const double a = analytic[i];
    const double n = numeric[i];
    if (!(std::abs(a - n) <= atol + rtol * std::max(std::abs(a), std::abs(n)))) {
      if (bad++ < 5) msg << "\n  [" << i << "] analytic " << a << " numeric " << n;
    }
  }
  if (bad > 0) {
    return ::testing::AssertionFailure()
           << bad << " of " << analytic.size() << " differ:" << msg.str();
  }
  return ::testing::AssertionSuccess();
}

// Largest |g[i]|: tests use it to make sure a gradient is not trivially zero,
// which would let any check pass.
inline double MaxAbs(absl::Span<const double> g) {
  double m = 0;
  for (double v : g) m = std::max(m, std::abs(v));
  return m;
}

// A fixture for gradient tests: seeded random values and a linear objective.
class GradientTest : public ::testing::Test {
 protected:
  explicit GradientTest(uint64_t seed = 42) : rng_(seed) {}

  std::vector<double> Random(size_t n, double lo = -1, double hi = 1) {
    std::uniform_real_distribution<double> u(lo, hi);
    std::vector<double> v(n);
    for (double& x : v) x = u(rng_);
    return v;
  }
  // Values in [-1, -0.05] U [0.05, 1]: away from the ReLU/PReLU kink, so
  // that a step of h never crosses it.
  std::vector<double> RandomAwayFromZero(size_t n) {
    std::vector<double> v = Random(n, 0.05, 1);
    std::bernoulli_distribution sign(0.5);
    for (double& x : v) x = sign(rng_) ? x : -x;
    return v;
  }
  // sum(r .* m): a scalar objective whose gradient w.r.t. m is r.
  static double Dot(const std::vector<double>& r, const double* m) {
    double s = 0;
    for (size_t i = 0; i < r.size(); ++i) s += r[i] * m[i];
    return s;
  }

  std::mt19937_64 rng_;
};

}  // namespace ember::models::internal

#endif  // EMBER_MODELS_INTERNAL_GRADIENT_CHECK_H_
