#include "worker/worker.h"

#include <cmath>
#include <deque>
#include <optional>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "glog/logging.h"
#include "models/model.h"
#include "models/metrics.h"
#include "proto/config.h"
#include "worker/batch_builder.h"
#include "worker/chunk_reader.h"

namespace ember::worker {
namespace {

// Batches parsed ahead of the training thread. Bounded so that a fast reader
// does not fill memory; std::nullopt marks the end of the phase.
class BatchQueue {
 public:
  explicit BatchQueue(size_t capacity) : capacity_(capacity) {}
  // False if the queue was closed (the consumer gave up).
  bool Push(std::optional<models::Batch> b) {
    absl::MutexLock l(&mu_);
    auto room = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return closed_ || q_.size() < capacity_; };
    mu_.Await(absl::Condition(&room));
    if (closed_) return false;
    q_.push_back(std::move(b));
    return true;
  }
  std::optional<models::Batch> Pop() {
    absl::MutexLock l(&mu_);
    auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !q_.empty(); };
    mu_.Await(absl::Condition(&ready));
    auto b = std::move(q_.front());
    q_.pop_front();
    return b;
  }
  void Close() {
    absl::MutexLock l(&mu_);
    closed_ = true;
  }

 private:
  const size_t capacity_;
  absl::Mutex mu_;
  std::deque<std::optional<models::Batch>> q_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

// A batch whose pulls are in flight or done.
struct Step {
  // Shared so that the key frames in flight can alias its key vectors
  // without copying them; the model still sees the keys it indexes.
  std::shared_ptr<models::Batch> batch;
  std::vector<std::shared_ptr<const std::vector<uint64_t>>> keys;  // per table (null if none)
  std::vector<std::vector<float>> emb;                             // per table: keys x dim
  std::vector<float> dense;
  std::vector<uint64_t> dense_versions;  // per server: its slice's version
  std::vector<PsClient::Ticket> pulls;
};

// An EVAL phase's output, one entry per test sample.
struct Predictions {
  std::vector<float> scores, labels;
  std::vector<uint64_t> users;
};

// Pushes in flight, and where their batch leaves its chunk once they are
// acknowledged: finished, or trained up to (consumed, next_line).
struct PendingPush {
  std::vector<PsClient::Ticket> tickets;
  uint64_t chunk_id = 0;
  bool finishes_chunk = false;
  uint64_t consumed = 0, next_line = 0;
};

// Why RunPhase stopped early without an error of its own.
absl::Status RestartStatus() { return absl::AbortedError("restart ordered by the scheduler"); }

}  // namespace

class Worker::Impl {
 public:
  Impl(const WorkerOptions& options, scheduler::SchedulerClient* control, PsClient* ps)
      : step_delay_(options.step_delay),
        reg_(options.registration),
        config_(reg_.cluster().config()),
        control_(control),
        ps_(ps),
        window_auc_(config_.train().train_auc_window()) {}

  absl::Status Init() {
    absl::StatusOr<std::unique_ptr<models::Model>> model = models::Model::Create(config_);
    if (!model.ok()) return model.status();
    model_ = std::move(*model);
    num_tasks_ = static_cast<int>(model_->tasks().size());
    task_loss_.resize(num_tasks_);
    if (model_->dense_size() != ps_->dense_size()) {
      return absl::FailedPreconditionError(absl::StrCat("model has ", model_->dense_size(),
                                                        " dense parameters, the servers hold ", ps_->dense_size()));
    }
    for (const proto::TableConfig& t : config_.tables()) dims_.push_back(t.dim());
    // Position of the user column among the sparse columns (the batch's
    // `sparse` order), for GAUC.
    int sparse_index = 0;
    for (const proto::ColumnConfig& c : config_.data().columns()) {
      const bool sparse = c.type() == proto::ColumnConfig::SPARSE || c.type() == proto::ColumnConfig::MULTI_SPARSE ||
                          c.type() == proto::ColumnConfig::SEQUENCE;
      if (sparse && c.name() == config_.data().user_column()) user_sparse_ = sparse_index;
      if (sparse) ++sparse_index;
    }
    return absl::OkStatus();
  }

