// Row initialisation: a row's initial weights depend only on (seed, key), so
// every server, and a row re-created after a reset or a restore onto another
// server, draws the same values.
#ifndef EMBER_STORAGE_INITIALIZER_H_
#define EMBER_STORAGE_INITIALIZER_H_

#include <cstddef>
#include <cstdint>

#include "proto/config.pb.h"

namespace ember::storage {

// Writes n initial weights for `key` (its `stream` selects an independent
// sequence, e.g. the reset generation) into w.
void InitWeights(const proto::InitializerConfig& config, uint64_t key, uint64_t stream, float* w, size_t n);

}  // namespace ember::storage

#endif  // EMBER_STORAGE_INITIALIZER_H_
