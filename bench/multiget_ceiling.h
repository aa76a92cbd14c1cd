// The RocksDB ceiling of the storage tier's miss path: how many rows per
// second SpillStore::MultiGet (the tier's own RocksDB and options) returns
// for random existing keys, with nothing else running. storage_bench sets
// the rows/s its budgeted servers serve misses at against it.
#ifndef EMBER_BENCH_MULTIGET_CEILING_H_
#define EMBER_BENCH_MULTIGET_CEILING_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace ember::bench {

struct MultiGetCeilingOptions {
  std::string dir;              // a fresh directory for the RocksDB; removed when done
  uint64_t rows = 0;            // rows written first: key i = Mix64(i), i < rows
  size_t row_bytes = 0;         // bytes of each row
  uint32_t logical_shards = 1;  // a key's 12-byte RocksDB key starts with its logical shard
  uint64_t block_cache_bytes = 64 << 20;  // storage.block_cache_bytes
  uint64_t lookups = 0;                   // keys looked up in total, uniform over the rows
  size_t keys_per_call = 1;               // keys per MultiGet
  int threads = 1;                        // threads calling MultiGet at once, lookups split evenly
  uint64_t seed = 1;
};

// Writes `rows` rows (batches of 4096, as evictions write them), waits
// until RocksDB has no flush or compaction pending or running, then times
// the lookups and returns rows found per second. Every lookup must find its
// row; a missing row is an error. Blocking.
[[nodiscard]] absl::StatusOr<double> MultiGetCeilingRowsPerSec(
    const MultiGetCeilingOptions& options);

}  // namespace ember::bench

#endif  // EMBER_BENCH_MULTIGET_CEILING_H_
