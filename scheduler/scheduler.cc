#include "scheduler/scheduler.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "glog/logging.h"
#include "models/metrics.h"
#include "net/client.h"
#include "net/reject_log.h"
#include "net/validate.h"
#include "proto/checkpoint.pb.h"
#include "proto/config.h"
#include "ps/checkpoint_coordinator.h"
#include "scheduler/chunks.h"
#include "scheduler/divergence.h"
#include "scheduler/metrics_log.h"
#include "storage/checkpoint_files.h"
#include "storage/export.h"

namespace ember::scheduler {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

struct Node {
  proto::NodeInfo info;
  net::PeerId peer = net::kNoPeer;
  absl::Time last_seen;
  bool left = false;            // said goodbye (clean exit)
  bool dead = false;            // declared dead (silent, or left mid-job)
  bool awaiting_reply = false;  // registered, reply held until the job is ready
  bool phase_done = false;      // workers: sent PHASE_DONE for the current phase
  proto::Metrics metrics;       // workers: latest report
  // What of metrics has been added to the job's totals already.
  uint64_t counted_samples = 0, counted_steps = 0, counted_bytes = 0;
  double counted_loss = 0;
  uint64_t counted_dense_pushes = 0, counted_dense_staleness = 0;
  // SSP: steps finished in the phase (plus an offset for a worker that
  // joined part-way), and the clock request held, if any.
  uint64_t clock = 0, clock_offset = 0;

  bool live() const { return !left && !dead; }
  bool is_worker() const { return info.role() == proto::WORKER; }
  bool is_server() const { return info.role() == proto::SERVER; }
};

// The oracle AUC of a generated data set (meta.txt's oracle_auc=), or NaN:
// real data (a converted set, a user's own logs) has no oracle, and no
// meta.txt or one without the key is normal, not an error.
double ReadOracleAuc(const std::string& path) {
  if (path.empty()) return kNaN;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("oracle_auc=", 0) == 0) {
      double v;
      if (absl::SimpleAtod(line.substr(11), &v) && std::isfinite(v)) return v;
      LOG(WARNING) << path << ": oracle_auc is not a number: '" << line.substr(11) << "'";
    }
  }
  return kNaN;
}

// SchedulerOptions.eval_scores_file may be written: it does not exist yet
// (ember never overwrites a file it did not create) and its directory does.
absl::Status CheckScoresFile(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::symlink_status(path, ec).type() != std::filesystem::file_type::not_found) {
    return absl::AlreadyExistsError(absl::StrCat("--eval_scores_out ", path,
                                                 ": already exists; ember writes the scores file only where none "
                                                 "is (remove it or choose another path)"));
  }
  std::filesystem::path dir = std::filesystem::path(path).parent_path();
  if (dir.empty()) dir = ".";
  if (!std::filesystem::is_directory(dir, ec) || ::access(dir.c_str(), W_OK) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--eval_scores_out ", path, ": directory ", dir.string(), " does not exist or is not writable"));
  }
  return absl::OkStatus();
}

// The scores file's text: one line per sample, its num_tasks scores
// separated by tabs, "%.9g" (a float's exact decimal round trip).
std::string ScoresText(const std::vector<float>& scores, size_t num_tasks) {
  std::string text;
  text.reserve(scores.size() * 13);
  char buf[32];
  for (size_t i = 0; i < scores.size(); ++i) {
    const int n = std::snprintf(buf, sizeof(buf), "%.9g", static_cast<double>(scores[i]));
    text.append(buf, static_cast<size_t>(n));
    text.push_back((i + 1) % num_tasks == 0 ? '\n' : '\t');
  }
  return text;
}

// Writes `text` to `path` atomically without ever replacing a file: into a
// new temporary file beside it (O_EXCL), synced, then hard-linked to `path`
// (which fails if `path` exists) and the temporary name removed.
absl::Status WriteNewFileAtomically(const std::string& path, const std::string& text) {
  const std::string tmp = absl::StrCat(path, ".tmp-", ::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return absl::InternalError(absl::StrCat("cannot create ", tmp, ": ", std::strerror(errno)));
  size_t done = 0;
  int err = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      err = errno;
      break;
    }
    done += static_cast<size_t>(n);
  }
  if (err == 0 && ::fsync(fd) != 0) err = errno;
  if (::close(fd) != 0 && err == 0) err = errno;
  if (err == 0 && ::link(tmp.c_str(), path.c_str()) != 0) err = errno;
  ::unlink(tmp.c_str());
  if (err != 0) return absl::InternalError(absl::StrCat("cannot write ", path, ": ", std::strerror(err)));
  return absl::OkStatus();
}

// " key=value" with 4 decimals when the figure is defined. An undefined one
// (NaN: an AUC over one class, a GAUC without data.user_column, no oracle for
// real data) never prints as nan: it is left out, or, given `why`, shown as
// " key=n/a (why)".
std::string Figure(const std::string& key, double v, const std::string& why = "") {
  if (std::isfinite(v)) return absl::StrFormat(" %s=%.4f", key, v);
  return why.empty() ? "" : absl::StrCat(" ", key, "=n/a (", why, ")");
}

// A job id: the config's name (or "job"), reduced to [A-Za-z0-9_-], plus the
// start time and 32 random bits, so that concurrent jobs never collide.
std::string NewJobId(const std::string& name) {
  std::string id;
  for (char c : name.empty() ? std::string("job") : name.substr(0, 40)) {
    id.push_back(absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' ? c : '_');
  }
  absl::BitGen gen;
  absl::StrAppend(&id, "-", absl::FormatTime("%Y%m%d-%H%M%S", absl::Now(), absl::UTCTimeZone()), "-",
                  absl::Hex(absl::Uniform<uint32_t>(gen), absl::kZeroPad8));
  return id;
}

// FNV-1a over what the chunks were cut from: a resume on other data is
// refused rather than misread.
uint64_t DataFingerprint(const std::vector<proto::Chunk>& train, const std::vector<proto::Chunk>& test,
                         uint64_t chunk_bytes) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](const void* p, size_t n) {
    for (size_t i = 0; i < n; ++i) h = (h ^ static_cast<const unsigned char*>(p)[i]) * 1099511628211ull;
  };
  mix(&chunk_bytes, sizeof(chunk_bytes));
  for (const auto* list : {&train, &test}) {
    for (const proto::Chunk& c : *list) {
      mix(c.path().data(), c.path().size());
      const uint64_t v[3] = {c.begin(), c.end(), c.gzip() ? 1u : 0u};
      mix(v, sizeof(v));
    }
  }
  return h;
}

// The part of `chunk` left after `pos` (see proto::ChunkPosition).
proto::Chunk Remainder(const proto::Chunk& chunk, const proto::ChunkPosition& pos) {
  proto::Chunk c = chunk;
  if (chunk.gzip()) {
    c.set_skip_lines(pos.next_line() - 1);
  } else {
    c.set_begin(chunk.begin() + pos.consumed());
    c.set_first_line(pos.next_line());
  }
  return c;
}

// A small helper thread for one piece of long work at a time; the main loop
// polls Done() and then runs the continuation itself.
class Task {
 public:
  Task(std::string what, std::function<absl::Status()> work, std::function<absl::Status(absl::Status)> then,
       uint64_t era)
      : what_(std::move(what)), then_(std::move(then)), era_(era) {
    thread_ = std::thread([this, work = std::move(work)] {
      status_ = work();
      done_.store(true);
    });
  }
  ~Task() { thread_.join(); }
  bool Done() const { return done_.load(); }
  const std::string& what() const { return what_; }
  uint64_t era() const { return era_; }
  // After Done().
  const absl::Status& status() const { return status_; }
  std::function<absl::Status(absl::Status)>& then() { return then_; }

 private:
  std::string what_;
  std::function<absl::Status(absl::Status)> then_;
  uint64_t era_;
  absl::Status status_;
  std::atomic<bool> done_{false};
  std::thread thread_;
};

}  // namespace

std::string FinalLine(const JobResult& r) {
  std::string line = absl::StrCat("final:", Figure("auc", r.auc), Figure("oracle_auc", r.oracle_auc),
                                  Figure("logloss", r.logloss));
  absl::StrAppendFormat(&line, " samples=%d samples_per_sec=%.0f checkpoints=%d recoveries=%d requeued_chunks=%d",
                        r.samples, r.samples_per_sec, r.checkpoints, r.recoveries, r.requeued_chunks);
  for (const TaskResult& t : r.tasks) {
    absl::StrAppend(&line, Figure("auc_" + t.name, t.auc), Figure("gauc_" + t.name, t.gauc),
                    Figure("logloss_" + t.name, t.logloss));
  }
  // A model that diverged is not a result: the line says so up front.
  if (!r.diverged.empty()) line = absl::StrCat("final: DIVERGED (", r.diverged, ")", line.substr(6));
  return line;
}

class Scheduler::Impl {
 public:
  Impl(SchedulerOptions options, std::unique_ptr<net::Transport> transport)
      : opt_(std::move(options)), transport_(std::move(transport)) {
    if (!opt_.print) opt_.print = [](const std::string& s) {
      std::printf("%s\n", s.c_str());
      std::fflush(stdout);
    };
  }

  ~Impl() {
    shutting_down_ = true;  // a save or restore waiting on servers gives up
    task_.reset();          // joins
  }

  absl::Status Init() {
    const proto::DataConfig& d = opt_.config.data();
    absl::StatusOr<std::vector<std::string>> train = ListDataFiles(d.train());
    if (!train.ok()) return Annotate(train.status(), "data.train");
    absl::StatusOr<std::vector<proto::Chunk>> tc = CutChunks(*train, d.chunk_bytes());
    if (!tc.ok()) return tc.status();
    train_chunks_ = std::move(*tc);
    if (train_chunks_.empty()) return absl::InvalidArgumentError("data.train: the data files are empty");
    if (!d.test().empty()) {
      absl::StatusOr<std::vector<std::string>> test = ListDataFiles(d.test());
      if (!test.ok()) return Annotate(test.status(), "data.test");
      absl::StatusOr<std::vector<proto::Chunk>> ec = CutChunks(*test, d.chunk_bytes());
      if (!ec.ok()) return ec.status();
      test_chunks_ = std::move(*ec);
      // Chunk ids are unique across the job: test ids follow train ids.
      for (proto::Chunk& c : test_chunks_) c.set_id(c.id() + train_chunks_.size());
    }
    for (const auto& c : train_chunks_) train_bytes_ += c.end() - c.begin();
    data_fingerprint_ = DataFingerprint(train_chunks_, test_chunks_, d.chunk_bytes());
    result_.oracle_auc = ReadOracleAuc(d.meta());
    job_id_ = NewJobId(opt_.config.name());
    result_.auc = result_.logloss = result_.gauc = kNaN;
    std::vector<std::string> tasks = opt_.tasks;
    if (tasks.empty()) {
      for (const proto::ColumnConfig& c : d.columns()) {
        if (c.type() == proto::ColumnConfig::LABEL) {
          tasks.push_back(c.name());
          break;
        }
      }
    }
    for (const std::string& t : tasks) result_.tasks.push_back(TaskResult{t, kNaN, kNaN, kNaN});
    if (absl::Status st = InitCheckpoints(); !st.ok()) return st;
    if (!opt_.eval_scores_file.empty()) {
      if (absl::Status st = CheckScoresFile(opt_.eval_scores_file); !st.ok()) return st;
    }
    if (!opt_.metrics_file.empty()) {
      absl::StatusOr<std::unique_ptr<MetricsLog>> log = MetricsLog::Open(opt_.metrics_file);
      if (!log.ok()) return log.status();
      metrics_log_ = std::move(*log);
    }
    LOG(INFO) << "job '" << opt_.config.name() << "': " << train_chunks_.size() << " train chunks ("
              << train_bytes_ << " bytes), " << test_chunks_.size() << " test chunks";
    return absl::OkStatus();
  }

