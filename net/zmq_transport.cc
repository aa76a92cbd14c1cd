// ZeroMQ implementation of Transport: one ROUTER for the bound endpoint, one
// DEALER per connection, an eventfd to wake the poller for Post/Wake. Data
// frames are handed to ZeroMQ without copying (zmq_msg_init_data with a free
// function that drops the frame's owner) and received frames are exposed in
// place.
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <deque>
#include <thread>
#include <zmq.hpp>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "glog/logging.h"
#include "net/reject_log.h"
#include "net/transport.h"

namespace ember::net {
namespace {

constexpr PeerId kRouterPeerBase = 1u << 30;
// Below this, copying beats the bookkeeping of a zero-copy frame.
constexpr size_t kCopyBelow = 256;

void ReleaseOwner(void* /*data*/, void* hint) { delete static_cast<std::shared_ptr<const void>*>(hint); }

zmq::message_t ToZmq(const Frame& f) {
  if (f.size() < kCopyBelow || !f.owner()) return zmq::message_t(f.data(), f.size());
  auto* hint = new std::shared_ptr<const void>(f.owner());
  return zmq::message_t(const_cast<uint8_t*>(f.data()), f.size(), &ReleaseOwner, hint);
}

class ZmqTransport final : public Transport {
 public:
  explicit ZmqTransport(const TransportOptions& options)
      : options_(options), context_(options.io_threads) {
    wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  }
  ~ZmqTransport() override {
    router_.reset();
    dealers_.clear();
    if (zap_thread_.joinable()) {
      zap_stop_.store(true);
      zap_thread_.join();
    }
    context_.close();
    if (wake_fd_ >= 0) close(wake_fd_);
  }

  bool authenticates() const override { return options_.security.enabled(); }
  uint64_t rejected_peers() const override { return zap_rejects_.total(); }

  absl::StatusOr<std::string> Bind(const std::string& endpoint) override {
    if (wake_fd_ < 0) return absl::InternalError("eventfd failed");
    if (router_) return absl::FailedPreconditionError("transport already bound");
    try {
      auto s = std::make_unique<zmq::socket_t>(context_, zmq::socket_type::router);
      Configure(*s);
      s->set(zmq::sockopt::router_mandatory, 1);
      if (options_.security.enabled()) {
        s->set(zmq::sockopt::curve_server, 1);
        s->set(zmq::sockopt::curve_secretkey, options_.security.self.secret_key);
        s->set(zmq::sockopt::zap_domain, "ember");
        if (absl::Status st = StartZap(*s); !st.ok()) return st;
      }
      std::string ep = endpoint;
      // "tcp://host:0" means any free port; ZeroMQ spells it "*".
      if (ep.size() > 2 && ep.compare(ep.size() - 2, 2, ":0") == 0) ep = ep.substr(0, ep.size() - 1) + "*";
      s->bind(ep);
      std::string actual = s->get(zmq::sockopt::last_endpoint);
      router_ = std::move(s);
      return actual;
    } catch (const zmq::error_t& e) {
      return absl::UnavailableError(absl::StrCat("cannot bind ", endpoint, ": ", e.what()));
    }
  }

  absl::StatusOr<PeerId> Connect(const std::string& endpoint, proto::Role peer_role) override {
    if (wake_fd_ < 0) return absl::InternalError("eventfd failed");
    std::string server_key;
    if (options_.security.enabled()) {
      if (peer_role == proto::ROLE_UNSPECIFIED) {
        return absl::InvalidArgumentError(
            absl::StrCat("connect to ", endpoint, ": with security on the peer's role must be given"));
      }
      absl::StatusOr<std::string> k = options_.security.KeyOf(peer_role);
      if (!k.ok()) return absl::FailedPreconditionError(absl::StrCat("connect to ", endpoint, ": ", k.status().message()));
      server_key = *k;
    }
    try {
      auto s = std::make_unique<zmq::socket_t>(context_, zmq::socket_type::dealer);
      Configure(*s);
      if (!server_key.empty()) {
        // Until the CURVE handshake succeeds the DEALER has no pipe and a
        // send would wait for one forever (a wrong key never succeeds).
        s->set(zmq::sockopt::sndtimeo, 10000);
        s->set(zmq::sockopt::curve_serverkey, server_key);
        s->set(zmq::sockopt::curve_publickey, options_.security.self.public_key);
        s->set(zmq::sockopt::curve_secretkey, options_.security.self.secret_key);
      }
      s->connect(endpoint);
      dealers_.push_back(std::move(s));
      dealer_roles_.push_back(server_key.empty() ? proto::ROLE_UNSPECIFIED : peer_role);
      return static_cast<PeerId>(dealers_.size() - 1);
    } catch (const zmq::error_t& e) {
      return absl::UnavailableError(absl::StrCat("cannot connect to ", endpoint, ": ", e.what()));
    }
  }

