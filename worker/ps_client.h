// PsClient: a worker's view of the servers. Pulls and pushes of sparse rows
// and of the dense parameters, split by server and sent concurrently; the
// caller gets a Ticket at once and Waits on it later, so the next batch's
// pull can overlap the current batch's compute.
//
// Thread safety: all methods may be called from any thread; one Ticket must
// not be waited on from two threads.
#ifndef EMBER_WORKER_PS_CLIENT_H_
#define EMBER_WORKER_PS_CLIENT_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "net/client.h"
#include "proto/wire.pb.h"

namespace ember::worker {

struct PsClientOptions {
  // Server endpoints (nodes with role SERVER, by rank), the shard map, the
  // dense layout, and the config (table dims).
  proto::ClusterInfo cluster;
  int32_t node_id = -1;
  // How long a request may wait for its reply before Wait fails.
  absl::Duration timeout = absl::Seconds(120);
  // A server's share of one Pull or Push is cut into messages of at most this
  // many keys, so that the server computes on one part while the next is on
  // the wire, and buffers stay small enough for malloc to reuse. 256K keys
  // (2 MiB of keys) took the bench's 10M-key pull from ~12M to ~32M keys/s.
  uint32_t max_keys_per_message = 262144;  // capped at the job's cluster.max_keys_per_request
  // If set, Wait gives up (CANCELLED) once it returns true, e.g. when the
  // scheduler has ordered a shutdown and servers may never answer. Polled
  // every 100 ms while waiting; must be thread-safe.
  std::function<bool()> stop_requested;
};

class PsClient {
 public:
  // One outstanding operation: its calls, and where each reply's values go.
  struct Ticket {
    struct Part {
      net::Client::CallId call;
      uint32_t server;
      float* dest;        // nullptr for pushes
      size_t floats;      // expected reply floats
      // DENSE_PULL: where the reply's dense_version goes (nullptr: nowhere).
      uint64_t* version = nullptr;
    };
    std::vector<Part> parts;
    const char* what = "";
  };

  // Connects to every server in options.cluster through `transport`.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<PsClient>> Create(
      const PsClientOptions& options, std::unique_ptr<net::Transport> transport);

  uint32_t num_servers() const { return static_cast<uint32_t>(servers_.size()); }
  uint64_t dense_size() const { return dense_.total(); }
  const proto::ClusterInfo& cluster() const { return options_.cluster; }

  // What a Pull may do to the servers' rows.
  enum class PullMode {
    // Training: a key without a row gets one, created and initialised
    // (unless the table has admission), and a row stale since a table
    // reset is re-drawn.
    kTrain,
    // Evaluation (Header.read_only): no row is created or changed; a key
    // without a live row gets the table's admission.default_value, as the
    // served model answers.
    kReadOnly,
  };

  // Pulls the rows of `keys` in `table`. `keys` must be grouped by server:
  // keys[server_begin[s] .. server_begin[s+1]) belong to server s (as
  // ps::KeyRouter and the BatchBuilder lay them out). After Wait, out[i*dim ..)
  // holds key i's row. `out` must stay valid until Wait returns; the key
  // frames share ownership of `keys`.
  Ticket Pull(uint32_t table, std::shared_ptr<const std::vector<uint64_t>> keys,
              absl::Span<const uint32_t> server_begin, float* out, PullMode mode = PullMode::kTrain);

  // Pushes per-key gradients (keys.size() x dim, summed per key) for `table`,
  // laid out like Pull's keys. The frames share ownership of both vectors.
  // `log_time` (unix seconds, 0 if unknown) is the batch's newest log time,
  // which servers keep per row for expiry.after_days.
  Ticket Push(uint32_t table, std::shared_ptr<const std::vector<uint64_t>> keys,
              absl::Span<const uint32_t> server_begin, std::shared_ptr<const std::vector<float>> grads,
              uint64_t log_time = 0);

  // Pulls the whole dense vector (dense_size() floats) into out. After
  // Wait, versions[s] (num_servers() entries, if not null) holds the version
  // of server s's slice (Header.dense_version). A read_only pull (an
  // evaluation's) first has the servers apply the pushes they are averaging.
  Ticket PullDense(float* out, uint64_t* versions = nullptr, PullMode mode = PullMode::kTrain);
  // Pushes a gradient for the whole dense vector, computed from the slices
  // of `versions` (num_servers() entries, from PullDense; empty: unknown).
  Ticket PushDense(std::shared_ptr<const std::vector<float>> grads, absl::Span<const uint64_t> versions = {});

  // Staleness of this client's acknowledged dense pushes, as the servers
  // measured it (Header.dense_staleness); counted by Wait.
  struct DenseStaleness {
    uint64_t pushes = 0, sum = 0, max = 0;
  };
  DenseStaleness dense_staleness() const;

  // Blocks until every reply of `t` has arrived and copies pulled values into
  // place. The error names the server and the command; DEADLINE_EXCEEDED
  // after options.timeout, CANCELLED once options.stop_requested says so.
  // Consumes the ticket.
  [[nodiscard]] absl::Status Wait(Ticket& t);
  // True once every reply of `t` has arrived (Wait will not block).
  bool Ready(const Ticket& t);

  // Takes a new view of the cluster after a recovery: connects to servers
  // that were replaced (same rank, new node) and stamps requests with the
  // new incarnation from now on. The shard map and dense layout must be
  // unchanged. Call with no ticket outstanding, from one thread.
  [[nodiscard]] absl::Status UpdateCluster(const proto::ClusterInfo& cluster);

 private:
  // Starts a data request to server rank `server`, stamped with the
  // incarnation.
  net::Client::CallId Start(uint32_t server, net::Message m);
  PsClient(const PsClientOptions& options, std::unique_ptr<net::Client> client);
  absl::StatusOr<net::Message> WaitReply(net::Client::CallId call);

  PsClientOptions options_;
  std::unique_ptr<net::Client> client_;
  std::vector<net::PeerId> servers_;  // by rank
  std::vector<uint32_t> dims_;        // by table
  proto::DenseLayout dense_;
  std::atomic<uint64_t> dense_pushes_{0}, dense_staleness_sum_{0}, dense_staleness_max_{0};
};

}  // namespace ember::worker

#endif  // EMBER_WORKER_PS_CLIENT_H_
