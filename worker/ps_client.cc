#include "worker/ps_client.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace ember::worker {
namespace {

// The cluster's server nodes indexed by rank: ranks must be 0..S-1, each once.
absl::StatusOr<std::vector<const proto::NodeInfo*>> ServersByRank(const proto::ClusterInfo& cluster) {
  size_t count = 0;
  for (const proto::NodeInfo& n : cluster.nodes()) count += n.role() == proto::SERVER;
  std::vector<const proto::NodeInfo*> by_rank(count, nullptr);
  for (const proto::NodeInfo& n : cluster.nodes()) {
    if (n.role() != proto::SERVER) continue;
    if (n.rank() < 0 || n.rank() >= static_cast<int>(count) || by_rank[n.rank()] != nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("server node ", n.id(), " has bad rank ", n.rank()));
    }
    by_rank[n.rank()] = &n;
  }
  return by_rank;
}

}  // namespace

absl::StatusOr<std::unique_ptr<PsClient>> PsClient::Create(const PsClientOptions& options,
                                                           std::unique_ptr<net::Transport> transport) {
  if (options.max_keys_per_message == 0) return absl::InvalidArgumentError("max_keys_per_message must be >= 1");
  PsClientOptions o = options;
  // The servers refuse requests above the job's limit.
  const uint64_t limit = options.cluster.config().cluster().max_keys_per_request();
  if (limit < o.max_keys_per_message) o.max_keys_per_message = static_cast<uint32_t>(limit);
  auto self = std::unique_ptr<PsClient>(new PsClient(o, net::Client::Create(std::move(transport))));
  absl::StatusOr<std::vector<const proto::NodeInfo*>> servers = ServersByRank(options.cluster);
  if (!servers.ok()) return servers.status();
  self->servers_.assign(servers->size(), net::kNoPeer);
  for (size_t r = 0; r < servers->size(); ++r) {
    absl::StatusOr<net::PeerId> p = self->client_->Connect((*servers)[r]->endpoint(), proto::SERVER);
    if (!p.ok()) return p.status();
    self->servers_[r] = *p;
  }
  if (self->dense_.offset_size() != static_cast<int>(servers->size()) + 1) {
    return absl::InvalidArgumentError(absl::StrCat("dense layout has ", self->dense_.offset_size(),
                                                   " offsets for ", servers->size(), " servers"));
  }
  return self;
}

PsClient::PsClient(const PsClientOptions& options, std::unique_ptr<net::Client> client)
    : options_(options), client_(std::move(client)), dense_(options.cluster.dense()) {
  for (const proto::TableConfig& t : options.cluster.config().tables()) dims_.push_back(t.dim());
}

namespace {

// The PULL or PUSH header and keys frame for keys [a, b) of a table.
net::Message SparseRequest(proto::Command command, int32_t node_id, uint32_t table, uint32_t dim,
                           const std::shared_ptr<const std::vector<uint64_t>>& keys, uint32_t a, uint32_t b) {
  net::Message m;
  m.header.set_command(command);
  m.header.set_sender(node_id);
  m.header.set_table(table);
  m.header.set_dim(dim);
  m.header.set_num_keys(b - a);
  m.frames.push_back(net::Frame::Borrow(keys, keys->data() + a, size_t{b - a} * sizeof(uint64_t)));
  return m;
}

}  // namespace

PsClient::Ticket PsClient::Pull(uint32_t table, std::shared_ptr<const std::vector<uint64_t>> keys,
                                absl::Span<const uint32_t> server_begin, float* out, PullMode mode) {
  Ticket t;
  t.what = mode == PullMode::kReadOnly ? "read-only PULL" : "PULL";
  const uint32_t dim = dims_[table];
  for (uint32_t s = 0; s < servers_.size(); ++s) {
    const uint32_t step = options_.max_keys_per_message;
    for (uint32_t a = server_begin[s], end = server_begin[s + 1]; a < end; a += std::min(step, end - a)) {
      const uint32_t b = a + std::min(step, end - a);
      net::Message m = SparseRequest(proto::PULL, options_.node_id, table, dim, keys, a, b);
      m.header.set_read_only(mode == PullMode::kReadOnly);
      t.parts.push_back({Start(s, std::move(m)), s, out + size_t{a} * dim, size_t{b - a} * dim});
    }
  }
  return t;
}

PsClient::Ticket PsClient::Push(uint32_t table, std::shared_ptr<const std::vector<uint64_t>> keys,
                                absl::Span<const uint32_t> server_begin,
                                std::shared_ptr<const std::vector<float>> grads, uint64_t log_time) {
  Ticket t;
  t.what = "PUSH";
  const uint32_t dim = dims_[table];
  for (uint32_t s = 0; s < servers_.size(); ++s) {
    const uint32_t step = options_.max_keys_per_message;
    for (uint32_t a = server_begin[s], end = server_begin[s + 1]; a < end; a += std::min(step, end - a)) {
      const uint32_t b = a + std::min(step, end - a);
      net::Message m = SparseRequest(proto::PUSH, options_.node_id, table, dim, keys, a, b);
      m.header.set_log_time(log_time);
      m.frames.push_back(
          net::Frame::Borrow(grads, grads->data() + size_t{a} * dim, size_t{b - a} * dim * sizeof(float)));
      t.parts.push_back({Start(s, std::move(m)), s, nullptr, 0});
    }
  }
  return t;
}