  absl::Status Send(Message msg) override {
    zmq::socket_t* sock = nullptr;
    const std::string* identity = nullptr;
    if (msg.peer < kRouterPeerBase) {
      if (msg.peer >= dealers_.size()) return absl::NotFoundError(absl::StrCat("unknown peer ", msg.peer));
      sock = dealers_[msg.peer].get();
    } else {
      const size_t i = msg.peer - kRouterPeerBase;
      if (!router_ || i >= identities_.size())
        return absl::NotFoundError(absl::StrCat("unknown peer ", msg.peer));
      sock = router_.get();
      identity = &identities_[i];
    }
    std::string header = msg.header.SerializeAsString();
    try {
      if (identity != nullptr) {
        // A peer at its send high-water mark is not reading its replies:
        // drop this one rather than block the node (router_mandatory makes
        // the ROUTER say so instead of dropping silently).
        if (!sock->send(zmq::buffer(*identity), zmq::send_flags::sndmore | zmq::send_flags::dontwait)) {
          return absl::ResourceExhaustedError(
              absl::StrCat("peer ", msg.peer, " is not reading its replies (send high-water mark ",
                           options_.send_hwm, " reached); reply dropped"));
        }
      }
      const bool more = !msg.frames.empty();
      if (!sock->send(zmq::buffer(header), more ? zmq::send_flags::sndmore : zmq::send_flags::none)) {
        return absl::UnavailableError(absl::StrCat(
            "send to peer ", msg.peer, " timed out: no connection",
            options_.security.enabled() ? " (the CURVE handshake failed: do both sides use keys from the same "
                                          "`ember keygen`?)"
                                        : ""));
      }
      for (size_t i = 0; i < msg.frames.size(); ++i) {
        zmq::message_t m = ToZmq(msg.frames[i]);
        sock->send(m, i + 1 < msg.frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
      }
    } catch (const zmq::error_t& e) {
      // EHOSTUNREACH: the peer behind a ROUTER identity has gone.
      return absl::UnavailableError(absl::StrCat("send to peer ", msg.peer, " failed: ", e.what()));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<bool> Recv(Message* out, absl::Duration timeout) override {
    const absl::Time deadline = absl::Now() + timeout;
    std::vector<zmq::pollitem_t> items;
    for (;;) {
      DrainPosted();
      if (woken_.exchange(false)) return false;
      // Take whatever is already queued, starting after the socket served last.
      const size_t n = dealers_.size() + (router_ ? 1 : 0);
      for (size_t k = 0; k < n; ++k) {
        const size_t i = (next_socket_ + k) % n;
        absl::StatusOr<bool> got = TryRecv(i, out);
        if (!got.ok()) return got.status();
        if (*got) {
          next_socket_ = i + 1;
          return true;
        }
      }
      const absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) return false;
      items.clear();
      for (size_t i = 0; i < n; ++i) items.push_back({SocketAt(i)->handle(), 0, ZMQ_POLLIN, 0});
      items.push_back({nullptr, wake_fd_, ZMQ_POLLIN, 0});
      const long ms = left == absl::InfiniteDuration() ? -1 : std::max<long>(1, absl::ToInt64Milliseconds(left));
      try {
        zmq::poll(items.data(), items.size(), std::chrono::milliseconds(ms));
      } catch (const zmq::error_t& e) {
        if (e.num() != EINTR) return absl::InternalError(absl::StrCat("zmq poll: ", e.what()));
      }
      if (items.back().revents & ZMQ_POLLIN) {
        uint64_t v;
        while (read(wake_fd_, &v, sizeof(v)) > 0) {
        }
      }
    }
  }

  void Post(Message msg) override {
    {
      absl::MutexLock l(&post_mu_);
      posted_.push_back(std::move(msg));
    }
    Signal();
  }

  void Wake() override {
    woken_.store(true);
    Signal();
  }

 private:
  void Configure(zmq::socket_t& s) {
    s.set(zmq::sockopt::sndhwm, options_.send_hwm);
    s.set(zmq::sockopt::rcvhwm, options_.recv_hwm);
    s.set(zmq::sockopt::linger, options_.linger_ms);
    s.set(zmq::sockopt::maxmsgsize, options_.max_message_bytes);
    // Large socket buffers help loopback bandwidth with multi-MB frames.
    s.set(zmq::sockopt::sndbuf, 4 << 20);
    s.set(zmq::sockopt::rcvbuf, 4 << 20);
  }

  void Signal() {
    uint64_t one = 1;
    if (write(wake_fd_, &one, sizeof(one)) < 0) PLOG(ERROR) << "eventfd write";
  }

  void DrainPosted() {
    std::deque<Message> batch;
    {
      absl::MutexLock l(&post_mu_);
      batch.swap(posted_);
    }
    for (Message& m : batch) {
      absl::Status st = Send(std::move(m));
      if (!st.ok()) LOG(WARNING) << "posted message dropped: " << st;
    }
  }

  zmq::socket_t* SocketAt(size_t i) { return i < dealers_.size() ? dealers_[i].get() : router_.get(); }

  // Receives one whole multipart from socket i without blocking.
  absl::StatusOr<bool> TryRecv(size_t i, Message* out) {
    zmq::socket_t* sock = SocketAt(i);
    const bool is_router = i >= dealers_.size();
    zmq::message_t first;
    try {
      if (!sock->recv(first, zmq::recv_flags::dontwait)) return false;
    } catch (const zmq::error_t& e) {
      return absl::InternalError(absl::StrCat("zmq recv: ", e.what()));
    }
    std::vector<zmq::message_t> parts;
    parts.push_back(std::move(first));
    while (parts.back().more()) {
      zmq::message_t m;
      (void)sock->recv(m, zmq::recv_flags::none);  // the rest of a multipart is already here
      parts.push_back(std::move(m));
    }
    size_t k = 0;
    PeerId peer = static_cast<PeerId>(i);
    proto::Role role = is_router ? proto::ROLE_UNSPECIFIED : dealer_roles_[i];
    if (is_router) {
      if (options_.security.enabled() && parts.size() > 1) {
        // ZAP put the key's role in the connection's User-Id.
        const char* user = zmq_msg_gets(parts[1].handle(), "User-Id");
        if (user != nullptr) role = ParseRole(user);
      }
      std::string id = parts[0].to_string();
      auto [it, inserted] = identity_ids_.try_emplace(id, kRouterPeerBase + identities_.size());
      if (inserted) identities_.push_back(std::move(id));
      peer = it->second;
      k = 1;
    }
    if (k >= parts.size() || !out->header.ParseFromArray(parts[k].data(), parts[k].size())) {
      rejects_.Warn(absl::StrCat("peer ", peer, ": dropped a message whose header frame does not parse (",
                                 parts.size() - k, " frames)"));
      Message reply;
      reply.peer = peer;
      reply.header.set_is_reply(true);
      reply.header.set_error(proto::BAD_HEADER);
      reply.header.set_error_message("header frame does not parse as ember.proto.Header");
      (void)Send(std::move(reply));
      return false;
    }
    out->peer = peer;
    out->peer_role = role;
    out->frames.clear();
    for (size_t j = k + 1; j < parts.size(); ++j) {
      auto holder = std::make_shared<zmq::message_t>(std::move(parts[j]));
      const void* data = holder->data();
      const size_t size = holder->size();
      out->frames.push_back(Frame::Borrow(std::move(holder), data, size));
    }
    return true;
  }

  // ZAP (ZeroMQ RFC 27): the context asks inproc://zeromq.zap.01 about every
  // CURVE handshake on the bound socket; this thread answers 200 with the
  // key's role as User-Id for an authorised key, 400 otherwise.
  // A socket monitor reports peers that fail the handshake before ZAP is
  // asked (no CURVE at all, or a garbled greeting); the same thread counts
  // them.
  absl::Status StartZap(zmq::socket_t& router) {
    auto rep = std::make_shared<zmq::socket_t>(context_, zmq::socket_type::rep);
    auto monitor = std::make_shared<zmq::socket_t>(context_, zmq::socket_type::pair);
    rep->set(zmq::sockopt::linger, 0);
    monitor->set(zmq::sockopt::linger, 0);
    const std::string monitor_ep = absl::StrCat("inproc://ember.monitor.", reinterpret_cast<uintptr_t>(this));
    try {
      rep->bind("inproc://zeromq.zap.01");
      if (zmq_socket_monitor(router.handle(), monitor_ep.c_str(),
                             ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) != 0) {
        throw zmq::error_t();
      }
      monitor->connect(monitor_ep);
    } catch (const zmq::error_t& e) {
      return absl::InternalError(absl::StrCat("cannot start the ZAP handler: ", e.what()));
    }
    zap_thread_ = std::thread([this, rep, monitor] { ZapLoop(*rep, *monitor); });
    return absl::OkStatus();
  }

  void ZapLoop(zmq::socket_t& sock, zmq::socket_t& monitor) {
    while (!zap_stop_.load()) {
      zmq::pollitem_t items[2] = {{sock.handle(), 0, ZMQ_POLLIN, 0}, {monitor.handle(), 0, ZMQ_POLLIN, 0}};
      try {
        zmq::poll(items, 2, std::chrono::milliseconds(100));
        if (items[1].revents & ZMQ_POLLIN) {
          // Two frames: event id (16 bits) + value (32 bits), then the endpoint.
          zmq::message_t event, where;
          (void)monitor.recv(event, zmq::recv_flags::none);
          if (event.more()) (void)monitor.recv(where, zmq::recv_flags::none);
          zap_rejects_.Warn(absl::StrCat("refused a connection on ", where.to_string(),
                                         ": the peer failed the CURVE handshake (no key, or not ember)"));
        }
        if (!(items[0].revents & ZMQ_POLLIN)) continue;
        std::vector<zmq::message_t> req;
        do {
          req.emplace_back();
          (void)sock.recv(req.back(), zmq::recv_flags::none);
        } while (req.back().more());
        // version, request id, domain, address, routing id, mechanism, credentials...
        std::string status = "400", text = "malformed ZAP request", user;
        if (req.size() >= 6) {
          const std::string mechanism = req[5].to_string();
          const std::string address = req[3].to_string();
          if (mechanism == "CURVE" && req.size() >= 7 && req[6].size() == 32) {
            char z85[41];
            zmq_z85_encode(z85, static_cast<const uint8_t*>(req[6].data()), 32);
            auto it = options_.security.authorized.find(z85);
            if (it != options_.security.authorized.end()) {
              status = "200";
              text = "OK";
              user = std::string(RoleName(it->second));
            } else {
              text = "public key not authorised";
              zap_rejects_.Warn(absl::StrCat("refused a connection from ", address, ": public key ", z85,
                                             " is not in authorized_keys"));
            }
          } else {
            text = "CURVE required";
            zap_rejects_.Warn(absl::StrCat("refused a connection from ", address, ": mechanism ", mechanism,
                                           ", CURVE required"));
          }
        }
        const std::string version = "1.0";
        const std::string id = req.size() >= 2 ? req[1].to_string() : std::string();
        sock.send(zmq::buffer(version), zmq::send_flags::sndmore);
        sock.send(zmq::buffer(id), zmq::send_flags::sndmore);
        sock.send(zmq::buffer(status), zmq::send_flags::sndmore);
        sock.send(zmq::buffer(text), zmq::send_flags::sndmore);
        sock.send(zmq::buffer(user), zmq::send_flags::sndmore);
        sock.send(zmq::str_buffer(""), zmq::send_flags::none);
      } catch (const zmq::error_t& e) {
        if (e.num() == ETERM) return;
        if (e.num() != EINTR) LOG(ERROR) << "ZAP handler: " << e.what();
      }
    }
  }

  TransportOptions options_;
  zmq::context_t context_;
  std::unique_ptr<zmq::socket_t> router_;
  std::vector<std::unique_ptr<zmq::socket_t>> dealers_;
  std::vector<proto::Role> dealer_roles_;
  std::thread zap_thread_;
  std::atomic<bool> zap_stop_{false};
  RejectLog zap_rejects_;
  absl::flat_hash_map<std::string, PeerId> identity_ids_;
  std::vector<std::string> identities_;
  size_t next_socket_ = 0;
  RejectLog rejects_;
  int wake_fd_ = -1;
  std::atomic<bool> woken_{false};
  absl::Mutex post_mu_;
  std::deque<Message> posted_ ABSL_GUARDED_BY(post_mu_);
};

}  // namespace

std::unique_ptr<Transport> NewZmqTransport(const TransportOptions& options) {
  return std::make_unique<ZmqTransport>(options);
}

}  // namespace ember::net
