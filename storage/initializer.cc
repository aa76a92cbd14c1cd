#include "storage/initializer.h"

#include <cmath>

#include "proto/keys.h"

namespace ember::storage {
namespace {

// Uniform in (0, 1) from 24 random bits.
inline float Unit(uint64_t bits) { return (static_cast<float>(bits >> 40) + 0.5f) * (1.0f / 16777216.0f); }

}  // namespace

void InitWeights(const proto::InitializerConfig& config, uint64_t key, uint64_t stream, float* w, size_t n) {
  const float scale = config.scale();
  uint64_t state = proto::Mix64(key ^ proto::Mix64(config.seed() + 0x632be59bd9b4e019ULL * (stream + 1)));
  auto next = [&state]() {
    state += 0x9e3779b97f4a7c15ULL;
    return proto::Mix64(state);
  };
  switch (config.kind()) {
    case proto::InitializerConfig::ZERO:
      for (size_t i = 0; i < n; ++i) w[i] = 0;
      return;
    case proto::InitializerConfig::UNIFORM:
      for (size_t i = 0; i < n; ++i) w[i] = scale * (2 * Unit(next()) - 1);
      return;
    case proto::InitializerConfig::NORMAL:
    case proto::InitializerConfig::TRUNCATED_NORMAL: {
      const bool truncate = config.kind() == proto::InitializerConfig::TRUNCATED_NORMAL;
      for (size_t i = 0; i < n; ++i) {
        float z;
        do {  // Box-Muller; redraw beyond 2 sigma when truncating
          const float u1 = Unit(next()), u2 = Unit(next());
          z = std::sqrt(-2 * std::log(u1)) * std::cos(6.2831853f * u2);
        } while (truncate && std::abs(z) > 2);
        w[i] = scale * z;
      }
      return;
    }
  }
}

}  // namespace ember::storage