  absl::Status Run() {
    proto::Phase phase = reg_.phase();
    while (phase.kind() == proto::TRAIN || phase.kind() == proto::EVAL) {
      Predictions eval;
      absl::Status st = RunPhase(phase, &eval);
      absl::StatusOr<proto::Phase> next;
      if (st.ok()) {
        ReportMetrics();
        next = control_->PhaseDone(phase.index(), TakeFinished(), std::move(eval.scores), std::move(eval.labels),
                                   std::move(eval.users), static_cast<uint32_t>(num_tasks_));
        if (next.ok()) {
          phase = *next;
          continue;
        }
        st = next.status();
      }
      // A stop in order (the job was stopped to be resumed later) is not a
      // failure of this worker.
      if (control_->Stopped()) return control_->StopStatus();
      if (control_->RecoverRequested() || restart_) {
        absl::StatusOr<proto::Phase> again = Restart();
        if (!again.ok()) return again.status();
        phase = *again;
        continue;
      }
      return st;
    }
    LOG(INFO) << "worker done: " << samples_ << " samples trained, " << bad_lines_.load() << " bad lines";
    return absl::OkStatus();
  }

 private:
  // After a recovery (or a restart ordered in reply to a checkpoint pause):
  // everything held is dropped, and the scheduler says where to start again.
  absl::StatusOr<proto::Phase> Restart() {
    proto::PausedReply reply;
    if (restart_) {
      reply = *restart_;
    } else {
      proto::Paused p;
      p.set_id(control_->PendingPause().id());
      *p.mutable_metrics() = MetricsNow();
      absl::StatusOr<proto::PausedReply> r = control_->Paused(std::move(p));
      if (!r.ok()) return r.status();
      reply = *r;
    }
    restart_.reset();
    TakeFinished();
    progress_.clear();
    if (!reply.restart()) {
      return absl::InternalError("the scheduler answered a RECOVER pause without a restart");
    }
    if (absl::Status st = ps_->UpdateCluster(reply.cluster()); !st.ok()) return st;
    control_->SetIncarnation(reply.cluster().incarnation());
    LOG(INFO) << "restarting in phase " << reply.phase().index() << " (incarnation "
              << reply.cluster().incarnation() << ")";
    return reply.phase();
  }

  // At a step boundary with no batch trained but unacknowledged: answers a
  // pending CHECKPOINT pause with this worker's position and waits for the
  // scheduler. RestartStatus() if the reply orders a restart.
  absl::Status MaybePause(std::deque<PendingPush>* pending, uint32_t phase) {
    const proto::PauseRequest pause = control_->PendingPause();
    if (pause.id() == 0 || pause.kind() != proto::PauseRequest::CHECKPOINT) return absl::OkStatus();
    while (!pending->empty()) {
      absl::Status st = Retire(pending);
      if (!st.ok()) return st;
    }
    proto::Paused p;
    p.set_id(pause.id());
    p.set_phase(phase);
    for (uint64_t id : TakeFinished()) p.add_finished(id);
    for (const auto& [id, pos] : progress_) {
      proto::ChunkPosition* c = p.add_positions();
      c->set_id(id);
      c->set_consumed(pos.first);
      c->set_next_line(pos.second);
    }
    *p.mutable_metrics() = MetricsNow();
    absl::StatusOr<proto::PausedReply> r = control_->Paused(std::move(p));
    if (!r.ok()) return r.status();
    if (r->restart()) {
      restart_ = *r;
      return RestartStatus();
    }
    return absl::OkStatus();
  }