  absl::StatusOr<JobResult> Run() {
    const proto::ClusterConfig& cc = opt_.config.cluster();
    const absl::Time register_deadline = absl::Now() + absl::Milliseconds(cc.register_timeout_ms());
    job_start_ = last_progress_ = absl::Now();
    net::Message m;
    for (;;) {
      // Poll fast while a helper-thread task may finish.
      absl::StatusOr<bool> got = transport_->Recv(&m, absl::Milliseconds(task_ ? 5 : 50));
      if (!got.ok()) return AbortJob(got.status());
      if (*got) {
        absl::Status st = Handle(std::move(m));
        if (!st.ok()) return AbortJob(st);
      }
      if (absl::Status st = PollTask(); !st.ok()) return AbortJob(st);
      const absl::Time now = absl::Now();
      if (!registered_) {
        if (now > register_deadline) {
          return AbortJob(absl::DeadlineExceededError(
              absl::StrCat("only ", nodes_.size(), " of ", cc.num_servers() + cc.num_workers(),
                           " nodes registered within cluster.register_timeout_ms=", cc.register_timeout_ms())));
        }
        continue;
      }
      if (absl::Status st = Tick(now); !st.ok()) return AbortJob(st);
      if (done_) {
        if (AllLeft() || now > shutdown_deadline_) {
          if (!AllLeft()) LOG(WARNING) << "some nodes did not confirm shutdown in time";
          WriteFinalEvent();
          return result_;
        }
      }
    }
  }

 private:
  static absl::Status Annotate(const absl::Status& st, const std::string& field) {
    return absl::Status(st.code(), absl::StrCat("config field ", field, ": ", st.message()));
  }

  bool Checkpointing() const { return !opt_.config.checkpoint().dir().empty(); }
  bool Exporting() const { return !opt_.config.export_().dir().empty(); }
  // A live-serving export is due (export.every_steps / every_seconds).
  bool ExportDue(absl::Time now) const {
    if (!Exporting()) return false;
    const proto::ExportConfig& ex = opt_.config.export_();
    return (ex.every_steps() > 0 && steps_total_ - last_export_steps_ >= ex.every_steps()) ||
           (ex.every_seconds() > 0 && now - last_export_time_ >= absl::Seconds(ex.every_seconds()));
  }
  std::string Root() const { return opt_.config.checkpoint().dir(); }

  // Why every server restores a checkpoint: the job resumes (--resume), or
  // recovers from a lost server.
  enum class Restore { kResume, kRecovery };

  // ----- checkpoints at start: refuse a used root, or pick the resume point -----

