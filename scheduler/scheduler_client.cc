#include "scheduler/scheduler_client.h"

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "proto/config.h"
#include "glog/logging.h"

namespace ember::scheduler {

absl::StatusOr<std::unique_ptr<SchedulerClient>> SchedulerClient::Create(SchedulerClientOptions options,
                                                                          std::unique_ptr<net::Transport> transport) {
  auto client = net::Client::Create(std::move(transport));
  absl::StatusOr<net::PeerId> peer = client->Connect(options.scheduler_endpoint, proto::SCHEDULER);
  if (!peer.ok()) return peer.status();
  auto self = std::unique_ptr<SchedulerClient>(new SchedulerClient(std::move(options), std::move(client)));
  self->scheduler_ = *peer;
  SchedulerClient* raw = self.get();
  self->client_->SetUnsolicitedHandler([raw](net::Message&& m) {
    if (m.header.command() == proto::SHUTDOWN) {
      const proto::ShutdownRequest& s = m.header.shutdown();
      LOG(INFO) << "scheduler orders shutdown: " << s.reason();
      raw->Stop(s.failed() ? absl::AbortedError(absl::StrCat("job failed: ", s.reason())) : absl::OkStatus());
    } else if (m.header.command() == proto::PAUSE) {
      const proto::PauseRequest& p = m.header.pause();
      absl::MutexLock l(&raw->mu_);
      if (p.id() <= raw->answered_pause_ || p.id() <= raw->pause_.id()) return;
      LOG(INFO) << "scheduler orders a " << proto::PauseRequest::Kind_Name(p.kind()) << " pause (" << p.id() << ")";
      raw->pause_ = p;
      if (p.kind() == proto::PauseRequest::RECOVER) raw->recover_pending_ = true;
    }
  });
  return self;
}

SchedulerClient::SchedulerClient(SchedulerClientOptions options, std::unique_ptr<net::Client> client)
    : options_(std::move(options)), client_(std::move(client)) {}

SchedulerClient::~SchedulerClient() {
  heartbeat_stop_ = true;
  if (heartbeat_.joinable()) heartbeat_.join();
}

void SchedulerClient::Stop(absl::Status why) {
  absl::MutexLock l(&mu_);
  if (stopped_.HasBeenNotified()) return;
  stop_status_ = std::move(why);
  stopped_.Notify();
}

net::Message SchedulerClient::NewMessage(proto::Command command) const {
  net::Message m;
  m.header.set_command(command);
  m.header.set_sender(node_id_.load());
  m.header.set_incarnation(incarnation_.load());
  return m;
}

absl::StatusOr<net::Message> SchedulerClient::WaitLong(net::Client::CallId id, absl::Duration timeout,
                                                       bool through_recover) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    const net::Client::CallId ids[] = {id};
    absl::StatusOr<size_t> ready = client_->WaitAny(ids, absl::Milliseconds(200));
    if (ready.ok()) return client_->Wait(id);
    if (Stopped()) {
      client_->Forget(id);
      absl::MutexLock l(&mu_);
      return stop_status_.ok() ? absl::CancelledError("the job is shutting down") : stop_status_;
    }
    if (!through_recover && RecoverRequested()) {
      client_->Forget(id);
      return absl::AbortedError("the scheduler is recovering the job");
    }
    if (absl::Now() > deadline) {
      client_->Forget(id);
      return absl::DeadlineExceededError(absl::StrCat("no answer from the scheduler at ", options_.scheduler_endpoint,
                                                      " within ", absl::FormatDuration(timeout)));
    }
  }
}

absl::StatusOr<proto::RegisterReply> SchedulerClient::Register() {
  net::Message m = NewMessage(proto::REGISTER);
  proto::RegisterRequest* r = m.header.mutable_register_request();
  *r->mutable_node() = options_.self;
  r->set_dense_size(options_.dense_size);
  if (options_.rank >= 0) r->set_rank(options_.rank);
  r->set_job_token(options_.job_token);
  absl::StatusOr<net::Message> reply = WaitLong(client_->Start(scheduler_, std::move(m)), options_.register_timeout);
  if (!reply.ok()) return reply.status();
  const proto::RegisterReply& rr = reply->header.register_reply();
  if (absl::Status st = ValidateClusterInfo(rr.cluster(), options_.self.role(), rr.rank()); !st.ok()) {
    return absl::DataLossError(absl::StrCat("the scheduler at ", options_.scheduler_endpoint,
                                            " sent a cluster description this node cannot use: ", st.message()));
  }
  node_id_ = reply->header.register_reply().node_id();
  incarnation_ = reply->header.register_reply().cluster().incarnation();
  return reply->header.register_reply();
}