  std::vector<uint64_t> TakeFinished() {
    absl::MutexLock l(&finished_mu_);
    std::vector<uint64_t> out;
    out.swap(finished_);
    return out;
  }
  void MarkFinished(uint64_t chunk) {
    absl::MutexLock l(&finished_mu_);
    finished_.push_back(chunk);
  }

  // The reader thread: chunks -> batches, until the phase has no more chunks.
  void ReadLoop(const proto::Phase& phase, BatchQueue* queue) {
    std::unique_ptr<BatchBuilder> builder;
    {
      absl::StatusOr<std::unique_ptr<BatchBuilder>> b =
          BatchBuilder::Create(config_, reg_.cluster().shard_map(), ps_->num_servers());
      if (!b.ok()) return EndRead(queue, b.status());
      builder = std::move(*b);
    }
    const proto::DataConfig& d = config_.data();
    for (;;) {
      absl::StatusOr<proto::ChunkReply> r = control_->GetChunk(phase.index(), TakeFinished());
      if (!r.ok()) return EndRead(queue, r.status());
      if (r->end_of_phase() || !r->has_chunk()) return EndRead(queue, absl::OkStatus());
      const proto::Chunk& chunk = r->chunk();
      ReadStats stats;
      uint64_t chunk_bad = 0;  // stats counts only once the chunk is done
      absl::Status budget;
      absl::Status st = ReadChunk(
          chunk, *builder, d.batch_size(),
          [&](models::Batch&& b) { return queue->Push(std::move(b)) && !control_->Stopped(); },
          [&](const BadLine& bad) {
            const std::string where = absl::StrCat(bad.path, ":", bad.line, ": ", bad.reason);
            if (logged_bad_++ < d.log_bad_lines_limit()) {
              LOG(WARNING) << "bad line " << where << " (skipped)";
            } else if (logged_bad_ == d.log_bad_lines_limit() + 1) {
              LOG(WARNING) << "more bad lines; not logging them (data.log_bad_lines_limit=" << d.log_bad_lines_limit()
                           << ")";
            }
            absl::MutexLock l(&examples_mu_);
            if (bad_examples_.size() < kMaxBadExamples) bad_examples_.push_back(where.substr(0, 512));
            // Stop at the budget: past it the job has failed whatever the
            // other workers read, and reading on only buries the cause.
            budget = proto::CheckBadLineBudget(d, bad_lines_.load() + ++chunk_bad, 0, bad_examples_);
            return budget;
          },
          &stats);
      lines_ += stats.lines;
      bad_lines_ += stats.bad_lines;
      if (!budget.ok()) return EndRead(queue, budget);
      if (!st.ok()) {
        return EndRead(queue, absl::Status(st.code(), absl::StrCat("reading chunk ", chunk.id(), " (", chunk.path(),
                                                                  " bytes ", chunk.begin(), "-", chunk.end(),
                                                                  "): ", st.message())));
      }
    }
  }

  void EndRead(BatchQueue* queue, absl::Status st) {
    {
      absl::MutexLock l(&read_mu_);
      read_status_ = st;
    }
    queue->Push(std::nullopt);
  }

  // Starts the pulls for a batch. An evaluation (`train` false) pulls
  // read-only: unseen keys read as the table's default value, as in the
  // served model, and the servers' rows stay as training left them.
  std::unique_ptr<Step> Prepare(models::Batch batch, bool train) {
    auto step = std::make_unique<Step>();
    step->batch = std::make_shared<models::Batch>(std::move(batch));
    const size_t tables = dims_.size();
    step->keys.resize(tables);
    step->emb.resize(tables);
    if (step->batch->size == 0) return step;
    for (size_t t = 0; t < tables; ++t) {
      const models::TableBatch& tb = step->batch->tables[t];
      if (tb.keys.empty()) continue;
      step->emb[t].resize(tb.keys.size() * dims_[t]);
      step->keys[t] = std::shared_ptr<const std::vector<uint64_t>>(step->batch, &tb.keys);
      step->pulls.push_back(ps_->Pull(t, step->keys[t], tb.server_begin, step->emb[t].data(),
                                      train ? PsClient::PullMode::kTrain : PsClient::PullMode::kReadOnly));
    }
    step->dense.resize(ps_->dense_size());
    step->dense_versions.resize(ps_->num_servers());
    step->pulls.push_back(ps_->PullDense(step->dense.data(), step->dense_versions.data(),
                                         train ? PsClient::PullMode::kTrain : PsClient::PullMode::kReadOnly));
    return step;
  }