  absl::Status InitCheckpoints() {
    if (!Checkpointing()) {
      if (opt_.resume) {
        return absl::InvalidArgumentError(
            "--resume: checkpoint.dir is not set (give it in the config or with --checkpoint_dir)");
      }
      return absl::OkStatus();
    }
    std::vector<proto::CheckpointSummary> list = storage::ListCheckpoints(Root());
    std::vector<proto::CheckpointSummary> complete;
    for (const auto& c : list) {
      if (c.complete()) complete.push_back(c);
    }
    if (!opt_.resume) {
      if (!list.empty()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "checkpoint.dir ", Root(), " already holds checkpoints (newest ", list.back().dir(),
            "); continue that job with --resume, or give this job a directory of its own"));
      }
      return absl::OkStatus();
    }
    if (complete.empty()) {
      return absl::NotFoundError(absl::StrCat("--resume: ", Root(), " holds no complete checkpoint",
                                              list.empty() ? "" : absl::StrCat(" (", list.back().dir(), ": ",
                                                                               list.back().problem(), ")")));
    }
    // The newest decides whether this job is the one that wrote them;
    // damage (found when the servers verify) falls back to older ones.
    const proto::CheckpointSummary& newest = complete.back();
    absl::StatusOr<proto::CheckpointManifest> m = storage::ReadManifest(newest.dir());
    if (!m.ok()) return m.status();
    if (absl::Status st = CheckResumable(newest.dir(), *m); !st.ok()) return st;
    for (auto it = complete.rbegin(); it != complete.rend(); ++it) resume_candidates_.push_back(it->dir());
    return absl::OkStatus();
  }

  // Whether checkpoint `dir` belongs to this job's config and data.
  absl::Status CheckResumable(const std::string& dir, const proto::CheckpointManifest& m) const {
    if (!m.has_job_state()) {
      return absl::FailedPreconditionError(
          absl::StrCat("--resume: ", dir, " was not written by a scheduler (it has no data position)"));
    }
    if (m.config_fingerprint() != storage::ConfigFingerprint(opt_.config, opt_.dense_size)) {
      std::vector<std::string> diffs;
      if (m.num_logical_shards() != opt_.config.cluster().num_logical_shards()) {
        diffs.push_back(absl::StrCat("cluster.num_logical_shards ", m.num_logical_shards(), " vs ",
                                     opt_.config.cluster().num_logical_shards()));
      }
      if (m.dense_total() != opt_.dense_size) {
        diffs.push_back(absl::StrCat("dense parameters ", m.dense_total(), " vs ", opt_.dense_size));
      }
      for (int t = 0; t < std::max(m.tables_size(), opt_.config.tables_size()); ++t) {
        if (t >= m.tables_size() || t >= opt_.config.tables_size()) {
          diffs.push_back(absl::StrCat("tables: ", m.tables_size(), " vs ", opt_.config.tables_size()));
          break;
        }
        const auto& a = m.tables(t);
        const auto& b = opt_.config.tables(t);
        const std::string opt_name = proto::OptimizerConfig::Kind_Name(b.optimizer().kind());
        if (a.name() != b.name() || a.dim() != b.dim() || a.optimizer() != opt_name) {
          diffs.push_back(absl::StrCat("tables[", t, "] ", a.name(), " dim ", a.dim(), " ", a.optimizer(), " vs ",
                                       b.name(), " dim ", b.dim(), " ", opt_name));
        }
      }
      return absl::FailedPreconditionError(
          absl::StrCat("--resume: ", dir, " was written with another config (checkpoint vs this config: ",
                       diffs.empty() ? "the config fingerprint" : absl::StrJoin(diffs, "; "), ")"));
    }
    const proto::JobState& s = m.job_state();
    if (s.data_fingerprint() != data_fingerprint_ || s.train_chunks() != train_chunks_.size() ||
        s.test_chunks() != test_chunks_.size()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "--resume: ", dir, " was cut from other data (", s.train_chunks(), " train and ", s.test_chunks(),
          " test chunks then, ", train_chunks_.size(), " and ", test_chunks_.size(),
          " now, or other files, sizes or data.chunk_bytes); resume on the data it was trained on"));
    }
    return absl::OkStatus();
  }

  // ----- the loop's periodic duties -----

  absl::Status Tick(absl::Time now) {
    if (absl::Status st = CheckHeartbeats(now); !st.ok()) return st;
    if (done_) return absl::OkStatus();
    if (!stop_seen_ && opt_.stop_requested && opt_.stop_requested()) {
      stop_seen_ = true;
      opt_.print("stop requested: checkpointing at the next step boundary, then stopping");
      LOG(INFO) << "stop requested";
    }
    if (recovering_) return TryRecover(now);
    if (!running_) return absl::OkStatus();
    if (stop_seen_ && !task_ && !pause_active_ && !in_boundary_ && !AnyWorkerSilent(now)) return BeginStop();
    if (absl::Status st = CheckWorkersPresent(now); !st.ok()) return st;
    if (phase_.kind() == proto::TRAIN && !task_ && !pause_active_ && !in_boundary_ && Checkpointing()) {
      const proto::CheckpointConfig& ck = opt_.config.checkpoint();
      const bool by_steps = ck.every_steps() > 0 && steps_total_ - last_ckpt_steps_ >= ck.every_steps();
      const bool by_time =
          ck.every_seconds() > 0 && now - last_ckpt_time_ >= absl::Seconds(ck.every_seconds());
      if ((by_steps || by_time || ExportDue(now)) && !AnyWorkerSilent(now)) {
        BeginPause(proto::PauseRequest::CHECKPOINT);
      }
    }
    if (phase_.kind() == proto::TRAIN &&
        now - last_progress_ >= absl::Milliseconds(opt_.config.train().report_interval_ms())) {
      PrintProgress(now);
      if (absl::Status st = DivergenceStop(); !st.ok()) return st;
    }
    return absl::OkStatus();
  }

  // The job's end if training diverged and train.divergence.stop is on.
  absl::Status DivergenceStop() const {
    if (result_.diverged.empty() || !opt_.config.train().divergence().stop()) return absl::OkStatus();
    return absl::AbortedError(absl::StrCat(
        "training diverged: ", result_.diverged,
        ". Lower the learning rates (model.dense_optimizer, tables[].optimizer) or check the data; "
        "train.divergence holds the rules"));
  }

  // True if a live worker has missed two heartbeats: it is probably dead. A
  // pause would wait for it (the others idle) until it is declared dead, so
  // a checkpoint waits for that instead, with training going on.
  bool AnyWorkerSilent(absl::Time now) const {
    const absl::Duration quiet = absl::Milliseconds(2 * opt_.config.cluster().heartbeat_interval_ms() + 500);
    for (const Node& n : nodes_) {
      if (n.is_worker() && n.live() && !n.awaiting_reply && now - n.last_seen > quiet) return true;
    }
    return false;
  }

  // A job whose workers are all gone waits for one to join, for as long as
  // a lost server's replacement.
  absl::Status CheckWorkersPresent(absl::Time now) {
    if (LiveWorkers() > 0) {
      no_workers_since_.reset();
      return absl::OkStatus();
    }
    if (!no_workers_since_) {
      no_workers_since_ = now;
      opt_.print("no live worker: waiting for one to join");
    }
    const uint32_t ms = opt_.config.checkpoint().replacement_timeout_ms();
    if (now - *no_workers_since_ > absl::Milliseconds(ms)) {
      return absl::UnavailableError(absl::StrCat("no worker joined within checkpoint.replacement_timeout_ms=", ms,
                                                 ResumeHint()));
    }
    return absl::OkStatus();
  }

  // ----- the helper thread -----

  void RunTask(std::string what, std::function<absl::Status()> work, std::function<absl::Status(absl::Status)> then) {
    CHECK(!task_) << "task " << task_->what() << " still running";
    task_era_ = era_.load();
    task_ = std::make_unique<Task>(std::move(what), std::move(work), std::move(then), era_.load());
  }

  absl::Status PollTask() {
    if (!task_ || !task_->Done()) return absl::OkStatus();
    std::unique_ptr<Task> t = std::move(task_);
    if (t->era() != era_.load()) {
      // A recovery began while it ran: whatever it did is rolled back.
      if (!t->status().ok()) LOG(WARNING) << t->what() << " failed during a recovery: " << t->status();
      return absl::OkStatus();
    }
    return t->then()(t->status());
  }

  // ----- messages -----

  absl::Status Handle(net::Message m) {
    if (transport_->authenticates()) {
      if (absl::Status a = net::Authorize(proto::SCHEDULER, m.peer_role, m.header); !a.ok()) {
        rejects_.Warn(absl::StrCat("peer ", m.peer, ": ", a.message()));
        if (!m.header.is_reply()) Send(net::MakeErrorReply(m, proto::UNAUTHORIZED, std::string(a.message())));
        return absl::OkStatus();
      }
    }
    net::WireCheck check = net::ValidateMessage(m);
    if (!check.ok()) {
      rejects_.Warn(absl::StrCat("malformed message from peer ", m.peer, ": ", check.why));
      if (!m.header.is_reply()) Send(net::MakeErrorReply(m, check.code, check.why));
      return absl::OkStatus();
    }
    if (m.header.command() == proto::REGISTER) return HandleRegister(std::move(m));
    auto it = node_of_peer_.find(m.peer);
    if (it == node_of_peer_.end()) {
      Send(net::MakeErrorReply(m, proto::BAD_REQUEST, "unknown node: register first"));
      return absl::OkStatus();
    }
    Node& node = nodes_[it->second];
    if (node.dead) {
      // Declared dead (too long silent): it must not take part any more.
      if (!m.header.is_reply() && m.header.command() != proto::SHUTDOWN) {
        Send(net::MakeErrorReply(m, proto::BAD_REQUEST, "this node was declared dead; start a new process"));
      }
      return absl::OkStatus();
    }
    node.last_seen = absl::Now();
    const proto::Command c = m.header.command();
    // Chunk, phase and clock requests sent before a recovery the worker has
    // not restarted from are answered with an error and have no effect.
    if (node.is_worker() && (c == proto::GET_CHUNK || c == proto::PHASE_DONE || c == proto::BARRIER) &&
        !m.header.is_reply() && m.header.incarnation() != incarnation_) {
      Send(net::MakeErrorReply(m, proto::STALE_INCARNATION,
                               absl::StrCat("incarnation ", m.header.incarnation(), " is over; the job is in ",
                                            incarnation_)));
      return absl::OkStatus();
    }
    switch (c) {
      case proto::HEARTBEAT:
      case proto::PING:
        if (!m.header.is_reply()) Send(net::MakeReply(m));
        return absl::OkStatus();
      case proto::REPORT_METRICS:
        UpdateMetrics(node, m.header.metrics());
        return CheckBadLines();
      case proto::GET_CHUNK:
        return HandleGetChunk(node, std::move(m));
      case proto::PHASE_DONE:
        return HandlePhaseDone(node, std::move(m));
      case proto::BARRIER:
        return HandleBarrier(node, std::move(m));
      case proto::PAUSED:
        return HandlePaused(node, std::move(m));
      case proto::SHUTDOWN:
        // A node leaving: after DONE that is the goodbye; before, a failure.
        if (done_ && !m.header.shutdown().failed()) {
          node.left = true;
          return absl::OkStatus();
        }
        if (node.is_worker() && m.header.shutdown().failed() && !recovering_) {
          node.left = true;
          return absl::AbortedError(absl::StrCat(Name(node), " stopped: ", m.header.shutdown().reason()));
        }
        // A server leaving mid-job (or a worker leaving during a recovery)
        // is handled like a lost one.
        LOG(WARNING) << Name(node) << " left mid-job: " << m.header.shutdown().reason();
        return NodeLost(node, absl::StrCat("left: ", m.header.shutdown().reason()));
      default:
        if (m.header.is_reply()) return absl::OkStatus();
        Send(net::MakeErrorReply(m, proto::UNKNOWN_COMMAND,
                                 absl::StrCat("the scheduler does not serve ", proto::Command_Name(c))));
        return absl::OkStatus();
    }
  }

  // ----- membership -----

  absl::Status HandleRegister(net::Message m) {
    const proto::ClusterConfig& cc = opt_.config.cluster();
    const proto::RegisterRequest& req = m.header.register_request();
    auto reject = [&](const std::string& why) {
      rejects_.Warn(absl::StrCat("refused a registration from ", req.node().host(), " pid ", req.node().pid(), ": ",
                                 why));
      Send(net::MakeErrorReply(m, proto::BAD_REQUEST, why));
      return absl::OkStatus();
    };
    if (!opt_.job_token.empty() && !TokenMatches(req.job_token())) {
      return reject("wrong or missing job token (EMBER_JOB_TOKEN): this node belongs to another job");
    }
    if (node_of_peer_.contains(m.peer)) return reject("already registered");
    const proto::Role role = req.node().role();
    if (role != proto::SERVER && role != proto::WORKER) return reject("role must be SERVER or WORKER");
    if (role == proto::SERVER && req.node().endpoint().empty()) return reject("a server must give its endpoint");
    if (role == proto::WORKER && req.dense_size() != 0 && req.dense_size() != opt_.dense_size) {
      // Refused, not fatal: a stray or misconfigured process must not be
      // able to fail the job by registering.
      return reject(absl::StrCat("worker at ", req.node().host(), " pid ", req.node().pid(), " built a model with ",
                                 req.dense_size(), " dense parameters; the scheduler's config has ", opt_.dense_size));
    }
    const uint32_t of_role = role == proto::SERVER ? cc.num_servers() : cc.num_workers();
    if (req.has_rank() && (req.rank() < 0 || static_cast<uint32_t>(req.rank()) >= of_role)) {
      return reject(absl::StrCat("rank ", req.rank(), " is out of range: the job has ", of_role, " ",
                                 proto::Role_Name(role), "s"));
    }
    if (!registered_ && req.has_rank() && RankTaken(role, req.rank())) {
      return reject(absl::StrCat(proto::Role_Name(role), " rank ", req.rank(), " is taken by a live node"));
    }
    Node node;
    node.info = req.node();
    node.info.set_id(static_cast<int>(nodes_.size()) + 1);  // the scheduler is 0
    node.peer = m.peer;
    node.last_seen = absl::Now();
    node.awaiting_reply = true;
    if (!registered_) {
      uint32_t* count = role == proto::SERVER ? &servers_ : &workers_;
      const uint32_t want = role == proto::SERVER ? cc.num_servers() : cc.num_workers();
      if (*count >= want) {
        return reject(absl::StrCat("the job already has its ", want, " ", proto::Role_Name(role), "s"));
      }
      node.info.set_rank(req.has_rank() ? req.rank() : NextFreeRank(role));
      ++*count;
    } else if (role == proto::SERVER) {
      // A replacement takes the rank of a lost server; with none lost (the
      // old process may not be declared dead yet) it waits for one.
      std::optional<int> rank = FreeServerRank();
      if (rank && req.has_rank()) {
        // The replacement asked for a rank: it must be a lost one.
        if (!server_node_.contains(req.rank()) || nodes_[server_node_.at(req.rank())].live()) rank.reset();
        else rank = req.rank();
      }
      if (!rank) {
        LOG(INFO) << "server at " << req.node().endpoint() << " waits for a lost server's rank";
        waiting_register_.push_back(std::move(m));
        return absl::OkStatus();
      }
      node.info.set_rank(*rank);
    } else {
      if (LiveWorkers(/*awaiting_too=*/true) >= cc.num_workers() || (req.has_rank() && RankTaken(role, req.rank()))) {
        // A replacement started before the old worker was declared dead:
        // it waits for that.
        LOG(INFO) << "worker at " << req.node().host() << " pid " << req.node().pid()
                  << " waits for a place (the job has its " << cc.num_workers() << " workers)";
        waiting_register_.push_back(std::move(m));
        return absl::OkStatus();
      }
      node.info.set_rank(req.has_rank() ? req.rank() : NextFreeRank(proto::WORKER));
    }
    return AddNode(std::move(node), std::move(m));
  }

  // Compares in time independent of where the tokens differ.
  bool TokenMatches(const std::string& got) const {
    const std::string& want = opt_.job_token;
    unsigned diff = got.size() != want.size();
    for (size_t i = 0; i < want.size(); ++i) diff |= static_cast<unsigned char>(want[i] ^ (i < got.size() ? got[i] : 0));
    return diff == 0;
  }

  bool RankTaken(proto::Role role, int rank) const {
    for (const Node& n : nodes_) {
      if (n.info.role() == role && n.info.rank() == rank && n.live()) return true;
    }
    return false;
  }

  // Before registration completes: the lowest rank of `role` no node has.
  int NextFreeRank(proto::Role role) const {
    for (int r = 0;; ++r) {
      if (!RankTaken(role, r)) return r;
    }
  }

  absl::Status AddNode(Node node, net::Message request) {
    const proto::ClusterConfig& cc = opt_.config.cluster();
    const proto::Role role = node.info.role();
    LOG(INFO) << "registered " << proto::Role_Name(role) << " rank " << node.info.rank() << " as node "
              << node.info.id() << " (" << node.info.host() << " pid " << node.info.pid() << " "
              << node.info.endpoint() << ")";
    node_of_peer_[node.peer] = nodes_.size();
    nodes_.push_back(node);
    Node& n = nodes_.back();
    if (n.is_server()) server_node_[n.info.rank()] = nodes_.size() - 1;
    pending_register_.push_back(std::move(request));
    if (!registered_) {
      if (servers_ == cc.num_servers() && workers_ == cc.num_workers()) return CompleteRegistration();
      return absl::OkStatus();
    }
    if (n.is_server()) {
      opt_.print(absl::StrCat(Name(n), " registered to replace the lost server"));
      ReplyRegistrations(/*workers=*/false);
      return absl::OkStatus();
    }
    opt_.print(absl::StrCat(Name(n), " joined"));
    if (phase_.kind() == proto::TRAIN || phase_.kind() == proto::EVAL) {
      const uint64_t min = MinClock();  // the others' slowest (none: max)
      n.clock_offset = min == std::numeric_limits<uint64_t>::max() ? 0 : min;
    }
    if (running_ && !recovering_) ReplyRegistrations(/*workers=*/true);
    return absl::OkStatus();
  }

  std::optional<int> FreeServerRank() const {
    for (const auto& [rank, index] : server_node_) {
      if (!nodes_[index].live()) return rank;
    }
    return std::nullopt;
  }

  uint32_t LiveWorkers(bool awaiting_too = false) const {
    uint32_t k = 0;
    for (const Node& n : nodes_) k += n.is_worker() && n.live() && (awaiting_too || !n.awaiting_reply);
    return k;
  }

  bool AllServersLive() const {
    for (const auto& [rank, index] : server_node_) {
      if (!nodes_[index].live()) return false;
    }
    return server_node_.size() == opt_.config.cluster().num_servers();
  }

  proto::ClusterInfo ClusterNow() const {
    const proto::ClusterConfig& cc = opt_.config.cluster();
    proto::ClusterInfo info;
    for (const Node& n : nodes_) {
      if (n.live()) *info.add_nodes() = n.info;
    }
    proto::ShardMap* map = info.mutable_shard_map();
    map->set_num_logical_shards(cc.num_logical_shards());
    for (uint32_t s = 0; s < cc.num_logical_shards(); ++s) map->add_server_rank(s % cc.num_servers());
    proto::DenseLayout* dense = info.mutable_dense();
    dense->set_total(opt_.dense_size);
    for (uint32_t s = 0; s <= cc.num_servers(); ++s) dense->add_offset(opt_.dense_size * s / cc.num_servers());
    *info.mutable_config() = opt_.config;
    info.set_job_id(job_id_);
    info.set_incarnation(incarnation_);
    return info;
  }

  // Answers held registrations of servers, or of workers too.
  void ReplyRegistrations(bool workers) {
    const proto::ClusterInfo info = ClusterNow();
    std::vector<net::Message> keep;
    for (net::Message& req : pending_register_) {
      auto it = node_of_peer_.find(req.peer);
      if (it == node_of_peer_.end()) continue;
      Node& n = nodes_[it->second];
      if (n.is_worker() && !workers) {
        keep.push_back(std::move(req));
        continue;
      }
      n.awaiting_reply = false;
      n.last_seen = absl::Now();
      net::Message r = net::MakeReply(req);
      proto::RegisterReply* rr = r.header.mutable_register_reply();
      rr->set_node_id(n.info.id());
      rr->set_rank(n.info.rank());
      *rr->mutable_cluster() = info;
      *rr->mutable_phase() = phase_;
      Send(std::move(r));
    }
    pending_register_ = std::move(keep);
  }

  absl::Status CompleteRegistration() {
    const proto::ClusterConfig& cc = opt_.config.cluster();
    registered_ = true;
    opt_.print(absl::StrCat("cluster up: ", cc.num_servers(), " servers, ", cc.num_workers(), " workers, ",
                            cc.num_logical_shards(), " logical shards, ", opt_.dense_size, " dense parameters"));
    // Servers start serving now; workers wait until the model is in place.
    ReplyRegistrations(/*workers=*/false);
    if (Checkpointing() || AnyResets()) {
      if (absl::Status st = ConnectServers(); !st.ok()) return st;
    }
    if (opt_.resume) return StartRestore(Restore::kResume);
    if (Checkpointing()) {
      // Checkpoint 1 is the untrained model, so that a server lost before
      // the first periodic checkpoint still has one to restore.
      StartPhaseAt(0, nullptr);
      return StartSave(/*epoch_end=*/false, [this](absl::Status) { return BeginRunning(); });
    }
    StartPhaseAt(0, nullptr);
    return BeginRunning();
  }

  absl::Status BeginRunning() {
    running_ = true;
    epoch_clock_start_ = absl::Now();
    last_ckpt_time_ = absl::Now();
    last_ckpt_steps_ = steps_total_;
    last_export_time_ = absl::Now();
    last_export_steps_ = steps_total_;
    ReplyRegistrations(/*workers=*/true);
    return absl::OkStatus();
  }

  absl::Status ConnectServers() {
    if (!opt_.new_transport) return absl::InternalError("SchedulerOptions.new_transport is not set");
    if (!server_client_) {
      absl::StatusOr<std::unique_ptr<net::Transport>> t = opt_.new_transport();
      if (!t.ok()) return t.status();
      server_client_ = net::Client::Create(std::move(*t));
    }
    std::vector<net::PeerId> peers(opt_.config.cluster().num_servers(), net::kNoPeer);
    for (auto& [rank, index] : server_node_) {
      Node& n = nodes_[index];
      auto it = server_peer_.find(n.info.id());
      if (it == server_peer_.end()) {
        absl::StatusOr<net::PeerId> p = server_client_->Connect(n.info.endpoint(), proto::SERVER);
        if (!p.ok()) return p.status();
        it = server_peer_.emplace(n.info.id(), *p).first;
      }
      peers[rank] = it->second;
    }
    ps::CheckpointCoordinatorOptions o;
    o.config = opt_.config;
    o.dense_total = opt_.dense_size;
    o.servers = peers;
    o.node_id = 0;
    // A call in flight when a server is lost (or the job ends) gives up
    // rather than wait for a reply that will never come.
    o.cancelled = [this] { return shutting_down_.load() || era_.load() != task_era_.load(); };
    if (!coordinator_) {
      coordinator_ = std::make_unique<ps::CheckpointCoordinator>(o, server_client_.get());
    } else {
      coordinator_->SetServers(peers);
    }
    return absl::OkStatus();
  }

  bool AnyResets() const {
    for (const proto::TableConfig& t : opt_.config.tables()) {
      if (t.reset().every_epoch() || t.reset().before_epochs_size() > 0) return true;
    }
    return false;
  }

  // ----- chunks -----

  absl::Status HandleGetChunk(Node& node, net::Message m) {
    const proto::ChunkRequest& req = m.header.chunk_request();
    if (!node.is_worker()) {
      Send(net::MakeErrorReply(m, proto::BAD_REQUEST, "only workers take chunks"));
      return absl::OkStatus();
    }
    absl::Status st = MarkFinished(node, req.finished());
    if (!st.ok()) return st;
    if (req.phase() != phase_.index() || (phase_.kind() != proto::TRAIN && phase_.kind() != proto::EVAL)) {
      Send(net::MakeErrorReply(m, proto::BAD_REQUEST,
                               absl::StrCat("asked for phase ", req.phase(), ", the job is in phase ", phase_.index())));
      return absl::OkStatus();
    }
    net::Message r = net::MakeReply(m);
    proto::ChunkReply* cr = r.header.mutable_chunk_reply();
    *cr->mutable_phase() = phase_;
    if (queue_.empty()) {
      cr->set_end_of_phase(true);
    } else {
      const proto::Chunk& c = phase_chunks_[queue_.front()];
      queue_.pop_front();
      outstanding_[c.id()] = node.info.id();
      *cr->mutable_chunk() = c;
    }
    Send(std::move(r));
    return absl::OkStatus();
  }

  absl::Status MarkFinished(const Node& node, const google::protobuf::RepeatedField<uint64_t>& ids) {
    for (uint64_t id : ids) {
      auto it = outstanding_.find(id);
      if (it == outstanding_.end() || it->second != node.info.id()) {
        return absl::InternalError(
            absl::StrCat(Name(node), " reported chunk ", id, " finished, but it was not handed to it"));
      }
      outstanding_.erase(it);
      finished_by_[id] = node.info.id();
      positions_.erase(id);
    }
    return absl::OkStatus();
  }

  // Puts a lost worker's chunks back at the front of the queue: those it held,
  // and in an EVAL phase those it finished too (their predictions died with
  // it).
  uint64_t Requeue(const Node& node) {
    std::vector<uint64_t> ids;
    for (const auto& [id, owner] : outstanding_) {
      if (owner == node.info.id()) ids.push_back(id);
    }
    for (uint64_t id : ids) outstanding_.erase(id);
    if (phase_.kind() == proto::EVAL) {
      for (const auto& [id, owner] : finished_by_) {
        if (owner == node.info.id()) ids.push_back(id);
      }
      for (uint64_t id : ids) finished_by_.erase(id);
    }
    std::sort(ids.begin(), ids.end(), std::greater<>());
    for (uint64_t id : ids) {
      positions_.erase(id);
      queue_.push_front(chunk_index_.at(id));
    }
    return ids.size();
  }

  // ----- phases -----

  // The phase with index `index`, skipping EVAL phases the config does not
  // want: for epoch e, TRAIN is 2e and EVAL 2e+1; DONE follows the last.
  proto::Phase PhaseAt(uint32_t index) const {
    const proto::TrainConfig& t = opt_.config.train();
    proto::Phase p;
    for (;;) {
      const uint32_t epoch = index / 2;
      proto::PhaseKind kind = index % 2 == 0 ? proto::TRAIN : proto::EVAL;
      if (epoch >= t.epochs()) kind = proto::DONE;
      if (kind == proto::EVAL && (test_chunks_.empty() || (!t.eval_every_epoch() && epoch + 1 < t.epochs()))) {
        ++index;
        continue;
      }
      p.set_index(index);
      p.set_kind(kind);
      p.set_epoch(std::min(epoch, t.epochs()));
      return p;
    }
  }

  // Enters phase `index`; with `from`, only what is left of it at that
  // checkpoint's cut.
  void StartPhaseAt(uint32_t index, const proto::JobState* from) {
    phase_ = PhaseAt(index);
    phase_chunks_.clear();
    chunk_index_.clear();
    queue_.clear();
    outstanding_.clear();
    finished_by_.clear();
    positions_.clear();
    const std::vector<proto::Chunk>* chunks =
        phase_.kind() == proto::TRAIN ? &train_chunks_ : phase_.kind() == proto::EVAL ? &test_chunks_ : nullptr;
    if (chunks) {
      absl::flat_hash_set<uint64_t> finished;
      absl::flat_hash_map<uint64_t, const proto::Chunk*> partial;
      if (from && from->phase() == phase_.index()) {
        finished.insert(from->finished_chunks().begin(), from->finished_chunks().end());
        for (const proto::Chunk& c : from->partial_chunks()) partial[c.id()] = &c;
      }
      for (const proto::Chunk& c : *chunks) {
        if (finished.contains(c.id())) {
          finished_by_[c.id()] = 0;
          continue;
        }
        auto p = partial.find(c.id());
        phase_chunks_.push_back(p == partial.end() ? c : *p->second);
        chunk_index_[c.id()] = phase_chunks_.size() - 1;
        queue_.push_back(phase_chunks_.size() - 1);
      }
    }
    phase_start_ = last_progress_ = absl::Now();
    phase_bytes_start_ = bytes_total_;
    // Of the epoch's bytes, those a resumed or rolled-back phase has behind it.
    phase_done_bytes_ = 0;
    if (phase_.kind() == proto::TRAIN) {
      uint64_t left = 0;
      for (const proto::Chunk& c : phase_chunks_) left += c.end() - c.begin();
      phase_done_bytes_ = train_bytes_ - std::min(train_bytes_, left);
    }
    phase_samples_start_ = phase_.kind() == proto::TRAIN ? epoch_samples_ : 0;
    last_samples_ = samples_total_;
    last_loss_ = loss_total_;
    eval_scores_.clear();
    eval_labels_.clear();
    eval_users_.clear();
    for (Node& n : nodes_) {
      n.phase_done = false;
      n.clock = n.clock_offset = 0;
    }
    if (phase_.kind() != proto::DONE) {
      LOG(INFO) << "phase " << phase_.index() << ": " << proto::PhaseKind_Name(phase_.kind()) << " epoch "
                << phase_.epoch() + 1 << " (" << queue_.size() << " chunks)";
    }
  }

  absl::Status HandlePhaseDone(Node& node, net::Message m) {
    const proto::PhaseDone& pd = m.header.phase_done();
    if (!node.is_worker() || pd.phase() != phase_.index() || node.phase_done) {
      Send(net::MakeErrorReply(m, proto::BAD_REQUEST, absl::StrCat("unexpected PHASE_DONE for phase ", pd.phase())));
      return absl::OkStatus();
    }
    absl::Status st = MarkFinished(node, pd.finished());
    if (!st.ok()) return st;
    if (phase_.kind() == proto::EVAL && !m.frames.empty() &&
        std::max<uint32_t>(1, pd.num_tasks()) != result_.tasks.size()) {
      Send(net::MakeErrorReply(m, proto::BAD_REQUEST,
                               absl::StrCat("PHASE_DONE has ", pd.num_tasks(), " tasks, the job has ",
                                            result_.tasks.size())));
      return absl::OkStatus();
    }
    if (phase_.kind() == proto::EVAL && !m.frames.empty()) {
      auto s = m.frames[0].As<float>();
      auto l = m.frames[1].As<float>();
      auto u = m.frames[2].As<uint64_t>();
      eval_scores_.insert(eval_scores_.end(), s.begin(), s.end());
      eval_labels_.insert(eval_labels_.end(), l.begin(), l.end());
      eval_users_.insert(eval_users_.end(), u.begin(), u.end());
    }
    node.phase_done = true;
    pending_phase_done_.push_back(std::move(m));
    if (pause_active_) PauseAcked(node.info.id());
    ReleaseStepBarrier();
    ReleaseClocks();
    return MaybeFinishPhase();
  }

  // When every live worker has drained the phase: the phase is over if no
  // chunk is left, else (chunks of a lost worker came back) the waiting
  // workers run it again.
  absl::Status MaybeFinishPhase() {
    if (in_boundary_ || recovering_ || !running_) return absl::OkStatus();
    if (phase_.kind() != proto::TRAIN && phase_.kind() != proto::EVAL) return absl::OkStatus();
    bool any = false;
    for (const Node& n : nodes_) {
      if (n.is_worker() && n.live() && !n.awaiting_reply) {
        if (!n.phase_done) return absl::OkStatus();
        any = true;
      }
    }
    if (!any) return absl::OkStatus();
    if (!outstanding_.empty()) {
      return absl::InternalError(absl::StrCat("phase ", phase_.index(), ": every worker is done but ",
                                              outstanding_.size(), " chunks handed out were never finished"));
    }
    if (!queue_.empty()) {
      // Chunks came back: every waiting worker runs the phase again.
      for (Node& n : nodes_) n.phase_done = false;
      ReplyPhaseDone();
      return absl::OkStatus();
    }
    if (pause_active_) return absl::OkStatus();  // the save in progress goes first
    if (task_) return absl::OkStatus();  // an export in progress goes first; its end calls back here
    return FinishPhase();
  }

  void ReplyPhaseDone() {
    for (net::Message& pd : pending_phase_done_) {
      net::Message r = net::MakeReply(pd);
      *r.header.mutable_phase_done_reply()->mutable_next() = phase_;
      Send(std::move(r));
    }
    pending_phase_done_.clear();
  }

  // The boundary between phases, as a chain of steps that may each run on
  // the helper thread: evaluation metrics, the epoch-end checkpoint, the
  // resets before the next epoch, then the next phase.
  absl::Status FinishPhase() {
    in_boundary_ = true;
    const absl::Time now = absl::Now();
    if (phase_.kind() == proto::TRAIN) {
      PrintProgress(now);
      if (absl::Status st = DivergenceStop(); !st.ok()) return st;
      // Wall time of the epoch, recoveries included.
      const double secs = EpochSeconds();
      result_.train_seconds += secs;
      opt_.print(absl::StrFormat("epoch %d/%d trained: %d samples in %.1fs (%.0f samples/s)", phase_.epoch() + 1,
                                 opt_.config.train().epochs(), epoch_samples_, secs,
                                 epoch_samples_ / std::max(secs, 1e-9)));
      WriteEvent(Event("epoch").Add("epoch_samples", epoch_samples_).Add("train_seconds", secs));
      const bool last = phase_.epoch() + 1 >= opt_.config.train().epochs();
      const bool final_export = last && Exporting() && opt_.config.export_().at_end();
      const bool export_now = final_export || ExportDue(now);
      if (Checkpointing() && (opt_.config.checkpoint().at_epoch_end() || export_now)) {
        return StartSave(/*epoch_end=*/true, [this, export_now, final_export](absl::Status st) {
          if (!st.ok() || !export_now) {
            if (final_export) return absl::FailedPreconditionError("no checkpoint to export the trained model from");
            return ResetsThenNextPhase();
          }
          StartExport(final_export, [this] { return ResetsThenNextPhase(); });
          return absl::OkStatus();
        });
      }
      return ResetsThenNextPhase();
    }
    if (phase_.kind() == proto::EVAL) return ComputeEval();
    return absl::OkStatus();
  }

  absl::Status ComputeEval() {
    struct Out {
      std::vector<TaskResult> tasks;
      size_t n = 0;
      std::string scores_text;  // the last evaluation's, when eval_scores_file is set
    };
    auto out = std::make_shared<Out>();
    out->tasks = result_.tasks;
    const bool no_users = opt_.config.data().user_column().empty();
    const bool write_scores =
        !opt_.eval_scores_file.empty() && PhaseAt(phase_.index() + 1).kind() == proto::DONE;
    RunTask(
        "evaluation metrics",
        [out, no_users, write_scores, scores = std::move(eval_scores_), labels = std::move(eval_labels_),
         users = std::move(eval_users_)]() {
          const size_t num_tasks = out->tasks.size();
          const size_t n = users.size();
          out->n = n;
          if (write_scores) out->scores_text = ScoresText(scores, std::max<size_t>(1, num_tasks));
          std::vector<float> s(n), l(n);
          for (size_t t = 0; t < num_tasks; ++t) {
            for (size_t i = 0; i < n; ++i) {
              s[i] = scores[i * num_tasks + t];
              l[i] = labels[i * num_tasks + t];
            }
            TaskResult& r = out->tasks[t];
            r.auc = models::ExactAuc(s, l);
            r.logloss = models::LogLoss(s, l);
            r.gauc = no_users ? kNaN : models::GroupAuc(s, l, users);
          }
          return absl::OkStatus();
        },
        [this, out, no_users, write_scores](absl::Status) {
          proto::EvalRecord rec;
          rec.set_epoch(phase_.epoch());
          rec.set_samples(out->n);
          JsonObject tasks;
          for (const TaskResult& r : out->tasks) {
            opt_.print(absl::StrCat(
                "eval after epoch ", phase_.epoch() + 1, ": task=", r.name,
                Figure("auc", r.auc, out->n == 0 ? "no test samples" : "the test labels are all one class"),
                Figure("gauc", r.gauc, no_users ? "no data.user_column" : "no user has both classes"),
                Figure("logloss", r.logloss, "no test samples"), " samples=", out->n));
            proto::TaskMetrics* tm = rec.add_tasks();
            tm->set_name(r.name);
            tm->set_auc(r.auc);
            tm->set_gauc(r.gauc);
            tm->set_logloss(r.logloss);
            tasks.Add(r.name, JsonObject().Add("auc", r.auc).Add("gauc", r.gauc).Add("logloss", r.logloss));
          }
          WriteEvent(Event("eval").Add("test_samples", static_cast<uint64_t>(out->n)).Add("tasks", tasks));
          evals_.push_back(rec);
          ApplyEval(rec);
          // The final model scores the test split no better than chance: it
          // collapsed, whatever training looked like (train.divergence).
          const proto::DivergenceConfig& dv = opt_.config.train().divergence();
          if (dv.enabled() && PhaseAt(phase_.index() + 1).kind() == proto::DONE && result_.diverged.empty() &&
              std::isfinite(result_.auc) && std::fabs(result_.auc - 0.5) <= dv.auc_margin()) {
            result_.diverged = absl::StrFormat("test AUC %.4f within %g of 0.5: the model collapsed", result_.auc,
                                               dv.auc_margin());
            opt_.print(absl::StrCat("divergence: ", result_.diverged));
            WriteEvent(Event("divergence").Add("reason", result_.diverged));
          }
          if (write_scores) {
            // Here, not on the helper thread: an evaluation a recovery
            // interrupted never reaches this point, so the file is written once.
            if (absl::Status st = WriteNewFileAtomically(opt_.eval_scores_file, out->scores_text); !st.ok()) {
              return absl::Status(st.code(), absl::StrCat("--eval_scores_out: ", st.message()));
            }
            LOG(INFO) << "eval scores of " << out->n << " samples written to " << opt_.eval_scores_file;
          }
          return ResetsThenNextPhase();
        });
    return absl::OkStatus();
  }

  void ApplyEval(const proto::EvalRecord& rec) {
    for (size_t t = 0; t < result_.tasks.size() && t < static_cast<size_t>(rec.tasks_size()); ++t) {
      result_.tasks[t].auc = rec.tasks(t).auc();
      result_.tasks[t].gauc = rec.tasks(t).gauc();
      result_.tasks[t].logloss = rec.tasks(t).logloss();
    }
    result_.auc = result_.tasks[0].auc;
    result_.gauc = result_.tasks[0].gauc;
    result_.logloss = result_.tasks[0].logloss;
    result_.eval_samples = rec.samples();
  }

  // The tables to reset before TRAIN of epoch `epoch` (0-based).
  std::vector<uint32_t> ResetsBefore(uint32_t epoch) const {
    std::vector<uint32_t> tables;
    if (epoch == 0) return tables;
    for (int t = 0; t < opt_.config.tables_size(); ++t) {
      const proto::ResetConfig& r = opt_.config.tables(t).reset();
      bool reset = r.every_epoch();
      for (uint32_t e : r.before_epochs()) reset |= e == epoch + 1;
      if (reset) tables.push_back(static_cast<uint32_t>(t));
    }
    return tables;
  }

  absl::Status ResetsThenNextPhase() {
    const proto::Phase next = PhaseAt(phase_.index() + 1);
    if (next.kind() == proto::TRAIN) return RunResets(next.epoch(), [this, next] { return EnterPhase(next.index()); });
    return EnterPhase(next.index());
  }

  absl::Status RunResets(uint32_t epoch, std::function<absl::Status()> then) {
    const std::vector<uint32_t> tables = ResetsBefore(epoch);
    if (tables.empty()) return then();
    ps::CheckpointCoordinator* coord = coordinator_.get();
    RunTask(
        "reset",
        [coord, tables]() {
          for (uint32_t t : tables) {
            absl::StatusOr<uint32_t> g = coord->ResetTable(t);
            if (!g.ok()) return g.status();
          }
          return absl::OkStatus();
        },
        [this, tables, epoch, then](absl::Status st) {
          if (!st.ok()) {
            // A lost server fails the reset; the recovery redoes it (the
            // checkpoint it restores says the epoch's resets are not done).
            if (recovering_) return absl::OkStatus();
            return absl::Status(st.code(), absl::StrCat("embedding reset before epoch ", epoch + 1, ": ", st.message()));
          }
          std::vector<std::string> names;
          for (uint32_t t : tables) names.push_back(opt_.config.tables(t).name());
          opt_.print(absl::StrCat("reset before epoch ", epoch + 1, ": tables ", absl::StrJoin(names, ", ")));
          JsonObject ev = Event("reset");
          ev.Add("epoch", static_cast<uint64_t>(epoch + 1)).Add("tables", absl::StrJoin(names, ","));
          WriteEvent(ev);
          return then();
        });
    return absl::OkStatus();
  }

  absl::Status EnterPhase(uint32_t index) {
    if (PhaseAt(index).kind() == proto::TRAIN) {
      epoch_samples_ = 0;
      epoch_seconds_base_ = 0;
      epoch_clock_start_ = absl::Now();
    }
    StartPhaseAt(index, nullptr);
    in_boundary_ = false;
    ReplyPhaseDone();
    if (phase_.kind() == proto::DONE) return FinishJob();
    return MaybeFinishPhase();  // e.g. a phase with no chunks
  }

  absl::Status FinishJob() {
    done_ = true;
    running_ = false;
    shutdown_deadline_ = absl::Now() + absl::Seconds(10);
    result_.samples = samples_total_;
    result_.samples_per_sec = samples_total_ / std::max(result_.train_seconds, 1e-9);
    for (Node& n : nodes_) {
      if (n.is_server() && n.live()) SendShutdown(n, "job finished", false);
    }
    return absl::OkStatus();
  }

  // ----- pauses and checkpoints -----

  // Asks every live worker in the phase to stop at its next step boundary.
  void BeginPause(proto::PauseRequest::Kind kind) {
    pause_active_ = true;
    pause_kind_ = kind;
    pause_id_ = ++pause_seq_;
    pause_start_ = absl::Now();
    for (Node& n : nodes_) {
      if (!n.is_worker() || !n.live() || n.awaiting_reply) continue;
      if (kind == proto::PauseRequest::CHECKPOINT && n.phase_done) continue;
      bool held = false;
      for (const net::Message& p : held_paused_) held |= p.peer == n.peer;
      if (!held) pause_waiting_.insert(n.info.id());
      net::Message m;
      m.peer = n.peer;
      m.header.set_command(proto::PAUSE);
      m.header.mutable_pause()->set_id(pause_id_);
      m.header.mutable_pause()->set_kind(kind);
      Send(std::move(m));
    }
    // A worker held at a BSP barrier or an SSP clock cannot reach its step
    // boundary: let it go (one step may run outside the bound).
    for (net::Message& b : step_barrier_) Send(net::MakeReply(b));
    step_barrier_.clear();
    ReleaseClocks(/*all=*/true);
    LOG(INFO) << "pause " << pause_id_ << " (" << proto::PauseRequest::Kind_Name(kind) << "): waiting for "
              << pause_waiting_.size() << " workers";
    if (pause_waiting_.empty()) PauseComplete();
  }

  absl::Status HandlePaused(Node& node, net::Message m) {
    const proto::Paused& p = m.header.paused();
    if (!node.is_worker()) {
      Send(net::MakeErrorReply(m, proto::BAD_REQUEST, "only workers pause"));
      return absl::OkStatus();
    }
    UpdateMetrics(node, p.metrics());
    if (!pause_active_ || p.id() != pause_id_) {
      // A pause that is over (the worker saw it late): go on.
      if (!recovering_) {
        net::Message r = net::MakeReply(m);
        r.header.mutable_paused_reply()->set_pause_id(p.id());
        Send(std::move(r));
        return absl::OkStatus();
      }
    }
    if (pause_kind_ == proto::PauseRequest::CHECKPOINT && p.phase() == phase_.index()) {
      if (absl::Status st = MarkFinished(node, p.finished()); !st.ok()) return st;
      for (const proto::ChunkPosition& pos : p.positions()) {
        auto it = outstanding_.find(pos.id());
        if (it == outstanding_.end() || it->second != node.info.id()) {
          return absl::InternalError(
              absl::StrCat(Name(node), " reported progress in chunk ", pos.id(), ", which it does not hold"));
        }
        positions_[pos.id()] = pos;
      }
    }
    held_paused_.push_back(std::move(m));
    PauseAcked(node.info.id());
    return absl::OkStatus();
  }

  void PauseAcked(int32_t node_id) {
    if (pause_waiting_.erase(node_id) && pause_waiting_.empty()) PauseComplete();
  }

  void PauseComplete() {
    LOG(INFO) << "pause " << pause_id_ << ": every worker stopped after "
              << absl::FormatDuration(absl::Now() - pause_start_);
    if (pause_kind_ != proto::PauseRequest::CHECKPOINT) return;  // TryRecover takes it from here
    absl::Status st = StartSave(/*epoch_end=*/false, [this](absl::Status saved) {
      // Stopping: the paused workers are told to exit, not to go on.
      if (stop_seen_) return StopJob();
      EndPause();
      // A live-serving export runs with training going on.
      if (saved.ok() && ExportDue(absl::Now())) {
        StartExport(/*final=*/false, [this] { return MaybeFinishPhase(); });
        return absl::OkStatus();
      }
      return MaybeFinishPhase();
    });
    if (!st.ok()) LOG(ERROR) << st;
  }

  // Lets paused workers go on.
  void EndPause() {
    for (net::Message& p : held_paused_) {
      net::Message r = net::MakeReply(p);
      r.header.mutable_paused_reply()->set_pause_id(pause_id_);
      Send(std::move(r));
    }
    held_paused_.clear();
    pause_waiting_.clear();
    pause_active_ = false;
    positions_.clear();
  }

  // Where the job stands, as a checkpoint records it. `next_phase`: the
  // phase is over, the cut is at the start of the next one.
  proto::JobState StateNow(bool next_phase) const {
    proto::JobState s;
    s.set_job_name(opt_.config.name());
    if (next_phase) {
      s.set_phase(PhaseAt(phase_.index() + 1).index());
    } else {
      s.set_phase(phase_.index());
      for (const auto& [id, owner] : finished_by_) s.add_finished_chunks(id);
      std::sort(s.mutable_finished_chunks()->begin(), s.mutable_finished_chunks()->end());
      for (const auto& [id, pos] : positions_) {
        *s.add_partial_chunks() = Remainder(phase_chunks_[chunk_index_.at(id)], pos);
      }
    }
    s.set_global_step(steps_total_);
    s.set_samples(samples_total_);
    s.set_epoch_samples(next_phase ? 0 : epoch_samples_);
    s.set_train_seconds(result_.train_seconds);
    if (phase_.kind() == proto::TRAIN && !next_phase) s.set_epoch_seconds(EpochSeconds());
    for (const proto::EvalRecord& e : evals_) *s.add_evals() = e;
    s.set_data_fingerprint(data_fingerprint_);
    s.set_train_chunks(train_chunks_.size());
    s.set_test_chunks(test_chunks_.size());
    s.set_lines(result_.lines);
    s.set_bad_lines(result_.bad_lines);
    s.set_checkpoints(result_.checkpoints + 1);
    s.set_recoveries(result_.recoveries);
    s.set_requeued_chunks(result_.requeued_chunks);
    return s;
  }

  // Writes a checkpoint of the job as it stands (epoch_end: between the
  // phase that just ended and the next), then runs `then`. A failed save is
  // reported and training goes on: the previous checkpoint still stands.
  absl::Status StartSave(bool epoch_end, std::function<absl::Status(absl::Status)> then) {
    const proto::CheckpointConfig& ck = opt_.config.checkpoint();
    const bool full = saves_since_full_ + 1 >= ck.full_every() || result_.checkpoints == 0;
    const proto::JobState state = StateNow(epoch_end);
    bool sweep = false;
    for (const proto::TableConfig& t : opt_.config.tables()) {
      sweep |= t.expiry().after_pushes() > 0 || t.expiry().after_days() > 0;
    }
    auto manifest = std::make_shared<proto::CheckpointManifest>();
    ps::CheckpointCoordinator* coord = coordinator_.get();
    const std::string root = Root();
    const absl::Time started = absl::Now();
    RunTask(
        "checkpoint",
        [coord, root, full, sweep, state, manifest]() {
          absl::StatusOr<proto::CheckpointManifest> m = coord->Save(root, !full, sweep, &state);
          if (!m.ok()) return m.status();
          *manifest = std::move(*m);
          return absl::OkStatus();
        },
        [this, manifest, started, full, then](absl::Status st) {
          const absl::Time now = absl::Now();
          const double pause_ms = absl::ToDoubleMilliseconds(now - (pause_active_ ? pause_start_ : started));
          if (!st.ok()) {
            opt_.print(absl::StrCat("checkpoint failed (training goes on from the previous one): ", st.message()));
            LOG(ERROR) << "checkpoint failed: " << st;
          } else {
            uint64_t bytes = 0;
            for (const proto::CheckpointFile& f : manifest->files()) bytes += f.size();
            ++result_.checkpoints;
            saves_since_full_ = full ? 0 : saves_since_full_ + 1;
            result_.last_checkpoint =
                (std::filesystem::path(Root()) / storage::CheckpointDirName(manifest->id())).string();
            const double secs = absl::ToDoubleSeconds(now - started);
            opt_.print(absl::StrFormat("checkpoint %d (%s): %.1f MB in %.2fs, training paused %.0f ms -> %s",
                                       manifest->id(), full ? "full" : "incremental", bytes / 1e6, secs, pause_ms,
                                       result_.last_checkpoint));
            JsonObject c;
            c.Add("id", manifest->id()).Add("kind", full ? "full" : "incremental").Add("bytes", bytes);
            c.Add("seconds", secs).Add("pause_ms", pause_ms).Add("dir", result_.last_checkpoint);
            WriteEvent(Event("checkpoint").Add("checkpoint", c));
          }
          last_ckpt_time_ = now;
          last_ckpt_steps_ = steps_total_;
          return then(st);
        });
    return absl::OkStatus();
  }

  // Exports the newest checkpoint (result_.last_checkpoint) into export.dir
  // on the helper thread, as a delta on the last bundle this run wrote unless
  // a full one is due, then runs `then`. A failed export is reported and the
  // job goes on, except the final one (`final`), which fails the job.
  void StartExport(bool final, std::function<absl::Status()> then) {
    const proto::ExportConfig& ex = opt_.config.export_();
    storage::ExportOptions o;
    o.checkpoint_dir = result_.last_checkpoint;
    o.out_root = ex.dir();
    o.value_type = storage::ParseValueType(ex.value_type()).value_or(proto::FP32);  // validated with the config
    const bool full = last_export_dir_.empty() || exports_since_full_ + 1 >= ex.full_every();
    if (!full) o.base_dir = last_export_dir_;
    auto manifest = std::make_shared<proto::ExportManifest>();
    const absl::Time started = absl::Now();
    RunTask(
        "export",
        [o, manifest]() {
          absl::StatusOr<proto::ExportManifest> m = storage::ExportCheckpoint(o);
          if (!m.ok()) return m.status();
          *manifest = *std::move(m);
          return absl::OkStatus();
        },
        [this, manifest, started, full, final, then](absl::Status st) {
          const absl::Time now = absl::Now();
          last_export_time_ = now;
          last_export_steps_ = steps_total_;
          if (!st.ok()) {
            opt_.print(absl::StrCat("export failed: ", st.message()));
            LOG(ERROR) << "export failed: " << st;
            if (final) return absl::Status(st.code(), absl::StrCat("the final export failed: ", st.message()));
            return then();
          }
          const std::string dir =
              (std::filesystem::path(opt_.config.export_().dir()) / std::to_string(manifest->version())).string();
          last_export_dir_ = dir;
          exports_since_full_ = full ? 0 : exports_since_full_ + 1;
          ++result_.exports;
          result_.last_export = dir;
          uint64_t rows = 0, bytes = 0;
          for (const proto::ExportTable& t : manifest->tables()) rows += t.rows();
          for (const proto::CheckpointFile& f : manifest->files()) bytes += f.size();
          const double secs = absl::ToDoubleSeconds(now - started);
          opt_.print(absl::StrFormat("export %d (%s): %d rows, %.1f MB in %.2fs -> %s", manifest->version(),
                                     full ? "full" : absl::StrCat("delta on ", manifest->base_version()), rows,
                                     bytes / 1e6, secs, dir));
          JsonObject e;
          e.Add("version", manifest->version()).Add("base_version", manifest->base_version());
          e.Add("checkpoint", manifest->checkpoint_id()).Add("rows", rows).Add("bytes", bytes);
          e.Add("seconds", secs).Add("dir", dir);
          WriteEvent(Event("export").Add("export", e));
          return then();
        });
  }

  // ----- stop on request -----

  absl::Status BeginStop() {
    if (!Checkpointing()) {
      opt_.print("stopping: nothing saved (checkpoint.dir is not set)");
      return StopJob();
    }
    if (phase_.kind() == proto::TRAIN) {
      BeginPause(proto::PauseRequest::CHECKPOINT);
      return absl::OkStatus();
    }
    // EVAL: the model does not change; the evaluation runs again on resume.
    return StartSave(/*epoch_end=*/false, [this](absl::Status) { return StopJob(); });
  }

  absl::Status StopJob() {
    result_.stopped = true;
    done_ = true;
    running_ = false;
    shutdown_deadline_ = absl::Now() + absl::Seconds(10);
    result_.samples = samples_total_;
    result_.samples_per_sec = samples_total_ / std::max(result_.train_seconds, 1e-9);
    for (net::Message& m : pending_register_) Send(net::MakeErrorReply(m, proto::SHUTTING_DOWN, "the job stopped"));
    pending_register_.clear();
    for (Node& n : nodes_) {
      if (n.live()) SendShutdown(n, "the job was stopped; it can be resumed", false);
    }
    return absl::OkStatus();
  }

  std::string ResumeHint() const {
    if (result_.last_checkpoint.empty()) return "";
    return absl::StrCat("; the newest checkpoint is ", result_.last_checkpoint, ": continue with --resume");
  }

  // ----- failures and recovery -----

  absl::Status CheckHeartbeats(absl::Time now) {
    const absl::Duration timeout = absl::Milliseconds(opt_.config.cluster().heartbeat_timeout_ms());
    for (size_t i = 0; i < nodes_.size(); ++i) {
      Node& n = nodes_[i];
      if (!n.live() || n.awaiting_reply || now - n.last_seen <= timeout) continue;
      if (done_) {
        n.dead = true;
        continue;
      }
      if (absl::Status st = NodeLost(n, absl::StrCat("no heartbeat for ", absl::FormatDuration(now - n.last_seen)));
          !st.ok()) {
        return st;
      }
    }
    return absl::OkStatus();
  }

  absl::Status NodeLost(Node& node, const std::string& why) {
    node.dead = true;
    const std::string what = absl::StrCat(Name(node), " is dead: ", why);
    LOG(WARNING) << what;
    if (done_) return absl::OkStatus();
    if (node.is_worker()) return WorkerLost(node, what);
    return ServerLost(node, what);
  }

  absl::Status WorkerLost(Node& node, const std::string& what) {
    const uint64_t n = Requeue(node);
    result_.requeued_chunks += n;
    ++result_.recoveries;
    opt_.print(absl::StrCat(what, "; ", n, " of its chunks go back on the queue"));
    WriteEvent(Event("recovery").Add("recovery", JsonObject().Add("what", what).Add("requeued_chunks", n)));
    DropHeld(node);
    if (pause_active_) PauseAcked(node.info.id());
    ReleaseStepBarrier();
    ReleaseClocks();
    if (absl::Status st = RetryWaitingRegistrations(); !st.ok()) return st;
    if (running_ && !recovering_) return MaybeFinishPhase();
    return absl::OkStatus();
  }

  // Registrations that waited for a lost node's place try again.
  absl::Status RetryWaitingRegistrations() {
    std::deque<net::Message> waiting = std::move(waiting_register_);
    waiting_register_.clear();
    for (net::Message& m : waiting) {
      if (absl::Status st = HandleRegister(std::move(m)); !st.ok()) return st;
    }
    return absl::OkStatus();
  }

  // Forgets the calls a lost node left waiting.
  void DropHeld(const Node& node) {
    auto drop = [&](std::vector<net::Message>& v) {
      std::erase_if(v, [&](const net::Message& m) { return m.peer == node.peer; });
    };
    drop(pending_phase_done_);
    drop(step_barrier_);
    drop(held_paused_);
    drop(held_clocks_);
    drop(pending_register_);
  }

  absl::Status ServerLost(Node& node, const std::string& what) {
    if (!Checkpointing()) {
      return absl::UnavailableError(
          absl::StrCat(what, "; the job cannot recover without checkpoints (set checkpoint.dir)"));
    }
    if (!registered_ || (!running_ && !recovering_ && result_.checkpoints == 0 && !opt_.resume)) {
      return absl::UnavailableError(absl::StrCat(what, " before the job's first checkpoint"));
    }
    opt_.print(absl::StrCat(what, "; pausing every worker until a replacement registers"));
    WriteEvent(Event("recovery").Add("recovery", JsonObject().Add("what", what)));
    if (!recovering_) {
      recovering_ = true;
      recovery_start_ = absl::Now();
      ++incarnation_;
      ++era_;  // a task running now (a save, a reset) no longer counts, and gives up
      in_boundary_ = false;
      running_ = false;
      // Workers waiting at a phase end or a barrier give up those calls
      // when the RECOVER pause reaches them.
      pending_phase_done_.clear();
      step_barrier_.clear();
      held_clocks_.clear();
      pause_waiting_.clear();
      BeginPause(proto::PauseRequest::RECOVER);
    }
    recovery_deadline_ = absl::Now() + absl::Milliseconds(opt_.config.checkpoint().replacement_timeout_ms());
    return RetryWaitingRegistrations();
  }

  absl::Status TryRecover(absl::Time now) {
    if (!AllServersLive()) {
      if (now > recovery_deadline_) {
        return absl::UnavailableError(absl::StrCat(
            "no replacement for the lost server registered within checkpoint.replacement_timeout_ms=",
            opt_.config.checkpoint().replacement_timeout_ms(), ResumeHint()));
      }
      return absl::OkStatus();
    }
    if (task_ || !pause_waiting_.empty() || restore_started_) return absl::OkStatus();
    restore_started_ = true;
    if (absl::Status st = ConnectServers(); !st.ok()) return st;
    return StartRestore(Restore::kRecovery);
  }

  // Restores every server from the newest checkpoint that all of them accept
  // (a damaged one is skipped for the one before, and said so), then rolls
  // the job back to its data position.
  absl::Status StartRestore(Restore why) {
    std::vector<std::string> candidates = resume_candidates_;
    if (why == Restore::kRecovery) {
      candidates.clear();
      for (const auto& c : storage::ListCheckpoints(Root())) {
        if (c.complete()) candidates.insert(candidates.begin(), c.dir());
      }
    }
    struct Out {
      proto::JobState state;
      std::string dir;
      uint64_t rows = 0;
      std::vector<std::string> skipped;
    };
    auto out = std::make_shared<Out>();
    ps::CheckpointCoordinator* coord = coordinator_.get();
    const uint64_t incarnation = incarnation_;
    RunTask(
        "restore",
        [coord, candidates, out, incarnation]() {
          for (const std::string& dir : candidates) {
            absl::StatusOr<proto::CheckpointManifest> m = storage::ReadManifest(dir);
            if (!m.ok()) {
              out->skipped.push_back(absl::StrCat(dir, ": ", m.status().message()));
              continue;
            }
            absl::StatusOr<uint64_t> rows = coord->Restore(dir, incarnation);
            if (!rows.ok()) {
              // Refused in verification: nothing was loaded; try the one before.
              if (absl::StrContains(rows.status().message(), "checkpoint refused")) {
                out->skipped.push_back(absl::StrCat(dir, ": ", rows.status().message()));
                continue;
              }
              return rows.status();
            }
            out->state = m->job_state();
            out->dir = dir;
            out->rows = *rows;
            return absl::OkStatus();
          }
          return absl::DataLossError(absl::StrCat("no checkpoint could be restored: ",
                                                  absl::StrJoin(out->skipped, "; ")));
        },
        [this, out, why](absl::Status st) {
          for (const std::string& s : out->skipped) opt_.print(absl::StrCat("skipping damaged checkpoint ", s));
          if (!st.ok()) {
            if (recovering_ && !AllServersLive()) {
              restore_started_ = false;  // another server was lost meanwhile: wait for it too
              return absl::OkStatus();
            }
            return absl::Status(st.code(), absl::StrCat(why == Restore::kResume ? "resume" : "recovery", ": ", st.message()));
          }
          return RollBack(out->state, out->dir, out->rows, why);
        });
    return absl::OkStatus();
  }

  absl::Status RollBack(const proto::JobState& s, const std::string& dir, uint64_t rows, Restore why) {
    steps_total_ = s.global_step();
    samples_total_ = s.samples();
    epoch_samples_ = s.epoch_samples();
    result_.train_seconds = s.train_seconds();
    if (why == Restore::kResume) {
      epoch_seconds_base_ = s.epoch_seconds();
      epoch_clock_start_ = absl::Now();
    }
    evals_.assign(s.evals().begin(), s.evals().end());
    if (!evals_.empty()) ApplyEval(evals_.back());
    result_.checkpoints = std::max(result_.checkpoints, s.checkpoints());
    result_.last_checkpoint = dir;
    if (why == Restore::kResume) {
      result_.recoveries = s.recoveries();
      result_.requeued_chunks = s.requeued_chunks();
      base_lines_ = s.lines();
      base_bad_lines_ = s.bad_lines();
    } else {
      ++result_.recoveries;
    }
    saves_since_full_ = 0;
    epoch_samples_ = s.epoch_samples();
    StartPhaseAt(s.phase(), &s);
    const double secs = absl::ToDoubleSeconds(absl::Now() - recovery_start_);
    if (why == Restore::kResume) {
      opt_.print(absl::StrFormat("resumed from %s: epoch %d, %d chunks left of the phase, %d rows", dir,
                                 phase_.epoch() + 1, queue_.size(), rows));
    } else {
      opt_.print(absl::StrFormat("recovered from %s in %.1fs: epoch %d, %d chunks left of the phase, %d rows", dir,
                                 secs, phase_.epoch() + 1, queue_.size(), rows));
      WriteEvent(Event("recovery").Add("recovery", JsonObject().Add("what", "restored " + dir).Add("seconds", secs)));
    }
    recovering_ = false;
    restore_started_ = false;
    running_ = true;
    in_boundary_ = false;
    last_ckpt_time_ = absl::Now();
    last_ckpt_steps_ = steps_total_;
    // Workers held in PAUSED restart in the restored phase.
    const proto::ClusterInfo info = ClusterNow();
    for (net::Message& p : held_paused_) {
      net::Message r = net::MakeReply(p);
      proto::PausedReply* pr = r.header.mutable_paused_reply();
      pr->set_restart(true);
      pr->set_pause_id(pause_id_);
      *pr->mutable_cluster() = info;
      *pr->mutable_phase() = phase_;
      Send(std::move(r));
    }
    held_paused_.clear();
    pause_active_ = false;
    pause_waiting_.clear();
    ReplyRegistrations(/*workers=*/true);
    // The restored phase may start with resets (a checkpoint at an epoch's
    // end is cut before them).
    if (phase_.kind() == proto::TRAIN && s.finished_chunks_size() == 0 && s.partial_chunks_size() == 0 &&
        !ResetsBefore(phase_.epoch()).empty()) {
      in_boundary_ = true;
      return RunResets(phase_.epoch(), [this] {
        in_boundary_ = false;
        return MaybeFinishPhase();
      });
    }
    if (phase_.kind() == proto::DONE) return FinishJob();
    return MaybeFinishPhase();
  }

  // ----- BSP and SSP -----

  absl::Status HandleBarrier(Node& node, net::Message m) {
    const proto::BarrierRequest& b = m.header.barrier();
    if (b.name() == "ssp") {
      node.clock = node.clock_offset + b.clock();
      // The gap as the workers report it, whatever the scheduler answered:
      // the fastest's finished steps minus the slowest's, minus one.
      uint64_t lo = std::numeric_limits<uint64_t>::max(), hi = 0;
      for (const Node& n : nodes_) {
        if (!n.is_worker() || !n.live() || n.awaiting_reply || n.phase_done) continue;
        lo = std::min(lo, n.clock);
        hi = std::max(hi, n.clock);
      }
      if (hi > lo + 1) result_.max_clock_gap = std::max(result_.max_clock_gap, hi - lo - 1);
      if (pause_active_) {
        // Paused workers do not move; the one asking must reach its step
        // boundary to pause as well.
        net::Message r = net::MakeReply(m);
        r.header.set_clock(node.clock - node.clock_offset);
        Send(std::move(r));
        return absl::OkStatus();
      }
      held_clocks_.push_back(std::move(m));
      ReleaseClocks();
      return absl::OkStatus();
    }
    // BSP step barrier: all workers still in the phase must arrive.
    if (pause_active_) {
      Send(net::MakeReply(m));
      return absl::OkStatus();
    }
    step_barrier_.push_back(std::move(m));
    ReleaseStepBarrier();
    return absl::OkStatus();
  }

  void ReleaseStepBarrier() {
    if (step_barrier_.empty()) return;
    size_t active = 0;
    for (const Node& n : nodes_) {
      if (n.is_worker() && n.live() && !n.awaiting_reply && !n.phase_done) ++active;
    }
    if (step_barrier_.size() < active) return;
    for (net::Message& b : step_barrier_) Send(net::MakeReply(b));
    step_barrier_.clear();
  }

  // The fewest steps any live worker still in the phase has finished.
  uint64_t MinClock() const {
    uint64_t m = std::numeric_limits<uint64_t>::max();
    for (const Node& n : nodes_) {
      if (n.is_worker() && n.live() && !n.awaiting_reply && !n.phase_done) m = std::min(m, n.clock);
    }
    return m;
  }

  // Answers the SSP clock requests whose wait is over (all of them if `all`).
  void ReleaseClocks(bool all = false) {
    if (held_clocks_.empty()) return;
    const uint64_t min = MinClock();
    std::vector<net::Message> keep;
    for (net::Message& m : held_clocks_) {
      auto it = node_of_peer_.find(m.peer);
      const Node& n = nodes_[it->second];
      const uint64_t wait_for = n.clock_offset + m.header.barrier().wait_for();
      if (!all && min < wait_for) {
        keep.push_back(std::move(m));
        continue;
      }
      net::Message r = net::MakeReply(m);
      r.header.set_clock(min == std::numeric_limits<uint64_t>::max() ? n.clock : min - std::min(min, n.clock_offset));
      Send(std::move(r));
    }
    held_clocks_ = std::move(keep);
  }

  // ----- health and metrics -----

  void UpdateMetrics(Node& n, const proto::Metrics& m) {
    if (!n.is_worker()) return;
    if (m.samples() >= n.counted_samples) {
      samples_total_ += m.samples() - n.counted_samples;
      epoch_samples_ += m.samples() - n.counted_samples;
      steps_total_ += m.steps() - std::min(m.steps(), n.counted_steps);
      bytes_total_ += m.bytes() - std::min(m.bytes(), n.counted_bytes);
      loss_total_ += m.loss_sum() - n.counted_loss;
      n.counted_samples = m.samples();
      n.counted_steps = m.steps();
      n.counted_bytes = m.bytes();
      n.counted_loss = m.loss_sum();
      result_.dense_pushes += m.dense_pushes() - std::min(m.dense_pushes(), n.counted_dense_pushes);
      result_.dense_staleness_sum +=
          m.dense_staleness_sum() - std::min(m.dense_staleness_sum(), n.counted_dense_staleness);
      n.counted_dense_pushes = m.dense_pushes();
      n.counted_dense_staleness = m.dense_staleness_sum();
    }
    result_.dense_staleness_max = std::max(result_.dense_staleness_max, m.dense_staleness_max());
    n.metrics = m;
  }

  absl::Status CheckBadLines() {
    uint64_t bad = base_bad_lines_, lines = base_lines_;
    std::vector<std::string> examples;
    for (const Node& n : nodes_) {
      bad += n.metrics.bad_lines();
      lines += n.metrics.lines();
      for (const std::string& e : n.metrics.bad_line_examples()) {
        if (examples.size() < 3) examples.push_back(e.substr(0, 512));
      }
    }
    result_.bad_lines = bad;
    result_.lines = lines;
    return proto::CheckBadLineBudget(opt_.config.data(), bad, lines, examples);
  }

  // One progress line: samples and rate since the phase began (reports
  // arrive in bursts, so a per-interval rate would jump), loss over the
  // interval, the workers' windowed training AUC, and an ETA from the share of
  // the epoch's bytes consumed.
  void PrintProgress(absl::Time now) {
    if (samples_total_ == last_samples_) return;  // nothing new to say
    const double elapsed = std::max(1e-9, absl::ToDoubleSeconds(now - phase_start_));
    const double interval_loss = (loss_total_ - last_loss_) / static_cast<double>(samples_total_ - last_samples_);
    double auc_sum = 0, auc_w = 0;
    for (const Node& n : nodes_) {
      if (n.live() && n.metrics.window_size() > 0 && !std::isnan(n.metrics.window_auc())) {
        auc_sum += n.metrics.window_auc() * n.metrics.window_size();
        auc_w += n.metrics.window_size();
      }
    }
    const double done =
        train_bytes_ ? std::min(1.0, static_cast<double>(phase_done_bytes_ + bytes_total_ - phase_bytes_start_) /
                                         train_bytes_)
                     : 0;
    // The rate of this run of the phase (a resumed one began part-way).
    const double done_here = done - (train_bytes_ ? static_cast<double>(phase_done_bytes_) / train_bytes_ : 0);
    const std::string eta = done_here > 0.01 ? absl::StrFormat("%.0fs", elapsed * (1 - done) / done_here) : "?";
    // The windowed AUC is undefined until a window holds both classes.
    const double train_auc = auc_w > 0 ? auc_sum / auc_w : kNaN;
    const double rate = (epoch_samples_ - phase_samples_start_) / elapsed;
    opt_.print(absl::StrFormat("epoch %d/%d %5.1f%% samples=%d samples/s=%.0f loss=%.4f%s eta=%s", phase_.epoch() + 1,
                               opt_.config.train().epochs(), 100 * done, epoch_samples_, rate, interval_loss,
                               Figure("train_auc", train_auc), eta));
    WriteEvent(Event("progress").Add("samples_per_sec", rate).Add("loss", interval_loss).Add("train_auc", train_auc));
    const std::string diverged =
        divergence_.Observe(interval_loss, train_auc, result_.train_seconds + EpochSeconds());
    if (!diverged.empty() && result_.diverged.empty()) {
      result_.diverged = diverged;
      const bool stop = opt_.config.train().divergence().stop();
      opt_.print(absl::StrCat("divergence: ", diverged,
                              stop ? "; stopping the job" : "; training goes on (train.divergence.stop is off)"));
      LOG(ERROR) << "divergence: " << diverged;
      WriteEvent(Event("divergence").Add("reason", diverged));
    }
    last_progress_ = now;
    last_samples_ = samples_total_;
    last_loss_ = loss_total_;
  }

  double EpochSeconds() const {
    return epoch_seconds_base_ + absl::ToDoubleSeconds(absl::Now() - epoch_clock_start_);
  }

  JsonObject Event(const std::string& kind) const {
    JsonObject e;
    const absl::Time now = absl::Now();
    e.Add("time", absl::ToDoubleSeconds(now - absl::UnixEpoch()));
    e.Add("elapsed", absl::ToDoubleSeconds(now - job_start_));
    e.Add("event", kind);
    e.Add("epoch", static_cast<uint64_t>(std::min(phase_.epoch() + 1, opt_.config.train().epochs())));
    e.Add("step", steps_total_);
    e.Add("samples", samples_total_);
    return e;
  }

  void WriteEvent(const JsonObject& e) {
    if (metrics_log_) metrics_log_->Write(e);
  }

  void WriteFinalEvent() {
    JsonObject tasks;
    for (const TaskResult& r : result_.tasks) {
      tasks.Add(r.name, JsonObject().Add("auc", r.auc).Add("gauc", r.gauc).Add("logloss", r.logloss));
    }
    JsonObject e = Event(result_.stopped ? "stopped" : "final");
    e.Add("samples_per_sec", result_.samples_per_sec).Add("tasks", tasks);
    e.Add("checkpoints", static_cast<uint64_t>(result_.checkpoints));
    e.Add("recoveries", static_cast<uint64_t>(result_.recoveries)).Add("requeued_chunks", result_.requeued_chunks);
    e.Add("dense_staleness_max", result_.dense_staleness_max);
    WriteEvent(e);
  }

  // ----- sending -----

  void Send(net::Message m) {
    m.header.set_sender(0);
    absl::Status st = transport_->Send(std::move(m));
    if (!st.ok()) LOG(WARNING) << "scheduler send failed: " << st;
  }

  void SendShutdown(const Node& n, const std::string& reason, bool failed) {
    net::Message m;
    m.peer = n.peer;
    m.header.set_command(proto::SHUTDOWN);
    m.header.mutable_shutdown()->set_reason(reason);
    m.header.mutable_shutdown()->set_failed(failed);
    Send(std::move(m));
  }

  bool AllLeft() const {
    for (const Node& n : nodes_) {
      if (n.live()) return false;
    }
    return true;
  }

  static std::string Name(const Node& n) {
    return absl::StrCat(absl::AsciiStrToLower(proto::Role_Name(n.info.role())), " rank ", n.info.rank(), " (node ",
                        n.info.id(), ", ", n.info.host(), " pid ", n.info.pid(), ")");
  }

  // Tells every node the job failed, answers the calls it is holding, and
  // gives the messages a moment to leave.
  absl::Status AbortJob(const absl::Status& why) {
    LOG(ERROR) << "job failed: " << why;
    const std::string msg(why.message());
    for (auto* held : {&pending_register_, &pending_phase_done_, &step_barrier_, &held_paused_, &held_clocks_}) {
      for (net::Message& m : *held) Send(net::MakeErrorReply(m, proto::JOB_FAILED, msg));
    }
    for (net::Message& m : waiting_register_) Send(net::MakeErrorReply(m, proto::JOB_FAILED, msg));
    for (const Node& n : nodes_) {
      if (n.live()) SendShutdown(n, msg, true);
    }
    // Flush: the transport's linger delivers queued messages on close.
    return why;
  }

  SchedulerOptions opt_;
  std::unique_ptr<net::Transport> transport_;
  std::string job_id_;
  std::vector<proto::Chunk> train_chunks_, test_chunks_;
  uint64_t train_bytes_ = 0;
  uint64_t data_fingerprint_ = 0;
  std::unique_ptr<MetricsLog> metrics_log_;

  // Membership.
  std::vector<Node> nodes_;  // by id - 1
  absl::flat_hash_map<net::PeerId, size_t> node_of_peer_;
  absl::flat_hash_map<int, size_t> server_node_;  // server rank -> index in nodes_
  uint32_t servers_ = 0, workers_ = 0;            // registered before the cluster came up
  bool registered_ = false;
  std::vector<net::Message> pending_register_;
  std::deque<net::Message> waiting_register_;  // replacements with no lost node's place to take yet

  // Job state.
  bool running_ = false;      // training or evaluating (not starting, recovering or done)
  bool done_ = false;         // finished or stopped: waiting for goodbyes
  bool in_boundary_ = false;  // between phases (metrics, epoch-end checkpoint, resets)
  bool stop_seen_ = false;
  proto::Phase phase_;
  std::vector<proto::Chunk> phase_chunks_;                 // this phase's chunks (cut to what is left)
  absl::flat_hash_map<uint64_t, size_t> chunk_index_;      // chunk id -> index in phase_chunks_
  std::deque<size_t> queue_;                               // indices not handed out yet
  absl::flat_hash_map<uint64_t, int32_t> outstanding_;     // chunk id -> node id
  absl::flat_hash_map<uint64_t, int32_t> finished_by_;     // chunk id -> node id (0: before a resume)
  absl::flat_hash_map<uint64_t, proto::ChunkPosition> positions_;  // reported at a pause
  std::vector<net::Message> pending_phase_done_;
  std::vector<net::Message> step_barrier_;
  std::vector<net::Message> held_clocks_;
  std::vector<float> eval_scores_, eval_labels_;
  std::vector<uint64_t> eval_users_;
  std::vector<proto::EvalRecord> evals_;

  // Totals from the workers' metrics (rolled back with the model).
  uint64_t samples_total_ = 0, epoch_samples_ = 0, steps_total_ = 0, bytes_total_ = 0;
  double loss_total_ = 0;
  uint64_t base_lines_ = 0, base_bad_lines_ = 0;  // from the checkpoint resumed

  // Pauses, checkpoints, recovery.
  std::unique_ptr<net::Client> server_client_;
  absl::flat_hash_map<int32_t, net::PeerId> server_peer_;  // node id -> peer on server_client_
  std::unique_ptr<ps::CheckpointCoordinator> coordinator_;
  std::unique_ptr<Task> task_;
  std::atomic<uint64_t> era_{0};  // bumped by each recovery (read by the helper thread)
  std::atomic<uint64_t> task_era_{0};  // era_ when the running task began
  std::atomic<bool> shutting_down_{false};
  bool pause_active_ = false;
  proto::PauseRequest::Kind pause_kind_ = proto::PauseRequest::CHECKPOINT;
  uint64_t pause_seq_ = 0, pause_id_ = 0;
  absl::Time pause_start_;
  absl::flat_hash_set<int32_t> pause_waiting_;
  std::vector<net::Message> held_paused_;
  uint32_t saves_since_full_ = 0;
  DivergenceWatch divergence_{opt_.config.train().divergence()};
  // Exports: the last bundle this run wrote (a delta's base), bundles since
  // the last full one, and when the last was made.
  std::string last_export_dir_;
  uint32_t exports_since_full_ = 0;
  absl::Time last_export_time_;
  uint64_t last_export_steps_ = 0;
  absl::Time last_ckpt_time_;
  uint64_t last_ckpt_steps_ = 0;
  std::vector<std::string> resume_candidates_;  // newest first
  bool recovering_ = false, restore_started_ = false;
  uint64_t incarnation_ = 0;
  absl::Time recovery_start_, recovery_deadline_;
  std::optional<absl::Time> no_workers_since_;

  absl::Time job_start_, phase_start_, last_progress_, shutdown_deadline_;
  uint64_t phase_bytes_start_ = 0, phase_done_bytes_ = 0, phase_samples_start_ = 0, last_samples_ = 0;
  double epoch_seconds_base_ = 0;
  absl::Time epoch_clock_start_ = absl::Now();
  double last_loss_ = 0;
  net::RejectLog rejects_;
  JobResult result_;
};

absl::StatusOr<std::unique_ptr<Scheduler>> Scheduler::Create(SchedulerOptions options,
                                                             std::unique_ptr<net::Transport> transport) {
  auto impl = std::make_unique<Impl>(std::move(options), std::move(transport));
  absl::Status st = impl->Init();
  if (!st.ok()) return st;
  return std::unique_ptr<Scheduler>(new Scheduler(std::move(impl)));
}

Scheduler::Scheduler(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Scheduler::~Scheduler() = default;
absl::StatusOr<JobResult> Scheduler::Run() { return impl_->Run(); }

}  // namespace ember::scheduler
