// The scheduler: runs one job from registration to shutdown, and keeps it
// alive through lost processes. See docs/operations.md.
//
//   REGISTER (S servers, W workers) -> START (restore the newest checkpoint
//   on --resume, else write checkpoint 1 of the untrained model) -> for each
//   epoch: [RESET tables] -> TRAIN (hand out chunks of data.train) ->
//   [CHECKPOINT at epoch end] -> [EVAL (chunks of data.test)] -> DONE.
//
// Checkpoints (config `checkpoint`): every_steps / every_seconds during
// training, at each epoch's end, and when a stop is requested. Workers
// pause at a step boundary (PAUSE / PAUSED), so a checkpoint holds every
// acknowledged push and no other, and the data position to match: finished
// chunks and how far each started chunk got.
//
// Failures: a node silent for cluster.heartbeat_timeout_ms is dead. A dead
// worker's unfinished chunks go back on the queue and a new worker may join
// in its place. A dead server pauses every worker (RECOVER); once a
// replacement registered with the lost rank, every server restores the
// newest checkpoint (survivors roll back too: the model is one cut) under a
// new incarnation, the chunk ledger rolls back to that checkpoint's data
// position, and the workers restart there. A worker's own fatal error (bad
// data) and an exceeded bad-line budget fail the job, telling every node.
//
// Long work (saves, restores, resets, evaluation metrics) runs on a helper
// thread, so heartbeats are answered throughout.
//
// Thread safety: Run() is called once, from one thread.
#ifndef EMBER_SCHEDULER_SCHEDULER_H_
#define EMBER_SCHEDULER_SCHEDULER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "net/transport.h"
#include "proto/config.pb.h"

namespace ember::scheduler {

struct SchedulerOptions {
  // The validated job config; sent to every node at registration.
  proto::JobConfig config;
  // Floats in the model's dense parameter vector (all workers must report
  // the same); sliced evenly across servers.
  uint64_t dense_size = 0;
  // If not empty, a REGISTER must carry this job_token (EMBER_JOB_TOKEN).
  std::string job_token;
  // The model's tasks (one per LABEL column it trains on), in order. Workers'
  // EVAL predictions carry one score per task. Empty: the first LABEL column.
  std::vector<std::string> tasks;
  // Where progress lines go (one line per call, no newline). Default: stdout.
  std::function<void(const std::string&)> print;
  // Makes the transport the scheduler connects to servers with (SAVE,
  // RESTORE, RESET_TABLE). Required when checkpoints are on or tables reset.
  std::function<absl::StatusOr<std::unique_ptr<net::Transport>>()> new_transport;
  // Continue the job from the newest complete checkpoint under
  // checkpoint.dir (a damaged one is skipped for the one before).
  bool resume = false;
  // Polled often; once true the job checkpoints at the next step boundary
  // and every node is told to exit cleanly (SIGTERM/SIGINT). Thread-safe.
  std::function<bool()> stop_requested;
  // If set, JSON lines of progress, evaluations, checkpoints, resets and
  // recoveries are appended here (see MetricsLog).
  std::string metrics_file;
  // If set, the last evaluation's per-sample scores are written here
  // (--eval_scores_out), so that they can be compared with a served model's:
  // one line per test sample, its task scores (in `tasks` order) separated
  // by tabs, each printed with "%.9g". Lines follow the order in which the
  // scheduler received the workers' PHASE_DONEs, each worker's samples in
  // the order it read them: with one worker that is the test files' order,
  // chunk by chunk; with several, each worker's chunks form runs in an order
  // that varies between runs. Written once, after the last EVAL, atomically
  // (a new temporary file, then a hard link); never over an existing file:
  // Create fails if `eval_scores_file` exists or its directory does not.
  // Nothing is written if the job has no test data or stops early.
  std::string eval_scores_file;
};

// Test metrics of one task after the last epoch (NaN if there was no test
// data; gauc is NaN without data.user_column).
struct TaskResult {
  std::string name;  // the LABEL column's name
  double auc = 0;
  double gauc = 0;  // AUC per user weighted by impressions
  double logloss = 0;
};

struct JobResult {
  // The first task's metrics (also tasks[0]).
  double auc = 0;
  double logloss = 0;
  double gauc = 0;
  std::vector<TaskResult> tasks;
  double oracle_auc = 0;   // from data.meta, NaN if absent
  uint64_t eval_samples = 0;
  uint64_t samples = 0;    // training samples over all epochs
  double train_seconds = 0;
  double samples_per_sec = 0;
  uint64_t bad_lines = 0;
  uint64_t lines = 0;
  // The job was stopped on request (not finished); resume from
  // `last_checkpoint` (empty if none was taken) with --resume.
  bool stopped = false;
  std::string last_checkpoint;
  uint32_t checkpoints = 0;       // taken by this job, over all its runs
  // Why training diverged (DivergenceWatch), empty if it did not.
  std::string diverged;
  uint32_t exports = 0;           // bundles this run wrote (export.dir)
  std::string last_export;        // the newest of them, empty if none
  uint32_t recoveries = 0;        // lost processes the job recovered from (workers and servers)
  uint64_t requeued_chunks = 0;   // chunks handed out again after a lost worker
  // SSP: the largest gap seen between a step a worker was allowed to start
  // and the slowest live worker's finished steps, minus one (<= staleness).
  uint64_t max_clock_gap = 0;
  // Dense pushes the workers reported acknowledged, the sum of their
  // staleness (optimizer steps the server's slice took between the pull a
  // gradient was computed from and the push; train.dense_update) and the
  // largest.
  uint64_t dense_pushes = 0, dense_staleness_sum = 0, dense_staleness_max = 0;
};

class Scheduler {
 public:
  // `transport` must already be bound to the endpoint nodes register with.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<Scheduler>> Create(
      SchedulerOptions options, std::unique_ptr<net::Transport> transport);
  ~Scheduler();

  // Runs the job to the end. Blocks. On failure every node is told to shut
  // down and the status says why (dead node, bad-line budget, ...).
  [[nodiscard]] absl::StatusOr<JobResult> Run();

 private:
  class Impl;
  explicit Scheduler(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The summary line launch/local.sh ends with:
// "final: auc=<a> oracle_auc=<o> logloss=<l> samples=<n> samples_per_sec=<r>
//  checkpoints=<c> recoveries=<r> requeued_chunks=<q>"
// followed by, for each task, auc_<task>= gauc_<task>= logloss_<task>=.
// A figure that is undefined (NaN: no oracle for real data, a GAUC without
// data.user_column, an AUC over one class) is left out, never printed as nan.
// A job whose training diverged (JobResult.diverged) gets
// "final: DIVERGED (<reason>) auc=..." instead.
std::string FinalLine(const JobResult& r);

}  // namespace ember::scheduler

#endif  // EMBER_SCHEDULER_SCHEDULER_H_