  absl::Status Await(Step& step) {
    for (PsClient::Ticket& t : step.pulls) {
      absl::Status st = ps_->Wait(t);
      if (!st.ok()) return st;
    }
    step.pulls.clear();
    return absl::OkStatus();
  }

  std::vector<const float*> EmbPointers(const Step& s) {
    std::vector<const float*> p(dims_.size(), nullptr);
    for (size_t t = 0; t < dims_.size(); ++t) p[t] = s.emb[t].empty() ? nullptr : s.emb[t].data();
    return p;
  }

  absl::Status Train(std::unique_ptr<Step> step, std::deque<PendingPush>* pending) {
    PendingPush push;
    const models::Batch& b = *step->batch;
    push.chunk_id = b.chunk_id;
    push.finishes_chunk = b.last_of_chunk;
    push.consumed = b.consumed;
    push.next_line = b.next_line;
    if (b.size > 0) {
      absl::Status st = Await(*step);
      if (!st.ok()) return st;
      auto dense_grad = std::make_shared<std::vector<float>>(ps_->dense_size());
      std::vector<std::shared_ptr<std::vector<float>>> emb_grad(dims_.size());
      std::vector<float*> emb_grad_ptr(dims_.size(), nullptr);
      for (size_t t = 0; t < dims_.size(); ++t) {
        if (!step->keys[t]) continue;
        emb_grad[t] = std::make_shared<std::vector<float>>(step->emb[t].size());
        emb_grad_ptr[t] = emb_grad[t]->data();
      }
      predictions_.resize(static_cast<size_t>(b.size) * num_tasks_);
      model_->TrainStep(b, step->dense, EmbPointers(*step), absl::MakeSpan(*dense_grad), emb_grad_ptr,
                        absl::MakeSpan(predictions_), absl::MakeSpan(task_loss_));
      const double loss = task_loss_[0];
      for (size_t t = 0; t < dims_.size(); ++t) {
        if (!step->keys[t]) continue;
        push.tickets.push_back(
            ps_->Push(t, step->keys[t], b.tables[t].server_begin, std::move(emb_grad[t]), b.log_time));
      }
      push.tickets.push_back(ps_->PushDense(std::move(dense_grad), step->dense_versions));
      samples_ += b.size;
      ++steps_;
      loss_sum_ += loss;
      bytes_ += b.bytes;
      for (int i = 0; i < b.size; ++i) {
        window_auc_.Add(predictions_[static_cast<size_t>(i) * num_tasks_], b.labels[static_cast<size_t>(i) * b.num_labels]);
      }
    }
    pending->push_back(std::move(push));
    const size_t limit = config_.train().consistency() == proto::TrainConfig::BSP ? 0
                                                                                  : config_.train().max_inflight_pushes();
    while (pending->size() > limit) {
      absl::Status st = Retire(pending);
      if (!st.ok()) return st;
    }
    return absl::OkStatus();
  }

  absl::Status Retire(std::deque<PendingPush>* pending) {
    PendingPush& p = pending->front();
    for (PsClient::Ticket& t : p.tickets) {
      absl::Status st = ps_->Wait(t);
      if (!st.ok()) return st;
    }
    if (p.finishes_chunk) {
      MarkFinished(p.chunk_id);
      progress_.erase(p.chunk_id);
    } else {
      progress_[p.chunk_id] = {p.consumed, p.next_line};
    }
    pending->pop_front();
    return absl::OkStatus();
  }

