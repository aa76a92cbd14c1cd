// RawPeer and JoinAsWorker: see raw_peer.h.
#include "tests/raw_peer.h"

#include "absl/strings/str_cat.h"

namespace ember::testing {

RawPeer::RawPeer(const std::string& endpoint, absl::Duration timeout, const net::KeyPair& self,
                 const std::string& server_key)
    : sock_(ctx_, zmq::socket_type::dealer) {
  sock_.set(zmq::sockopt::linger, 0);
  SetTimeout(timeout);
  if (!self.public_key.empty()) {
    sock_.set(zmq::sockopt::curve_serverkey, server_key);
    sock_.set(zmq::sockopt::curve_publickey, self.public_key);
    sock_.set(zmq::sockopt::curve_secretkey, self.secret_key);
  }
  sock_.connect(endpoint);
}

void RawPeer::SetTimeout(absl::Duration d) {
  const int ms = static_cast<int>(absl::ToInt64Milliseconds(d));
  sock_.set(zmq::sockopt::rcvtimeo, ms);
  sock_.set(zmq::sockopt::sndtimeo, ms);
}

bool RawPeer::Send(const proto::Header& h, const std::vector<std::string>& frames) {
  return SendRaw(h.SerializeAsString(), frames);
}

bool RawPeer::SendRaw(const std::string& first, const std::vector<std::string>& frames) {
  if (!sock_.send(zmq::buffer(first), frames.empty() ? zmq::send_flags::none : zmq::send_flags::sndmore)) {
    return false;
  }
  for (size_t i = 0; i < frames.size(); ++i) {
    (void)sock_.send(zmq::buffer(frames[i]), i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
  }
  return true;
}

bool RawPeer::Recv(proto::Header* h, std::vector<std::string>* frames) {
  zmq::message_t m;
  if (!sock_.recv(m)) return false;
  const bool parsed = h->ParseFromArray(m.data(), m.size());
  frames->clear();
  while (m.more()) {
    (void)sock_.recv(m);
    frames->push_back(m.to_string());
  }
  return parsed;
}

std::optional<proto::Header> RawPeer::Call(const proto::Header& h, const std::vector<std::string>& frames) {
  if (!Send(h, frames)) return std::nullopt;
  proto::Header r;
  std::vector<std::string> reply_frames;
  if (!Recv(&r, &reply_frames)) return std::nullopt;
  return r;
}

absl::StatusOr<JoinedWorker> JoinAsWorker(const std::string& scheduler_endpoint,
                                          const net::TransportOptions& transport, const std::string& job_token) {
  scheduler::SchedulerClientOptions o;
  o.scheduler_endpoint = scheduler_endpoint;
  o.self.set_role(proto::WORKER);
  o.job_token = job_token;
  absl::StatusOr<std::unique_ptr<net::Transport>> t = net::CreateTransport(transport);
  if (!t.ok()) return t.status();
  auto control = scheduler::SchedulerClient::Create(o, std::move(*t));
  if (!control.ok()) return control.status();
  JoinedWorker w;
  w.control = std::move(*control);
  absl::StatusOr<proto::RegisterReply> reg = w.control->Register();
  if (!reg.ok()) return reg.status();
  w.registration = *std::move(reg);
  w.control->StartHeartbeats(absl::Milliseconds(500), absl::Seconds(10));
  w.server_endpoints.resize(w.registration.cluster().config().cluster().num_servers());
  for (const auto& n : w.registration.cluster().nodes()) {
    if (n.role() == proto::SERVER) w.server_endpoints[n.rank()] = n.endpoint();
  }
  for (size_t r = 0; r < w.server_endpoints.size(); ++r) {
    if (w.server_endpoints[r].empty()) return absl::InternalError(absl::StrCat("no endpoint for server ", r));
  }
  return w;
}

std::string KeyBytes(const std::vector<uint64_t>& keys) {
  return std::string(reinterpret_cast<const char*>(keys.data()), keys.size() * sizeof(uint64_t));
}

}  // namespace ember::testing
