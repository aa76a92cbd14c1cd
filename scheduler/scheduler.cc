#include "scheduler/scheduler.h"

#include <cmath>
#include <cstdio>
#include <deque>
#include <fstream>
#include <limits>
#include <optional>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "glog/logging.h"
#include "models/metrics.h"
#include "net/validate.h"
#include "proto/config.h"
#include "scheduler/chunks.h"

namespace ember::scheduler {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

struct Node {
  proto::NodeInfo info;
  net::PeerId peer = net::kNoPeer;
  absl::Time last_seen;
  bool left = false;         // said goodbye (clean exit)
  bool phase_done = false;   // workers: sent PHASE_DONE for the current phase
  proto::Metrics metrics;    // workers: latest report
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

}  // namespace

std::string FinalLine(const JobResult& r) {
  std::string line = absl::StrCat("final:", Figure("auc", r.auc), Figure("oracle_auc", r.oracle_auc),
                                  Figure("logloss", r.logloss));
  absl::StrAppendFormat(&line, " samples=%d samples_per_sec=%.0f", r.samples, r.samples_per_sec);
  for (const TaskResult& t : r.tasks) {
    absl::StrAppend(&line, Figure("auc_" + t.name, t.auc), Figure("gauc_" + t.name, t.gauc),
                    Figure("logloss_" + t.name, t.logloss));
  }
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
    for (const auto& c : test_chunks_) test_bytes_ += c.end() - c.begin();
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
    LOG(INFO) << "job '" << opt_.config.name() << "': " << train_chunks_.size() << " train chunks ("
              << train_bytes_ << " bytes), " << test_chunks_.size() << " test chunks";
    return absl::OkStatus();
  }

  absl::StatusOr<JobResult> Run() {
    const proto::ClusterConfig& cc = opt_.config.cluster();
    const absl::Time register_deadline = absl::Now() + absl::Milliseconds(cc.register_timeout_ms());
    last_progress_ = absl::Now();
    net::Message m;
    for (;;) {
      absl::StatusOr<bool> got = transport_->Recv(&m, absl::Milliseconds(100));
      if (!got.ok()) return AbortJob(got.status());
      if (*got) {
        absl::Status st = Handle(std::move(m));
        if (!st.ok()) return AbortJob(st);
      }
      const absl::Time now = absl::Now();
      if (!registered_) {
        if (now > register_deadline) {
          return AbortJob(absl::DeadlineExceededError(
              absl::StrCat("only ", nodes_.size(), " of ", cc.num_servers() + cc.num_workers(),
                           " nodes registered within cluster.register_timeout_ms=", cc.register_timeout_ms())));
        }
        continue;
      }
      absl::Status st = CheckHeartbeats(now);
      if (!st.ok()) return AbortJob(st);
      if (phase_.kind() == proto::TRAIN && now - last_progress_ >= absl::Milliseconds(opt_.config.train().report_interval_ms())) {
        PrintProgress(now);
      }
      if (phase_.kind() == proto::DONE) {
        if (AllLeft() || now > shutdown_deadline_) {
          if (!AllLeft()) LOG(WARNING) << "some nodes did not confirm shutdown in time";
          return result_;
        }
      }
    }
  }

 private:
  static absl::Status Annotate(const absl::Status& st, const std::string& field) {
    return absl::Status(st.code(), absl::StrCat("config field ", field, ": ", st.message()));
  }

  // ----- messages -----