  absl::Status Evaluate(std::unique_ptr<Step> step, Predictions* out) {
    const models::Batch& b = *step->batch;
    if (b.size > 0) {
      absl::Status st = Await(*step);
      if (!st.ok()) return st;
      predictions_.resize(static_cast<size_t>(b.size) * num_tasks_);
      model_->Predict(b, step->dense, EmbPointers(*step), absl::MakeSpan(predictions_));
      out->scores.insert(out->scores.end(), predictions_.begin(), predictions_.end());
      for (int i = 0; i < b.size; ++i) {
        for (int t = 0; t < num_tasks_; ++t) out->labels.push_back(b.labels[static_cast<size_t>(i) * b.num_labels + t]);
      }
      for (int i = 0; i < b.size; ++i) out->users.push_back(UserOf(b, i));
    }
    if (b.last_of_chunk) MarkFinished(b.chunk_id);
    return absl::OkStatus();
  }

  // The key of sample i's user (its first value in the user column), 0 if
  // the job names no user column or the value is missing.
  uint64_t UserOf(const models::Batch& b, int i) const {
    if (user_sparse_ < 0) return 0;
    const models::SparseColumnBatch& col = b.sparse[user_sparse_];
    if (col.offsets[i] == col.offsets[i + 1]) return 0;
    return b.tables[col.table].keys[col.rows[col.offsets[i]]];
  }

  absl::Status RunPhase(const proto::Phase& phase, Predictions* eval) {
    const bool train = phase.kind() == proto::TRAIN;
    const proto::TrainConfig::Consistency consistency = config_.train().consistency();
    // BSP and SSP pull the next batch only after the wait, so that it sees
    // the updates the wait was for.
    const bool bsp = consistency == proto::TrainConfig::BSP || consistency == proto::TrainConfig::SSP;
    // ASP with many workers: pull after the push too (train.prefetch_max_workers).
    const bool prefetch = !bsp && config_.cluster().num_workers() <= config_.train().prefetch_max_workers();
    uint64_t clock = 0;  // SSP: steps finished in this phase
    BatchQueue queue(8);
    std::thread reader([&] { ReadLoop(phase, &queue); });
    absl::Status st;
    std::deque<PendingPush> pending;
    std::unique_ptr<Step> cur;
    std::optional<models::Batch> first = queue.Pop();
    if (first) cur = Prepare(std::move(*first), train);
    absl::Time last_report = absl::Now();
    const absl::Duration report_every = absl::Milliseconds(config_.train().report_interval_ms());
    while (cur && st.ok()) {
      if (train) {
        st = MaybePause(&pending, phase.index());
        if (!st.ok()) break;
      }
      std::unique_ptr<Step> next;
      // ASP: the next batch's pulls go out before this batch computes
      // (unless the job has too many workers for that). BSP: they wait for
      // the step barrier, so they see every worker's update.
      std::optional<models::Batch> nb = queue.Pop();
      if (prefetch || !train) {
        if (nb) next = Prepare(std::move(*nb), train);
      }
      st = train ? Train(std::move(cur), &pending) : Evaluate(std::move(cur), eval);
      if (step_delay_ > absl::ZeroDuration() && train) absl::SleepFor(step_delay_);
      if (st.ok() && train && bsp) {
        if (consistency == proto::TrainConfig::SSP) {
          // Step clock + 1 may start once the slowest worker still in the
          // phase has finished step clock + 1 - staleness - 1.
          ++clock;
          const uint64_t s = config_.train().staleness();
          st = control_->SspClock(clock, clock > s ? clock - s : 0).status();
        } else {
          st = control_->StepBarrier();
        }
        if (st.ok() && nb) next = Prepare(std::move(*nb), train);
      } else if (st.ok() && train && !prefetch && nb) {
        next = Prepare(std::move(*nb), train);  // after this batch's push
      }
      if (control_->Stopped()) st = absl::AbortedError("the scheduler ended the job");
      if (control_->RecoverRequested()) st = absl::AbortedError("the scheduler is recovering the job");
      cur = std::move(next);
      if (absl::Now() - last_report >= report_every) {
        ReportMetrics();
        last_report = absl::Now();
      }
    }
    while (st.ok() && !pending.empty()) st = Retire(&pending);
    if (!st.ok()) {
      queue.Close();
      // Unblock the reader if it waits on a full queue, then drain.
    }
    reader.join();
    absl::MutexLock l(&read_mu_);
    if (st.ok()) st = read_status_;
    return st;
  }

