// Drives checkpoints across all servers of a job: SAVE on every server, then
// the MANIFEST, written last by atomic rename; RESTORE as verify-everywhere
// then load-everywhere, so that a checkpoint any server refuses is loaded by
// none. The scheduler uses it at epoch boundaries; tests and benchmarks use it
// directly. See docs/checkpoint_format.md.
//
// Thread safety: one call at a time per coordinator.
#ifndef EMBER_PS_CHECKPOINT_COORDINATOR_H_
#define EMBER_PS_CHECKPOINT_COORDINATOR_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "net/client.h"
#include "proto/checkpoint.pb.h"
#include "proto/config.pb.h"

namespace ember::ps {

struct CheckpointCoordinatorOptions {
  // The job's config (tables, num_logical_shards, storage.*).
  proto::JobConfig config;
  // Length of the global dense vector (part of the config fingerprint).
  uint64_t dense_total = 0;
  // Connected peers of every server, in rank order.
  std::vector<net::PeerId> servers;
  // Node id to put in request headers.
  int32_t node_id = 0;
  absl::Duration timeout = absl::Minutes(30);
};

class CheckpointCoordinator {
 public:
  // `client` is not owned and must outlive the coordinator.
  CheckpointCoordinator(CheckpointCoordinatorOptions options, net::Client* client);

  // Writes checkpoint <root>/ckpt-<latest id + 1>. `incremental`: a delta on
  // the newest complete checkpoint when there is one (a server whose rows are
  // not clean relative to it writes full shards instead). Runs the expiry
  // sweep first if `sweep`. Prunes to storage.keep afterwards. Returns the
  // manifest written. On any server's failure no MANIFEST is written and the
  // directory stays incomplete (pruned later).
  [[nodiscard]] absl::StatusOr<proto::CheckpointManifest> Save(const std::string& root, bool incremental,
                                                               bool sweep, uint32_t epoch = 0);

  // Restores checkpoint directory `dir` (or, if `dir` is a root holding
  // ckpt-* directories, its newest complete one) onto the servers: first
  // every server verifies what it would load, then every server loads.
  // Returns the rows loaded over all servers.
  [[nodiscard]] absl::StatusOr<uint64_t> Restore(const std::string& dir);

  // RESET_TABLE on every server; returns the new generation.
  [[nodiscard]] absl::StatusOr<uint32_t> ResetTable(uint32_t table);
  // SWEEP on every server; returns rows removed.
  [[nodiscard]] absl::StatusOr<uint64_t> Sweep();
  // STATS of every server, in rank order.
  [[nodiscard]] absl::StatusOr<std::vector<proto::ServerStatsProto>> Stats();

 private:
  // Sends `request` (header payload set by the caller) to every server and
  // waits for all replies.
  absl::StatusOr<std::vector<net::Message>> Broadcast(const proto::Header& header);

  CheckpointCoordinatorOptions opt_;
  net::Client* client_;
};

}  // namespace ember::ps

#endif  // EMBER_PS_CHECKPOINT_COORDINATOR_H_