  absl::Status Handle(net::Message m) {
    net::WireCheck check = net::ValidateMessage(m);
    if (!check.ok()) {
      LOG(WARNING) << "malformed message from peer " << m.peer << ": " << check.why;
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
    node.last_seen = absl::Now();
    switch (m.header.command()) {
      case proto::HEARTBEAT:
      case proto::PING:
        if (!m.header.is_reply()) Send(net::MakeReply(m));
        return absl::OkStatus();
      case proto::REPORT_METRICS:
        node.metrics = m.header.metrics();
        return CheckBadLines();
      case proto::GET_CHUNK:
        return HandleGetChunk(node, m);
      case proto::PHASE_DONE:
        return HandlePhaseDone(node, std::move(m));
      case proto::BARRIER:
        return HandleBarrier(node, std::move(m));
      case proto::SHUTDOWN:
        // A node leaving: after DONE that is the goodbye; before, a failure.
        node.left = true;
        if (phase_.kind() != proto::DONE || m.header.shutdown().failed()) {
          return absl::AbortedError(absl::StrCat(Name(node), " stopped: ", m.header.shutdown().reason()));
        }
        return absl::OkStatus();
      default:
        Send(net::MakeErrorReply(m, proto::UNKNOWN_COMMAND,
                                 absl::StrCat("the scheduler does not serve ", proto::Command_Name(m.header.command()))));
        return absl::OkStatus();
    }
  }

  absl::Status HandleRegister(net::Message m) {
    const proto::ClusterConfig& cc = opt_.config.cluster();
    const proto::RegisterRequest& req = m.header.register_request();
    auto reject = [&](const std::string& why) {
      Send(net::MakeErrorReply(m, proto::BAD_REQUEST, why));
      return absl::OkStatus();
    };
    if (registered_ || node_of_peer_.contains(m.peer)) return reject("already registered");
    const proto::Role role = req.node().role();
    uint32_t* count = role == proto::SERVER ? &servers_ : role == proto::WORKER ? &workers_ : nullptr;
    if (count == nullptr) return reject("role must be SERVER or WORKER");
    const uint32_t want = role == proto::SERVER ? cc.num_servers() : cc.num_workers();
    if (*count >= want) return reject(absl::StrCat("the job already has its ", want, " ", proto::Role_Name(role), "s"));
    if (role == proto::SERVER && req.node().endpoint().empty()) return reject("a server must give its endpoint");
    if (role == proto::WORKER && req.dense_size() != 0 && req.dense_size() != opt_.dense_size) {
      return absl::InvalidArgumentError(absl::StrCat("worker at ", req.node().host(), " pid ", req.node().pid(),
                                                     " built a model with ", req.dense_size(),
                                                     " dense parameters; the scheduler's config has ", opt_.dense_size));
    }
    Node node;
    node.info = req.node();
    node.info.set_id(static_cast<int>(nodes_.size()) + 1);  // the scheduler is 0
    node.info.set_rank(static_cast<int>((*count)++));
    node.peer = m.peer;
    node.last_seen = absl::Now();
    node_of_peer_[m.peer] = nodes_.size();
    LOG(INFO) << "registered " << proto::Role_Name(role) << " rank " << node.info.rank() << " as node "
              << node.info.id() << " (" << node.info.host() << " pid " << node.info.pid() << " "
              << node.info.endpoint() << ")";
    nodes_.push_back(node);
    pending_register_.push_back(std::move(m));
    if (servers_ == cc.num_servers() && workers_ == cc.num_workers()) CompleteRegistration();
    return absl::OkStatus();
  }

  void CompleteRegistration() {
    const proto::ClusterConfig& cc = opt_.config.cluster();
    proto::ClusterInfo info;
    for (const Node& n : nodes_) *info.add_nodes() = n.info;
    proto::ShardMap* map = info.mutable_shard_map();
    map->set_num_logical_shards(cc.num_logical_shards());
    for (uint32_t s = 0; s < cc.num_logical_shards(); ++s) map->add_server_rank(s % cc.num_servers());
    proto::DenseLayout* dense = info.mutable_dense();
    dense->set_total(opt_.dense_size);
    for (uint32_t s = 0; s <= cc.num_servers(); ++s) dense->add_offset(opt_.dense_size * s / cc.num_servers());
    *info.mutable_config() = opt_.config;
    info.set_job_id(job_id_);
    registered_ = true;
    StartPhase(0);
    for (net::Message& req : pending_register_) {
      const Node& n = nodes_[node_of_peer_[req.peer]];
      net::Message r = net::MakeReply(req);
      proto::RegisterReply* rr = r.header.mutable_register_reply();
      rr->set_node_id(n.info.id());
      rr->set_rank(n.info.rank());
      *rr->mutable_cluster() = info;
      *rr->mutable_phase() = phase_;
      Send(std::move(r));
    }
    pending_register_.clear();
    opt_.print(absl::StrCat("cluster up: ", cc.num_servers(), " servers, ", cc.num_workers(), " workers, ",
                            cc.num_logical_shards(), " logical shards, ", opt_.dense_size, " dense parameters"));
  }

  absl::Status HandleGetChunk(Node& node, const net::Message& m) {
    const proto::ChunkRequest& req = m.header.chunk_request();
    if (node.info.role() != proto::WORKER) {
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
      const proto::Chunk& c = *queue_.front();
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
        return absl::InternalError(absl::StrCat(Name(node), " reported chunk ", id, " finished, but it was not handed to it"));
      }
      outstanding_.erase(it);
    }
    return absl::OkStatus();
  }

