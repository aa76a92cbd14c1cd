// The generators' randomness: a small fast PRNG and an O(1) Zipf sampler,
// with their own distributions so that generated files are the same with
// every standard library.
#ifndef EMBER_DATASETS_RANDOM_H_
#define EMBER_DATASETS_RANDOM_H_

#include <cstdint>

namespace ember::datasets {

// xoshiro256** seeded through SplitMix64: the generator's random streams. Its
// own distributions (not <random>'s, whose output differs between standard
// libraries) keep files reproducible. Not thread-safe; cheap to copy.
class Random {
 public:
  explicit Random(uint64_t seed);
  uint64_t Next() {
    const uint64_t result = Rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = Rotl(s_[3], 45);
    return result;
  }
  // Uniform in [0, 1), 53 random bits.
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }
  // Uniform in [0, n); n >= 1. Multiply-shift, bias below 2^-64 * n.
  uint64_t Below(uint64_t n) {
    return static_cast<uint64_t>((static_cast<unsigned __int128>(Next()) * n) >> 64);
  }
  // Standard normal (Box-Muller).
  double Normal();

 private:
  static uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t s_[4];
};

// Draws ranks k in [1, n] with P(k) proportional to k^-exponent, in O(1)
// expected time and O(1) memory for any n up to 2^53 (rejection-inversion,
// Hörmann & Derflinger 1996: invert the integral of x^-s, accept when the
// point falls under the histogram bar of its rounded rank; fewer than 1.1
// tries on average). Immutable after construction, so Sample may be called
// from many threads, each with its own Random.
class ZipfSampler {
 public:
  // n >= 1 and 0 <= exponent <= 10 (CHECKed: callers validate user input).
  ZipfSampler(uint64_t n, double exponent);
  uint64_t Sample(Random& rng) const;
  uint64_t n() const { return n_; }
  double exponent() const { return exponent_; }

 private:
  double H(double x) const;         // integral of t^-s from 1 to x
  double HInverse(double y) const;  // x with H(x) = y
  double h(double x) const;         // x^-s

  uint64_t n_;
  double exponent_;
  double h_x1_;     // H(1.5) - h(1): lower end of the sampled range
  double h_n_;      // H(n + 0.5): upper end
  double squeeze_;  // accept without evaluating H when k - x <= squeeze_
};

}  // namespace ember::datasets

#endif  // EMBER_DATASETS_RANDOM_H_