PsClient::Ticket PsClient::PullDense(float* out, uint64_t* versions, PullMode mode) {
  Ticket t;
  t.what = "DENSE_PULL";
  for (uint32_t s = 0; s < servers_.size(); ++s) {
    if (versions != nullptr) versions[s] = 0;
    const uint64_t a = dense_.offset(s), b = dense_.offset(s + 1);
    if (a == b) continue;
    net::Message m;
    m.header.set_command(proto::DENSE_PULL);
    m.header.set_sender(options_.node_id);
    m.header.set_dense_offset(a);
    m.header.set_dense_length(b - a);
    if (mode == PullMode::kReadOnly) m.header.set_read_only(true);
    t.parts.push_back({Start(s, std::move(m)), s, out + a, b - a, versions != nullptr ? versions + s : nullptr});
  }
  return t;
}

PsClient::DenseStaleness PsClient::dense_staleness() const {
  return {dense_pushes_.load(), dense_staleness_sum_.load(), dense_staleness_max_.load()};
}

PsClient::Ticket PsClient::PushDense(std::shared_ptr<const std::vector<float>> grads,
                                     absl::Span<const uint64_t> versions) {
  Ticket t;
  t.what = "DENSE_PUSH";
  for (uint32_t s = 0; s < servers_.size(); ++s) {
    const uint64_t a = dense_.offset(s), b = dense_.offset(s + 1);
    if (a == b) continue;
    net::Message m;
    m.header.set_command(proto::DENSE_PUSH);
    m.header.set_sender(options_.node_id);
    m.header.set_dense_offset(a);
    m.header.set_dense_length(b - a);
    if (s < versions.size()) m.header.set_dense_version(versions[s]);
    m.frames.push_back(net::Frame::Borrow(grads, grads->data() + a, (b - a) * sizeof(float)));
    t.parts.push_back({Start(s, std::move(m)), s, nullptr, 0});
  }
  return t;
}

net::Client::CallId PsClient::Start(uint32_t server, net::Message m) {
  m.header.set_incarnation(options_.cluster.incarnation());
  return client_->Start(servers_[server], std::move(m));
}

absl::Status PsClient::UpdateCluster(const proto::ClusterInfo& cluster) {
  absl::StatusOr<std::vector<const proto::NodeInfo*>> old_servers = ServersByRank(options_.cluster);
  absl::StatusOr<std::vector<const proto::NodeInfo*>> new_servers = ServersByRank(cluster);
  if (!old_servers.ok()) return old_servers.status();
  if (!new_servers.ok()) return new_servers.status();
  if (new_servers->size() != servers_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("cluster update: ", new_servers->size(), " servers; the job has ",
                                                   servers_.size()));
  }
  for (size_t r = 0; r < servers_.size(); ++r) {
    if ((*old_servers)[r]->id() == (*new_servers)[r]->id()) continue;
    // A replacement: a new connection, even on the same endpoint, so that
    // nothing queued for the dead process is delivered to the new one.
    absl::StatusOr<net::PeerId> p = client_->Connect((*new_servers)[r]->endpoint(), proto::SERVER);
    if (!p.ok()) return p.status();
    servers_[r] = *p;
  }
  options_.cluster = cluster;
  return absl::OkStatus();
}

absl::StatusOr<net::Message> PsClient::WaitReply(net::Client::CallId call) {
  if (!options_.stop_requested) return client_->Wait(call, options_.timeout);
  const absl::Time deadline = absl::Now() + options_.timeout;
  for (;;) {
    const net::Client::CallId ids[] = {call};
    if (client_->WaitAny(ids, absl::Milliseconds(100)).ok()) return client_->Wait(call);
    if (options_.stop_requested()) {
      client_->Forget(call);
      return absl::CancelledError("the job is stopping");
    }
    if (absl::Now() > deadline) {
      client_->Forget(call);
      return absl::DeadlineExceededError(absl::StrCat("no reply within ", absl::FormatDuration(options_.timeout)));
    }
  }
}

absl::Status PsClient::Wait(Ticket& t) {
  absl::Status first;
  for (const Ticket::Part& p : t.parts) {
    absl::StatusOr<net::Message> r = WaitReply(p.call);
    if (!r.ok()) {
      if (first.ok()) {
        first = absl::Status(r.status().code(),
                             absl::StrCat(t.what, " to server ", p.server, ": ", r.status().message()));
      }
      continue;
    }
    if (r->header.command() == proto::DENSE_PUSH) {
      const uint64_t tau = r->header.dense_staleness();
      dense_pushes_.fetch_add(1, std::memory_order_relaxed);
      dense_staleness_sum_.fetch_add(tau, std::memory_order_relaxed);
      uint64_t seen = dense_staleness_max_.load(std::memory_order_relaxed);
      while (tau > seen && !dense_staleness_max_.compare_exchange_weak(seen, tau)) {
      }
    }
    if (p.version != nullptr) *p.version = r->header.dense_version();
    if (p.dest == nullptr) continue;
    if (r->frames.size() != 1 || r->frames[0].size() != p.floats * sizeof(float)) {
      if (first.ok()) {
        first = absl::InternalError(absl::StrCat(t.what, " reply from server ", p.server, " has the wrong size"));
      }
      continue;
    }
    std::memcpy(p.dest, r->frames[0].data(), p.floats * sizeof(float));
  }
  t.parts.clear();
  return first;
}

bool PsClient::Ready(const Ticket& t) {
  for (const Ticket::Part& p : t.parts) {
    if (!client_->Done(p.call)) return false;
  }
  return true;
}

}  // namespace ember::worker
