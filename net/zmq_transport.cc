// ZeroMQ implementation of Transport: one ROUTER for the bound endpoint, one
// DEALER per connection, an eventfd to wake the poller for Post/Wake. Data
// frames are handed to ZeroMQ without copying (zmq_msg_init_data with a free
// function that drops the frame's owner) and received frames are exposed in
// place.
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <deque>
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
    context_.close();
    if (wake_fd_ >= 0) close(wake_fd_);
  }

  absl::StatusOr<std::string> Bind(const std::string& endpoint) override {
    if (wake_fd_ < 0) return absl::InternalError("eventfd failed");
    if (router_) return absl::FailedPreconditionError("transport already bound");
    try {
      auto s = std::make_unique<zmq::socket_t>(context_, zmq::socket_type::router);
      Configure(*s);
      s->set(zmq::sockopt::router_mandatory, 1);
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

  absl::StatusOr<PeerId> Connect(const std::string& endpoint) override {
    if (wake_fd_ < 0) return absl::InternalError("eventfd failed");
    try {
      auto s = std::make_unique<zmq::socket_t>(context_, zmq::socket_type::dealer);
      Configure(*s);
      s->connect(endpoint);
      dealers_.push_back(std::move(s));
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
        if (!sock->send(zmq::buffer(*identity), zmq::send_flags::sndmore))
          return absl::UnavailableError("send would block");
      }
      const bool more = !msg.frames.empty();
      sock->send(zmq::buffer(header), more ? zmq::send_flags::sndmore : zmq::send_flags::none);
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
    s.set(zmq::sockopt::sndhwm, 0);
    s.set(zmq::sockopt::rcvhwm, 0);
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
    if (is_router) {
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
    out->frames.clear();
    for (size_t j = k + 1; j < parts.size(); ++j) {
      auto holder = std::make_shared<zmq::message_t>(std::move(parts[j]));
      const void* data = holder->data();
      const size_t size = holder->size();
      out->frames.push_back(Frame::Borrow(std::move(holder), data, size));
    }
    return true;
  }

  TransportOptions options_;
  zmq::context_t context_;
  std::unique_ptr<zmq::socket_t> router_;
  std::vector<std::unique_ptr<zmq::socket_t>> dealers_;
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