void SchedulerClient::StartHeartbeats(absl::Duration interval, absl::Duration timeout) {
  heartbeat_ = std::thread([this, interval, timeout] {
    absl::Time last_answer = absl::Now();
    while (!heartbeat_stop_ && !Stopped()) {
      net::Client::CallId id = client_->Start(scheduler_, NewMessage(proto::HEARTBEAT));
      const absl::Time sent = absl::Now();
      absl::StatusOr<net::Message> r = client_->Wait(id, timeout);
      if (r.ok()) last_answer = absl::Now();
      if (absl::Now() - last_answer > timeout) {
        LOG(ERROR) << "scheduler at " << options_.scheduler_endpoint << " lost: no heartbeat answered for "
                   << absl::FormatDuration(absl::Now() - last_answer);
        Stop(absl::UnavailableError("scheduler lost"));
        return;
      }
      const absl::Duration left = interval - (absl::Now() - sent);
      for (absl::Time end = absl::Now() + left; absl::Now() < end && !heartbeat_stop_;) {
        absl::SleepFor(std::min(left, absl::Milliseconds(50)));
      }
    }
  });
}

absl::StatusOr<proto::ChunkReply> SchedulerClient::GetChunk(uint32_t phase, const std::vector<uint64_t>& finished) {
  net::Message m = NewMessage(proto::GET_CHUNK);
  proto::ChunkRequest* r = m.header.mutable_chunk_request();
  r->set_phase(phase);
  r->mutable_finished()->Add(finished.begin(), finished.end());
  absl::StatusOr<net::Message> reply = WaitLong(client_->Start(scheduler_, std::move(m)), absl::Minutes(10));
  if (!reply.ok()) return reply.status();
  return reply->header.chunk_reply();
}

absl::StatusOr<proto::Phase> SchedulerClient::PhaseDone(uint32_t phase, const std::vector<uint64_t>& finished,
                                                        std::vector<float> scores, std::vector<float> labels,
                                                        std::vector<uint64_t> users, uint32_t num_tasks) {
  net::Message m = NewMessage(proto::PHASE_DONE);
  proto::PhaseDone* p = m.header.mutable_phase_done();
  p->set_phase(phase);
  p->mutable_finished()->Add(finished.begin(), finished.end());
  p->set_num_samples(users.size());
  p->set_num_tasks(num_tasks);
  if (!scores.empty()) {
    m.frames.push_back(net::Frame::FromVector(std::move(scores)));
    m.frames.push_back(net::Frame::FromVector(std::move(labels)));
    m.frames.push_back(net::Frame::FromVector(std::move(users)));
  }
  // Other workers may still be training: wait as long as a phase can take.
  absl::StatusOr<net::Message> reply = WaitLong(client_->Start(scheduler_, std::move(m)), absl::Hours(24 * 365));
  if (!reply.ok()) return reply.status();
  return reply->header.phase_done_reply().next();
}

absl::Status SchedulerClient::StepBarrier() {
  net::Message m = NewMessage(proto::BARRIER);
  m.header.mutable_barrier()->set_name("step");
  return WaitLong(client_->Start(scheduler_, std::move(m)), absl::Hours(24 * 365)).status();
}

proto::PauseRequest SchedulerClient::PendingPause() {
  absl::MutexLock l(&mu_);
  return pause_;
}

absl::StatusOr<proto::PausedReply> SchedulerClient::Paused(proto::Paused paused) {
  net::Message m = NewMessage(proto::PAUSED);
  *m.header.mutable_paused() = std::move(paused);
  // A checkpoint or a recovery (waiting for a replacement server) can take
  // long; a lost scheduler still ends the wait.
  absl::StatusOr<net::Message> reply =
      WaitLong(client_->Start(scheduler_, std::move(m)), absl::Hours(24 * 365), /*through_recover=*/true);
  if (!reply.ok()) return reply.status();
  const proto::PausedReply& r = reply->header.paused_reply();
  absl::MutexLock l(&mu_);
  answered_pause_ = std::max(answered_pause_, r.pause_id());
  if (pause_.id() <= answered_pause_) {
    pause_.Clear();
    recover_pending_ = false;
  }
  return r;
}

absl::Status SchedulerClient::StopStatus() {
  absl::MutexLock l(&mu_);
  return stop_status_;
}

absl::StatusOr<uint64_t> SchedulerClient::SspClock(uint64_t clock, uint64_t wait_for) {
  net::Message m = NewMessage(proto::BARRIER);
  proto::BarrierRequest* b = m.header.mutable_barrier();
  b->set_name("ssp");
  b->set_clock(clock);
  b->set_wait_for(wait_for);
  absl::StatusOr<net::Message> reply = WaitLong(client_->Start(scheduler_, std::move(m)), absl::Hours(24 * 365));
  if (!reply.ok()) return reply.status();
  return reply->header.clock();
}

