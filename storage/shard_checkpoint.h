// Saving a server's logical shards (and dense slice) into a checkpoint
// directory, and restoring the shards a server owns from a checkpoint and
// the chain of checkpoints it is incremental on, possibly written by a
// different number of servers. The byte layout is in
// docs/checkpoint_format.md; the file helpers in storage/checkpoint_files.h.
//
// Thread safety: the caller guarantees that nothing else touches the stores
// while a save or a restore runs (ps::Server parks its handler threads).
#ifndef EMBER_STORAGE_SHARD_CHECKPOINT_H_
#define EMBER_STORAGE_SHARD_CHECKPOINT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "proto/checkpoint.pb.h"
#include "proto/config.pb.h"
#include "storage/checkpoint_files.h"
#include "storage/optimizer.h"
#include "storage/tiered_store.h"

namespace ember::storage {

// (table << 32 | shard) -> keys removed since the last checkpoint.
using Tombstones = absl::flat_hash_map<uint64_t, std::vector<uint64_t>>;
inline uint64_t TableShard(uint32_t table, uint32_t shard) { return uint64_t{table} << 32 | shard; }

// A server's dense slice: weights[length], and the optimizer state of its
// first `trained` entries in OptimizerRule's layout.
struct DenseSlice {
  uint64_t offset = 0;
  uint64_t trained = 0;
  std::vector<float> weights;
  std::vector<float> state;
};

struct SaveSource {
  uint32_t rank = 0;
  uint32_t num_logical_shards = 0;
  std::vector<const TableSpec*> specs;
  std::vector<TieredStore*> stores;  // together they own this server's shards
  std::vector<uint32_t> generations;  // per table reset generation; older rows are stale and skipped
  // Delta: only rows with last_push_seq > cut_push_seq, plus `tombstones`.
  bool delta = false;
  uint64_t cut_push_seq = 0;
  const Tombstones* tombstones = nullptr;
  const DenseSlice* dense = nullptr;
  uint64_t push_seq = 0;
  uint64_t bytes_per_sec = 0;  // write rate limit, 0 = none
};

// Writes t<table>-r<rank>.rows (one block per owned shard, in shard order)
// and dense-r<rank>.bin into `dir` (which must exist), fdatasynced. Returns
// what was written, for the manifest.
[[nodiscard]] absl::StatusOr<proto::CheckpointPart> WriteCheckpointPart(const std::string& dir,
                                                                        const SaveSource& source);

// Merges the servers' parts into the manifest of checkpoint `id`.
proto::CheckpointManifest MergeParts(const proto::JobConfig& config, uint64_t dense_total, uint64_t id,
                                     uint64_t parent_id, uint32_t epoch,
                                     const std::vector<proto::CheckpointPart>& parts);

struct RestoreTarget {
  const proto::JobConfig* config = nullptr;
  uint64_t dense_total = 0;
  std::vector<const TableSpec*> specs;
  std::vector<TieredStore*> stores;  // the shards to restore are theirs
  const OptimizerRule* dense_rule = nullptr;
  uint64_t dense_offset = 0, dense_length = 0, dense_trained = 0;
  // If set, the checkpoint and every ancestor its restore reads must lie
  // below this root, reached without a symlink (CheckpointRoot::Resolve).
  const CheckpointRoot* root = nullptr;
};

// A restore, checked before anything changes: Make() reads the manifests of
// the checkpoint and its ancestors and checks format, fingerprint, shard
// count, every size and offset (CheckManifestBounds, so that nothing is
// sized from an unchecked count), that every owned shard has a block and
// that the dense blocks fit this job's slice; Verify() reads every block it
// needs and checks checksums and keys; only then Apply() replaces the
// stores' shards and returns the dense slice.
class RestorePlan {
 public:
  [[nodiscard]] static absl::StatusOr<RestorePlan> Make(const std::string& dir, const RestoreTarget& target);

  // Reads and checks every block; *rows = rows the restore would load.
  [[nodiscard]] absl::Status Verify(uint64_t* rows, uint64_t* bytes) const;
  // Loads. An error here (after Verify passed) leaves the shards partly loaded.
  [[nodiscard]] absl::Status Apply(DenseSlice* dense, uint64_t* rows) const;

  const proto::CheckpointManifest& manifest() const { return chain_.back().manifest; }
  // The table generations and push counter the checkpoint was taken at.
  std::vector<uint32_t> generations() const;

 private:
  // The restored checkpoint's dense blocks that overlap the target's slice,
  // checked against the target: exact sizes for its optimizer, its trained
  // entries trained there too, the slice covered.
  absl::StatusOr<std::vector<int>> DenseBlocks() const;

  struct Link {
    std::string dir;
    proto::CheckpointManifest manifest;
  };
  struct BlockRef {
    uint32_t link;  // index in chain_
    int block;      // index in its manifest's blocks
  };
  RestoreTarget target_;
  std::vector<Link> chain_;  // oldest first; the restored checkpoint last
  // Per (table, owned shard): blocks to apply in order, a full one first.
  std::vector<std::pair<uint64_t, std::vector<BlockRef>>> shards_;
  std::vector<int> dense_blocks_;  // DenseBlocks()
};

}  // namespace ember::storage

#endif  // EMBER_STORAGE_SHARD_CHECKPOINT_H_
