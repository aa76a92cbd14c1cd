// The parameter server: holds the logical shards of every sparse table that
// the shard map gives it, plus one slice of the dense parameters, and applies
// the optimizers. See docs/wire_format.md for the requests it serves.
//
// Threads: one I/O thread (Run) receives, validates and answers; N handler
// threads each own a fixed set of logical shards (shard s of this server goes
// to handler (local index of s) mod N). A PULL or PUSH is cut by shard and
// the parts run on their owners in parallel; the last part to finish posts
// the reply. So a shard's hash index and arena are touched by one thread only
// and need no lock. Dense parameters are touched by the I/O thread only.
//
// Storage (config.storage, docs/storage.md): with a memory budget each
// handler keeps its share of it and moves cold rows to the server's RocksDB
// tier (storage::TieredStore). SAVE, RESTORE, SWEEP and STATS (the admin
// plane) run one at a time on an admin thread, never on the I/O thread, which
// keeps answering (PING, LIST_CHECKPOINTS at once): each parks every handler
// behind the requests already queued (so a checkpoint is one cut of the push
// stream: sparse requests that arrive meanwhile wait); a SAVE's dense copy is
// taken on the I/O thread when it starts; while a RESTORE loads, every
// request but PING and LIST_CHECKPOINTS is deferred and replayed in order
// afterwards. Admin commands that arrive while one runs queue (16 at most).
// Checkpoint paths are relative to config.checkpoint.dir, resolved once at
// Create, with no "..", no absolute path and no symlink below it
// (storage::CheckpointRoot; docs/wire_format.md).
// RESET_TABLE bumps the table's generation: requests dispatched after it see
// every older row as stale and re-initialise it on first touch.
//
// A PULL with Header.read_only (a worker's evaluation) creates and changes
// no row, and answers admission.default_value for every key without a live
// row of the table's current generation: what a served model answers.
//
// Resident ceiling (storage.max_resident_bytes, or half of the host's memory
// over the job's servers on the host): each handler holds its share, and
// refuses its part of a PULL or PUSH with RESOURCE_EXHAUSTED when the rows
// it would create do not fit (checked against the handler's exact resident
// bytes; keys are looked up one by one only when the request's keys, all
// taken as new, would not fit). Other handlers' parts of that request may
// have been served; the reply is the error. With a budget the tier spills
// instead, and only a request whose own rows exceed the share is refused.
#ifndef EMBER_PS_SERVER_H_
#define EMBER_PS_SERVER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "net/transport.h"
#include "proto/config.pb.h"
#include "proto/wire.pb.h"

namespace ember::ps {

struct ServerOptions {
  // The validated job config: tables, cluster.num_logical_shards,
  // cluster.server_threads, model.dense_optimizer.
  proto::JobConfig config;
  // Owner of every logical shard; must have num_logical_shards entries.
  proto::ShardMap shard_map;
  // This server's rank among servers (which shards it owns).
  uint32_t rank = 0;
  // The job's id (ClusterInfo.job_id): the RocksDB tier lives in
  // <storage.spill_path>/<job_id>/server-<rank>, so jobs never share one.
  // Empty: <storage.spill_path>/server-<rank> (tests that own spill_path).
  std::string job_id;
  // ClusterInfo.incarnation at registration. PULL/PUSH/DENSE_* requests
  // stamped with another are refused (STALE_INCARNATION); a RESTORE that
  // loads sets the server's incarnation to the request's.
  uint64_t incarnation = 0;
  // Node id written into reply headers.
  int32_t node_id = -1;
  // This server's dense slice: [dense_offset, dense_offset + dense_init.size())
  // of the global dense vector, with its initial values.
  uint64_t dense_offset = 0;
  std::vector<float> dense_init;
  // Global index where the dense vector's non-gradient state begins (Dice's
  // moving averages; see models::Model). Entries from there on are not
  // optimized: a pushed value g moves them by dense_state_rate * g. The
  // default puts every entry under model.dense_optimizer.
  uint64_t dense_state_begin = UINT64_MAX;
  float dense_state_rate = 0.01f;
  // Length of the global dense vector (checkpoint fingerprint, restore onto
  // another layout). 0: dense_offset + dense_init.size().
  uint64_t dense_total = 0;
  // For the default resident ceiling (storage.max_resident_bytes = 0): the
  // job's servers on this host, this one included (ps::ServersOnHost), and
  // the host's memory (0: read it, ps::HostMemoryBytes).
  uint32_t servers_on_host = 1;
  uint64_t host_memory_bytes = 0;
};

struct ServerStats {
  uint64_t pulls = 0, pushes = 0, pulled_keys = 0, pushed_keys = 0;
  uint64_t errors = 0;   // requests answered with an error
  uint64_t rows = 0;     // resident rows over all tables
  uint64_t memory_bytes = 0;
  // Bytes the resident rows are charged against storage.memory_budget_bytes
  // (row bytes + 16 per row, storage::ResidentRowCost), over all tables.
  uint64_t resident_bytes = 0;
  uint64_t spilled_rows = 0;  // RocksDB's estimate
  // The resident ceiling in force: storage.max_resident_bytes or the default
  // derived from the host's memory.
  uint64_t max_resident_bytes = 0;
  uint64_t hits = 0, misses = 0, evictions = 0;
};

class Server {
 public:
  // Checks the options (shard map size, table dims) and takes ownership of
  // `transport`, which must already be bound (workers connect to it).
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<Server>> Create(
      ServerOptions options, std::unique_ptr<net::Transport> transport);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Serves requests on the calling thread until Stop(). Returns an error only
  // if the transport fails.
  [[nodiscard]] absl::Status Run();
  // Thread-safe; makes Run return after the requests in progress finish.
  void Stop();

  // Thread-safe snapshot. rows/memory_bytes are gauges the handler threads
  // refresh every 16th request they serve (and at STATS), so they may lag
  // by up to 15 requests per handler; the counters are exact.
  ServerStats stats() const;

 private:
  class Impl;
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ember::ps

#endif  // EMBER_PS_SERVER_H_
