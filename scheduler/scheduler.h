// The scheduler: runs one job from registration to shutdown.
//
//   REGISTER (all S servers and W workers) -> for each epoch:
//     TRAIN (hand out chunks of data.train) -> [EVAL (chunks of data.test)]
//   -> DONE (workers told at their PHASE_DONE) -> SHUTDOWN servers.
//
// Every node heartbeats; a node silent for heartbeat_timeout_ms is declared
// dead, logged, and (until recovery lands) fails the job, as do a worker's
// fatal error report and an exceeded bad-line budget. A failed job tells
// every node to shut down.
//
// Thread safety: Run() is called once, from one thread; everything happens
// on that thread.
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
  // The model's tasks (one per LABEL column it trains on), in order. Workers'
  // EVAL predictions carry one score per task. Empty: the first LABEL column.
  std::vector<std::string> tasks;
  // Where progress lines go (one line per call, no newline). Default: stdout.
  std::function<void(const std::string&)> print;
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
// "final: auc=<a> oracle_auc=<o> logloss=<l> samples=<n> samples_per_sec=<r>"
// followed by, for each task, auc_<task>= gauc_<task>= logloss_<task>=.
// A figure that is undefined (NaN: no oracle for real data, a GAUC without
// data.user_column, an AUC over one class) is left out, never printed as nan.
std::string FinalLine(const JobResult& r);

}  // namespace ember::scheduler

#endif  // EMBER_SCHEDULER_SCHEDULER_H_
