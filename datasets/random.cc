// Random's seeding and normal draws, and ZipfSampler (see random.h).
#include "datasets/random.h"

#include <algorithm>
#include <cmath>

#include "glog/logging.h"
#include "proto/keys.h"

namespace ember::datasets {
namespace {

constexpr double kPi = 3.14159265358979323846;

// log1p(x) / x and expm1(x) / x, continuous at 0, where exponent 1 puts them.
double Log1pOverX(double x) {
  if (std::abs(x) > 1e-8) return std::log1p(x) / x;
  return 1 - x * (0.5 - x / 3);
}
double Expm1OverX(double x) {
  if (std::abs(x) > 1e-8) return std::expm1(x) / x;
  return 1 + x * (0.5 + x / 6);
}

}  // namespace

Random::Random(uint64_t seed) {
  uint64_t x = seed;
  for (uint64_t& s : s_) {  // SplitMix64: never leaves the state all zero
    x += 0x9e3779b97f4a7c15ULL;
    s = proto::Mix64(x);
  }
}

double Random::Normal() {
  const double u1 = (static_cast<double>(Next() >> 11) + 0.5) * 0x1.0p-53;  // (0, 1)
  const double u2 = Uniform();
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2 * kPi * u2);
}

ZipfSampler::ZipfSampler(uint64_t n, double exponent) : n_(n), exponent_(exponent) {
  CHECK_GE(n, 1u);
  CHECK_LE(n, uint64_t{1} << 53);
  CHECK(exponent >= 0 && exponent <= 10) << exponent;
  h_x1_ = H(1.5) - 1.0;
  h_n_ = H(static_cast<double>(n) + 0.5);
  squeeze_ = 2 - HInverse(H(2.5) - h(2));
}

// (x^(1-s) - 1) / (1-s), written so that s = 1 (log x) needs no special case.
double ZipfSampler::H(double x) const {
  const double log_x = std::log(x);
  return Expm1OverX((1 - exponent_) * log_x) * log_x;
}

double ZipfSampler::HInverse(double y) const {
  // For s > 1, H is bounded by 1/(s-1); rounding may put y at the bound, where
  // the inverse is +infinity (and Sample clamps to n).
  const double t = std::max((1 - exponent_) * y, -1.0);
  return std::exp(Log1pOverX(t) * y);
}

double ZipfSampler::h(double x) const { return std::exp(-exponent_ * std::log(x)); }

uint64_t ZipfSampler::Sample(Random& rng) const {
  const double n = static_cast<double>(n_);
  for (;;) {
    // u uniform over (h_x1_, h_n_]: the area under the envelope x^-s, where
    // rank k owns [H(k + 1/2) - h(k), H(k + 1/2)] (rank 1 all of its part).
    const double u = h_n_ + rng.Uniform() * (h_x1_ - h_n_);
    const double x = HInverse(u);
    const double k = std::clamp(std::floor(x + 0.5), 1.0, n);
    if (k - x <= squeeze_ || u >= H(k + 0.5) - h(k)) return static_cast<uint64_t>(k);
  }
}

}  // namespace ember::datasets