void SchedulerClient::ReportMetrics(const proto::Metrics& metrics) {
  net::Message m = NewMessage(proto::REPORT_METRICS);
  *m.header.mutable_metrics() = metrics;
  client_->SendOneWay(scheduler_, std::move(m));
}

void SchedulerClient::Leave(const std::string& reason, bool failed) {
  net::Message m = NewMessage(proto::SHUTDOWN);
  m.header.mutable_shutdown()->set_reason(reason);
  m.header.mutable_shutdown()->set_failed(failed);
  client_->SendOneWay(scheduler_, std::move(m));
}

absl::Status SchedulerClient::WaitForShutdown() {
  stopped_.WaitForNotification();
  absl::MutexLock l(&mu_);
  return stop_status_;
}


absl::Status ValidateClusterInfo(const proto::ClusterInfo& cluster, proto::Role self_role, int self_rank) {
  if (absl::Status st = proto::ValidateJobConfig(cluster.config()); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("ClusterInfo.config: ", st.message()));
  }
  const proto::ClusterConfig& cc = cluster.config().cluster();
  const uint32_t servers = cc.num_servers();
  const proto::ShardMap& sm = cluster.shard_map();
  if (sm.num_logical_shards() != cc.num_logical_shards() ||
      static_cast<uint32_t>(sm.server_rank_size()) != sm.num_logical_shards()) {
    return absl::InvalidArgumentError(absl::StrCat("ClusterInfo.shard_map: ", sm.server_rank_size(), " owners for ",
                                                   sm.num_logical_shards(), " shards; the config has ",
                                                   cc.num_logical_shards()));
  }
  for (int s = 0; s < sm.server_rank_size(); ++s) {
    if (sm.server_rank(s) >= servers) {
      return absl::InvalidArgumentError(absl::StrCat("ClusterInfo.shard_map.server_rank[", s, "] = ",
                                                     sm.server_rank(s), ": the job has ", servers, " servers"));
    }
  }
  const proto::DenseLayout& d = cluster.dense();
  if (static_cast<uint32_t>(d.offset_size()) != servers + 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("ClusterInfo.dense.offset: ", d.offset_size(), " offsets for ", servers, " servers (want ",
                     servers + 1, ")"));
  }
  for (int i = 0; i < d.offset_size(); ++i) {
    const bool ok = i == 0 ? d.offset(0) == 0
                           : d.offset(i) >= d.offset(i - 1) && (i + 1 < d.offset_size() ? d.offset(i) <= d.total()
                                                                                          : d.offset(i) == d.total());
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat("ClusterInfo.dense.offset[", i, "] = ", d.offset(i),
                                                     ": offsets must run from 0 up to total ", d.total()));
    }
  }
  absl::flat_hash_set<int> ids;
  absl::flat_hash_set<std::pair<int, int>> ranks;
  bool self_found = false;
  for (int i = 0; i < cluster.nodes_size(); ++i) {
    const proto::NodeInfo& n = cluster.nodes(i);
    const std::string where = absl::StrCat("ClusterInfo.nodes[", i, "]");
    if (!ids.insert(n.id()).second) return absl::InvalidArgumentError(absl::StrCat(where, ": node id ", n.id(), " twice"));
    const uint32_t of_role = n.role() == proto::SERVER ? servers : n.role() == proto::WORKER ? cc.num_workers() : 0;
    if (of_role == 0 || n.rank() < 0 || static_cast<uint32_t>(n.rank()) >= of_role) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": ", proto::Role_Name(n.role()), " rank ", n.rank(), " is out of range"));
    }
    if (!ranks.insert({n.role(), n.rank()}).second) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", proto::Role_Name(n.role()), " rank ", n.rank(), " twice"));
    }
    if (n.role() == proto::SERVER && n.endpoint().empty()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": server rank ", n.rank(), " has no endpoint"));
    }
    if (n.role() == self_role && n.rank() == self_rank) self_found = true;
  }
  if (self_role == proto::SERVER && !self_found) {
    return absl::InvalidArgumentError(absl::StrCat("ClusterInfo.nodes: this server's rank ", self_rank, " is not listed"));
  }
  if (self_role == proto::WORKER && (self_rank < 0 || static_cast<uint32_t>(self_rank) >= cc.num_workers())) {
    return absl::InvalidArgumentError(absl::StrCat("RegisterReply.rank ", self_rank, ": the job has ",
                                                   cc.num_workers(), " workers"));
  }
  return absl::OkStatus();
}

}  // namespace ember::scheduler