  void ReportMetrics() { control_->ReportMetrics(MetricsNow()); }

  proto::Metrics MetricsNow() {
    proto::Metrics m;
    m.set_steps(steps_);
    m.set_samples(samples_);
    m.set_loss_sum(loss_sum_);
    m.set_window_size(window_auc_.size());
    const double auc = window_auc_.Auc();
    m.set_window_auc(std::isnan(auc) ? 0 : auc);
    if (std::isnan(auc)) m.set_window_size(0);
    m.set_lines(lines_.load());
    m.set_bad_lines(bad_lines_.load());
    m.set_bytes(bytes_);
    const PsClient::DenseStaleness ds = ps_->dense_staleness();
    m.set_dense_pushes(ds.pushes);
    m.set_dense_staleness_sum(ds.sum);
    m.set_dense_staleness_max(ds.max);
    {
      absl::MutexLock l(&examples_mu_);
      for (const std::string& e : bad_examples_) m.add_bad_line_examples(e);
    }
    return m;
  }

  const absl::Duration step_delay_;
  proto::RegisterReply reg_;
  const proto::JobConfig& config_;
  scheduler::SchedulerClient* control_;
  PsClient* ps_;
  std::unique_ptr<models::Model> model_;
  int num_tasks_ = 1;
  std::vector<double> task_loss_;
  std::vector<uint32_t> dims_;
  std::vector<float> predictions_;
  int user_sparse_ = -1;  // index of data.user_column in Batch::sparse, or -1

  // Training thread.
  uint64_t samples_ = 0, bytes_ = 0, steps_ = 0;
  // Chunks trained part-way, acknowledged up to (consumed, next_line).
  absl::flat_hash_map<uint64_t, std::pair<uint64_t, uint64_t>> progress_;
  // Set when a PAUSED reply ordered a restart.
  std::optional<proto::PausedReply> restart_;
  double loss_sum_ = 0;
  models::WindowAuc window_auc_;

  // Reader thread (counters read by the training thread).
  std::atomic<uint64_t> lines_{0}, bad_lines_{0};
  uint32_t logged_bad_ = 0;
  static constexpr size_t kMaxBadExamples = 5;
  absl::Mutex examples_mu_;
  std::vector<std::string> bad_examples_ ABSL_GUARDED_BY(examples_mu_);  // the first, "path:line: reason"

  absl::Mutex finished_mu_;
  std::vector<uint64_t> finished_ ABSL_GUARDED_BY(finished_mu_);
  absl::Mutex read_mu_;
  absl::Status read_status_ ABSL_GUARDED_BY(read_mu_);
};

absl::StatusOr<std::unique_ptr<Worker>> Worker::Create(const WorkerOptions& options,
                                                       scheduler::SchedulerClient* control, PsClient* ps) {
  auto impl = std::make_unique<Impl>(options, control, ps);
  absl::Status st = impl->Init();
  if (!st.ok()) return st;
  return std::unique_ptr<Worker>(new Worker(std::move(impl)));
}

Worker::Worker(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Worker::~Worker() = default;
absl::Status Worker::Run() { return impl_->Run(); }

}  // namespace ember::worker
