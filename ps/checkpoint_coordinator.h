// Drives checkpoints across all servers of a job: SAVE on every server, then
// the MANIFEST, written last by atomic rename; RESTORE as verify-everywhere
// then load-everywhere, so that a checkpoint any server refuses is loaded by
// none. The scheduler drives it (checkpoint.* of the job config, recovery,
// resets); tests, benchmarks and tools use it directly. See docs/checkpoint_format.md.
//
// Thread safety: one call at a time per coordinator.
#ifndef EMBER_PS_CHECKPOINT_COORDINATOR_H_
#define EMBER_PS_CHECKPOINT_COORDINATOR_H_

#include <cstdint>
#include <functional>
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
  // Polled (every 100 ms) while waiting for servers; once it returns true
  // the call gives up with CANCELLED, e.g. when a server was lost and will
  // never answer. Must be thread-safe. Empty: never.
  std::function<bool()> cancelled;
};

class CheckpointCoordinator {
 public:
  // `client` is not owned and must outlive the coordinator.
  CheckpointCoordinator(CheckpointCoordinatorOptions options, net::Client* client);

  // Writes checkpoint <root>/ckpt-<latest id + 1>. `root` is
  // config.checkpoint.dir or a directory below it: servers are sent the
  // checkpoint's path relative to checkpoint.dir (docs/wire_format.md), so a
  // job without checkpoint.dir saves nothing (FAILED_PRECONDITION). `incremental`: a delta on
  // the newest complete checkpoint when there is one (a server whose rows are
  // not clean relative to it writes full shards instead). Runs the expiry
  // sweep first if `sweep`. Prunes to checkpoint.keep afterwards. Returns the
  // manifest written, with `job_state` (if not null) in it. On any server's
  // failure no MANIFEST is written and the directory stays incomplete
  // (pruned later). Prunes to checkpoint.keep.
  [[nodiscard]] absl::StatusOr<proto::CheckpointManifest> Save(const std::string& root, bool incremental,
                                                               bool sweep,
                                                               const proto::JobState* job_state = nullptr);

  // Restores checkpoint directory `dir` (or, if `dir` is a root holding
  // ckpt-* directories, its newest complete one) onto the servers: first
  // every server verifies what it would load, then every server loads and
  // takes `incarnation` (see ClusterInfo.incarnation). Returns the rows
  // loaded over all servers. The checkpoint must lie below
  // config.checkpoint.dir (INVALID_ARGUMENT otherwise), as for Save.
  [[nodiscard]] absl::StatusOr<uint64_t> Restore(const std::string& dir, uint64_t incarnation = 0);

  // Replaces the server peers (in rank order), e.g. after a lost server's
  // replacement registered. Not while a call is running.
  void SetServers(std::vector<net::PeerId> servers) { opt_.servers = std::move(servers); }

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
