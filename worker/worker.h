// Worker: one model replica. A reader thread asks the scheduler for chunks,
// parses them into batches (unique keys per table, grouped by server) and
// queues them; the training thread pulls rows and dense parameters for batch
// t+1 while it computes batch t, then pushes per-key summed gradients without
// waiting (ASP: at most train.max_inflight_pushes outstanding; BSP: every
// step ends in a barrier of all workers; SSP: step c starts once every live
// worker in the phase finished step c - staleness - 1). At a CHECKPOINT pause
// it stops at a step boundary with every push acknowledged and reports where
// it is in its chunks; at a RECOVER pause it drops everything and restarts
// where the scheduler says. In EVAL phases it predicts and
// sends (score, label) pairs to the scheduler, which computes exact metrics.
//
// Thread safety: Run() is called once; the worker owns its threads.
#ifndef EMBER_WORKER_WORKER_H_
#define EMBER_WORKER_WORKER_H_

#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/wire.pb.h"
#include "scheduler/scheduler_client.h"
#include "worker/ps_client.h"

namespace ember::worker {

struct WorkerOptions {
  // What registration returned: node id, rank, cluster (config, shard map,
  // dense layout) and the phase the job is in.
  proto::RegisterReply registration;
  // Fault injection for tests and benchmarks: sleep this long after each
  // training step (a slow machine, for SSP and straggler experiments).
  absl::Duration step_delay = absl::ZeroDuration();
};

class Worker {
 public:
  // `control` and `ps` are not owned and must outlive the worker.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<Worker>> Create(const WorkerOptions& options,
                                                                      scheduler::SchedulerClient* control,
                                                                      PsClient* ps);
  ~Worker();

  // Runs phases until the scheduler says DONE. Returns an error on a fatal
  // problem (unreadable data, a server not answering, the job failing).
  [[nodiscard]] absl::Status Run();

 private:
  class Impl;
  explicit Worker(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ember::worker

#endif  // EMBER_WORKER_WORKER_H_
