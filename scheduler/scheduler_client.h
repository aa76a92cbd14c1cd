// SchedulerClient: a server's or worker's side of the control protocol:
// registration, heartbeats, chunks, phase barriers, pauses (for checkpoints
// and recovery), metrics, shutdown.
//
// Thread safety: every method may be called from any thread. Blocking calls
// return early with an error once the scheduler orders a shutdown or stops
// answering heartbeats, and (all but Paused) once it orders a RECOVER pause.
#ifndef EMBER_SCHEDULER_SCHEDULER_CLIENT_H_
#define EMBER_SCHEDULER_SCHEDULER_CLIENT_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "net/client.h"
#include "proto/wire.pb.h"

namespace ember::scheduler {

struct SchedulerClientOptions {
  std::string scheduler_endpoint;  // e.g. tcp://127.0.0.1:7000
  // This node: role, and for servers the endpoint workers connect to.
  proto::NodeInfo self;
  uint64_t dense_size = 0;  // workers: the model's dense parameter count
  // How long Register waits for the whole cluster to come up.
  absl::Duration register_timeout = absl::Seconds(120);
  // The rank this node must get; -1: any (RegisterRequest.rank).
  int rank = -1;
  // RegisterRequest.job_token: the job's EMBER_JOB_TOKEN, if it has one.
  std::string job_token;
};

// Checks a ClusterInfo a node received before it acts on it: the shard map
// is complete and names only existing servers, the dense layout's offsets
// increase within its total, node ids and ranks are unique and in range,
// every server has an endpoint, the config is valid, and `self_rank`
// (this node's rank, of `self_role`) exists. Errors name the field.
[[nodiscard]] absl::Status ValidateClusterInfo(const proto::ClusterInfo& cluster, proto::Role self_role,
                                               int self_rank);

class SchedulerClient {
 public:
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<SchedulerClient>> Create(
      SchedulerClientOptions options, std::unique_ptr<net::Transport> transport);
  ~SchedulerClient();

  // Registers and blocks until every node has registered; the reply holds
  // this node's id and rank, the cluster (shard map, config) and the phase.
  [[nodiscard]] absl::StatusOr<proto::RegisterReply> Register();

  // Starts a thread that heartbeats every `interval`; if no heartbeat is
  // answered for `timeout`, the scheduler is declared lost (see Stopped()).
  void StartHeartbeats(absl::Duration interval, absl::Duration timeout);

  // Hands in the chunks finished since the last call and asks for the next
  // chunk of `phase`.
  [[nodiscard]] absl::StatusOr<proto::ChunkReply> GetChunk(uint32_t phase, const std::vector<uint64_t>& finished);

  // Blocks until every worker has drained `phase`; returns the next phase.
  // In an EVAL phase, `scores` and `labels` (num_tasks per sample, row-major)
  // and `users` (one per sample, 0 without data.user_column) are this
  // worker's predictions.
  [[nodiscard]] absl::StatusOr<proto::Phase> PhaseDone(uint32_t phase, const std::vector<uint64_t>& finished,
                                                       std::vector<float> scores, std::vector<float> labels,
                                                       std::vector<uint64_t> users, uint32_t num_tasks = 1);

  // BSP: blocks until every worker still in the phase reaches its barrier.
  [[nodiscard]] absl::Status StepBarrier();
  // SSP: reports `clock` steps finished in the phase and blocks until every
  // live worker still in it has finished `wait_for`; returns the slowest's
  // count.
  [[nodiscard]] absl::StatusOr<uint64_t> SspClock(uint64_t clock, uint64_t wait_for);

  // The newest PAUSE the scheduler ordered and this node has not answered
  // with Paused() yet; id 0 if none.
  proto::PauseRequest PendingPause();
  // True while a RECOVER pause is pending: the node must drop what it is
  // doing and call Paused().
  bool RecoverRequested() const { return recover_pending_.load(); }
  // Answers the pending pause (paused.id set by the caller) and blocks until
  // the scheduler lets training go on; the reply says whether to restart.
  [[nodiscard]] absl::StatusOr<proto::PausedReply> Paused(proto::Paused paused);

  // One-way, non-blocking.
  void ReportMetrics(const proto::Metrics& metrics);
  // One-way goodbye: a clean exit, or a failure that should stop the job.
  void Leave(const std::string& reason, bool failed);

  // Blocks until the scheduler orders a shutdown or is lost. Returns OK for
  // an ordinary end of job, an error for a failed job or a lost scheduler.
  absl::Status WaitForShutdown();
  // True once a shutdown was ordered or the scheduler was lost.
  bool Stopped() const { return stopped_.HasBeenNotified(); }
  // Once Stopped(): OK if the scheduler ended the job in order (finished, or
  // stopped to be resumed later), else why it failed or was lost.
  absl::Status StopStatus();

  int32_t node_id() const { return node_id_; }
  // The incarnation (ClusterInfo.incarnation) this node works in, stamped on
  // its control requests: the scheduler refuses chunk, phase and barrier
  // requests sent before a recovery this node has not restarted from.
  void SetIncarnation(uint64_t incarnation) { incarnation_ = incarnation; }

 private:
  SchedulerClient(SchedulerClientOptions options, std::unique_ptr<net::Client> client);
  // Waits for a long-poll reply, giving up when Stopped() and, unless
  // `through_recover`, when a RECOVER pause is pending.
  absl::StatusOr<net::Message> WaitLong(net::Client::CallId id, absl::Duration timeout,
                                        bool through_recover = false);
  void Stop(absl::Status why);
  net::Message NewMessage(proto::Command command) const;

  SchedulerClientOptions options_;
  std::unique_ptr<net::Client> client_;
  net::PeerId scheduler_ = net::kNoPeer;
  std::atomic<int32_t> node_id_{-1};
  std::atomic<uint64_t> incarnation_{0};
  absl::Notification stopped_;
  absl::Mutex mu_;
  absl::Status stop_status_ ABSL_GUARDED_BY(mu_);
  proto::PauseRequest pause_ ABSL_GUARDED_BY(mu_);  // pending; id 0 if none
  uint64_t answered_pause_ ABSL_GUARDED_BY(mu_) = 0;
  std::atomic<bool> recover_pending_{false};
  std::atomic<bool> heartbeat_stop_{false};
  std::thread heartbeat_;
};

}  // namespace ember::scheduler

#endif  // EMBER_SCHEDULER_SCHEDULER_CLIENT_H_