  absl::Status HandlePhaseDone(Node& node, net::Message m) {
    const proto::PhaseDone& pd = m.header.phase_done();
    if (node.info.role() != proto::WORKER || pd.phase() != phase_.index() || node.phase_done) {
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
    ReleaseStepBarrier();
    for (const Node& n : nodes_) {
      if (n.info.role() == proto::WORKER && !n.phase_done) return absl::OkStatus();
    }
    return FinishPhase();
  }

  absl::Status HandleBarrier(Node& node, net::Message m) {
    // BSP step barrier: all workers still in the phase must arrive.
    step_barrier_.push_back(std::move(m));
    ReleaseStepBarrier();
    return absl::OkStatus();
  }

  void ReleaseStepBarrier() {
    if (step_barrier_.empty()) return;
    size_t active = 0;
    for (const Node& n : nodes_) {
      if (n.info.role() == proto::WORKER && !n.phase_done) ++active;
    }
    if (step_barrier_.size() < active) return;
    for (net::Message& b : step_barrier_) Send(net::MakeReply(b));
    step_barrier_.clear();
  }

  // ----- phases -----

  // Phase i: for epoch e, TRAIN is 2e and EVAL 2e+1 (skipped when there is
  // no evaluation after that epoch); DONE follows the last.
  void StartPhase(uint32_t index) {
    const proto::TrainConfig& t = opt_.config.train();
    for (;;) {
      const uint32_t epoch = index / 2;
      proto::PhaseKind kind = index % 2 == 0 ? proto::TRAIN : proto::EVAL;
      if (epoch >= t.epochs()) kind = proto::DONE;
      if (kind == proto::EVAL && (test_chunks_.empty() || (!t.eval_every_epoch() && epoch + 1 < t.epochs()))) {
        ++index;
        continue;
      }
      phase_.set_index(index);
      phase_.set_kind(kind);
      phase_.set_epoch(epoch);
      break;
    }
    queue_.clear();
    const std::vector<proto::Chunk>* chunks =
        phase_.kind() == proto::TRAIN ? &train_chunks_ : phase_.kind() == proto::EVAL ? &test_chunks_ : nullptr;
    if (chunks) {
      for (const proto::Chunk& c : *chunks) queue_.push_back(&c);
    }
    phase_start_ = absl::Now();
    phase_samples_start_ = TotalSamples();
    phase_bytes_start_ = TotalBytes();
    last_progress_ = phase_start_;
    last_samples_ = phase_samples_start_;
    last_loss_ = TotalLoss();
    eval_scores_.clear();
    eval_labels_.clear();
    eval_users_.clear();
    for (Node& n : nodes_) n.phase_done = false;
    if (phase_.kind() == proto::DONE) {
      shutdown_deadline_ = absl::Now() + absl::Seconds(10);
    } else {
      LOG(INFO) << "phase " << phase_.index() << ": " << proto::PhaseKind_Name(phase_.kind()) << " epoch "
                << phase_.epoch() + 1;
    }
  }

  absl::Status FinishPhase() {
    if (!queue_.empty() || !outstanding_.empty()) {
      return absl::InternalError(absl::StrCat("phase ", phase_.index(), " ended with ", queue_.size(),
                                              " chunks never handed out and ", outstanding_.size(),
                                              " handed out but not finished"));
    }
    const absl::Time now = absl::Now();
    if (phase_.kind() == proto::TRAIN) {
      PrintProgress(now);
      const double secs = absl::ToDoubleSeconds(now - phase_start_);
      const uint64_t samples = TotalSamples() - phase_samples_start_;
      result_.train_seconds += secs;
      result_.samples += samples;
      opt_.print(absl::StrFormat("epoch %d/%d trained: %d samples in %.1fs (%.0f samples/s)", phase_.epoch() + 1,
                                 opt_.config.train().epochs(), samples, secs, samples / std::max(secs, 1e-9)));
    } else if (phase_.kind() == proto::EVAL) {
      const size_t num_tasks = result_.tasks.size();
      const size_t n = eval_users_.size();
      std::vector<float> scores(n), labels(n);
      for (size_t t = 0; t < num_tasks; ++t) {
        for (size_t i = 0; i < n; ++i) {
          scores[i] = eval_scores_[i * num_tasks + t];
          labels[i] = eval_labels_[i * num_tasks + t];
        }
        TaskResult& r = result_.tasks[t];
        r.auc = models::ExactAuc(scores, labels);
        r.logloss = models::LogLoss(scores, labels);
        r.gauc = opt_.config.data().user_column().empty() ? kNaN : models::GroupAuc(scores, labels, eval_users_);
        const bool no_users = opt_.config.data().user_column().empty();
        opt_.print(absl::StrCat("eval after epoch ", phase_.epoch() + 1, ": task=", r.name,
                                Figure("auc", r.auc, n == 0 ? "no test samples" : "the test labels are all one class"),
                                Figure("gauc", r.gauc, no_users ? "no data.user_column" : "no user has both classes"),
                                Figure("logloss", r.logloss, "no test samples"), " samples=", n));
      }
      result_.auc = result_.tasks[0].auc;
      result_.gauc = result_.tasks[0].gauc;
      result_.logloss = result_.tasks[0].logloss;
      result_.eval_samples = n;
    }
    StartPhase(phase_.index() + 1);
    for (net::Message& pd : pending_phase_done_) {
      net::Message r = net::MakeReply(pd);
      *r.header.mutable_phase_done_reply()->mutable_next() = phase_;
      Send(std::move(r));
    }
    pending_phase_done_.clear();
    if (phase_.kind() == proto::DONE) {
      result_.samples_per_sec = result_.samples / std::max(result_.train_seconds, 1e-9);
      for (Node& n : nodes_) {
        if (n.info.role() == proto::SERVER) SendShutdown(n, "job finished", false);
      }
    }
    return absl::OkStatus();
  }

  // ----- health and metrics -----

  absl::Status CheckHeartbeats(absl::Time now) {
    const absl::Duration timeout = absl::Milliseconds(opt_.config.cluster().heartbeat_timeout_ms());
    for (const Node& n : nodes_) {
      if (!n.left && now - n.last_seen > timeout) {
        return absl::UnavailableError(absl::StrCat(Name(n), " is dead: no heartbeat for ",
                                                   absl::FormatDuration(now - n.last_seen)));
      }
    }
    return absl::OkStatus();
  }

  absl::Status CheckBadLines() {
    uint64_t bad = 0, lines = 0;
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

  uint64_t TotalSamples() const {
    uint64_t s = 0;
    for (const Node& n : nodes_) s += n.metrics.samples();
    return s;
  }
  uint64_t TotalBytes() const {
    uint64_t s = 0;
    for (const Node& n : nodes_) s += n.metrics.bytes();
    return s;
  }
  double TotalLoss() const {
    double s = 0;
    for (const Node& n : nodes_) s += n.metrics.loss_sum();
    return s;
  }

  // One progress line: samples and rate since the phase began (reports
  // arrive in bursts, so a per-interval rate would jump), loss over the
  // interval, the workers' windowed training AUC, and an ETA from the share of
  // the epoch's bytes consumed.
  void PrintProgress(absl::Time now) {
    const uint64_t samples = TotalSamples();
    if (samples == last_samples_) return;  // nothing new to say
    const double loss = TotalLoss();
    const uint64_t phase_samples = samples - phase_samples_start_;
    const double elapsed = std::max(1e-9, absl::ToDoubleSeconds(now - phase_start_));
    const double interval_loss = (loss - last_loss_) / (samples - last_samples_);
    double auc_sum = 0, auc_w = 0;
    for (const Node& n : nodes_) {
      if (n.metrics.window_size() > 0 && !std::isnan(n.metrics.window_auc())) {
        auc_sum += n.metrics.window_auc() * n.metrics.window_size();
        auc_w += n.metrics.window_size();
      }
    }
    const double done =
        train_bytes_ ? std::min(1.0, static_cast<double>(TotalBytes() - phase_bytes_start_) / train_bytes_) : 0;
    const std::string eta = done > 0.01 ? absl::StrFormat("%.0fs", elapsed * (1 - done) / done) : "?";
    // The windowed AUC is undefined until a window holds both classes.
    const std::string train_auc = auc_w > 0 ? absl::StrFormat(" train_auc=%.4f", auc_sum / auc_w) : "";
    opt_.print(absl::StrFormat("epoch %d/%d %5.1f%% samples=%d samples/s=%.0f loss=%.4f%s eta=%s",
                               phase_.epoch() + 1, opt_.config.train().epochs(), 100 * done, phase_samples,
                               phase_samples / elapsed, interval_loss, train_auc, eta));
    last_progress_ = now;
    last_samples_ = samples;
    last_loss_ = loss;
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
      if (!n.left) return false;
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
    for (net::Message& m : pending_register_) Send(net::MakeErrorReply(m, proto::JOB_FAILED, std::string(why.message())));
    for (net::Message& m : pending_phase_done_) Send(net::MakeErrorReply(m, proto::JOB_FAILED, std::string(why.message())));
    for (net::Message& m : step_barrier_) Send(net::MakeErrorReply(m, proto::JOB_FAILED, std::string(why.message())));
    for (const Node& n : nodes_) {
      if (!n.left) SendShutdown(n, std::string(why.message()), true);
    }
    // Flush: the transport's linger delivers queued messages on close.
    return why;
  }

  SchedulerOptions opt_;
  std::unique_ptr<net::Transport> transport_;
  std::string job_id_;
  std::vector<proto::Chunk> train_chunks_, test_chunks_;
  uint64_t train_bytes_ = 0, test_bytes_ = 0;

  std::vector<Node> nodes_;  // by id - 1
  absl::flat_hash_map<net::PeerId, size_t> node_of_peer_;
  uint32_t servers_ = 0, workers_ = 0;
  bool registered_ = false;
  std::vector<net::Message> pending_register_;

  proto::Phase phase_;
  std::deque<const proto::Chunk*> queue_;
  absl::flat_hash_map<uint64_t, int32_t> outstanding_;  // chunk id -> node id
  std::vector<net::Message> pending_phase_done_;
  std::vector<net::Message> step_barrier_;
  std::vector<float> eval_scores_, eval_labels_;
  std::vector<uint64_t> eval_users_;
  absl::Time phase_start_, last_progress_, shutdown_deadline_;
  uint64_t phase_samples_start_ = 0, phase_bytes_start_ = 0, last_samples_ = 0;
  double last_loss_ = 0;
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
