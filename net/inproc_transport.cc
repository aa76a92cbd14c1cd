// In-process Transport for unit tests: each transport is a mailbox; Connect
// looks up a bound mailbox in the InprocHub. Delivery moves the Message (and
// so its frames) without copying; the header is round-tripped through its
// serialized form so that tests see what the wire would carry.
#include <deque>
#include <memory>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "glog/logging.h"
#include "net/transport.h"

namespace ember::net {

namespace {
struct Mailbox;
}  // namespace

struct InprocHub::State {
  absl::Mutex mu;
  absl::flat_hash_map<std::string, std::shared_ptr<Mailbox>> bound ABSL_GUARDED_BY(mu);
};

InprocHub::InprocHub() : state_(std::make_unique<State>()) {}
InprocHub::~InprocHub() = default;

namespace {

struct Mailbox {
  absl::Mutex mu;
  std::deque<Message> queue ABSL_GUARDED_BY(mu);
  bool closed ABSL_GUARDED_BY(mu) = false;
  bool woken ABSL_GUARDED_BY(mu) = false;
  // Peers as this mailbox's owner numbers them.
  std::vector<std::weak_ptr<Mailbox>> peers ABSL_GUARDED_BY(mu);
  absl::flat_hash_map<Mailbox*, PeerId> peer_ids ABSL_GUARDED_BY(mu);

  PeerId IdOf(const std::shared_ptr<Mailbox>& other) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    auto [it, inserted] = peer_ids.try_emplace(other.get(), static_cast<PeerId>(peers.size()));
    if (inserted) peers.push_back(other);
    return it->second;
  }
};

class InprocTransport final : public Transport {
 public:
  explicit InprocTransport(InprocHub* hub) : hub_(hub), box_(std::make_shared<Mailbox>()) {}
  ~InprocTransport() override {
    {
      absl::MutexLock l(&box_->mu);
      box_->closed = true;
    }
    if (!bound_.empty()) {
      absl::MutexLock l(&hub_->state()->mu);
      hub_->state()->bound.erase(bound_);
    }
  }

  absl::StatusOr<std::string> Bind(const std::string& endpoint) override {
    if (!bound_.empty()) return absl::FailedPreconditionError("transport already bound");
    absl::MutexLock l(&hub_->state()->mu);
    auto [it, inserted] = hub_->state()->bound.try_emplace(endpoint, box_);
    if (!inserted) return absl::AlreadyExistsError(absl::StrCat("endpoint in use: ", endpoint));
    bound_ = endpoint;
    return endpoint;
  }

  absl::StatusOr<PeerId> Connect(const std::string& endpoint, proto::Role /*peer_role*/) override {
    std::shared_ptr<Mailbox> target;
    {
      absl::MutexLock l(&hub_->state()->mu);
      auto it = hub_->state()->bound.find(endpoint);
      if (it == hub_->state()->bound.end())
        return absl::UnavailableError(absl::StrCat("no transport bound at ", endpoint));
      target = it->second;
    }
    absl::MutexLock l(&box_->mu);
    // Replies from the target arrive under this id.
    return box_->IdOf(target);
  }

  absl::Status Send(Message msg) override {
    std::shared_ptr<Mailbox> target;
    {
      absl::MutexLock l(&box_->mu);
      if (msg.peer >= box_->peers.size()) return absl::NotFoundError(absl::StrCat("unknown peer ", msg.peer));
      target = box_->peers[msg.peer].lock();
    }
    if (!target) return absl::UnavailableError(absl::StrCat("peer ", msg.peer, " has gone"));
    // What the wire would carry: the header as bytes.
    proto::Header copy;
    if (!copy.ParseFromString(msg.header.SerializeAsString())) return absl::InternalError("header round trip");
    msg.header = std::move(copy);
    absl::MutexLock l(&target->mu);
    if (target->closed) return absl::UnavailableError(absl::StrCat("peer ", msg.peer, " has gone"));
    msg.peer = target->IdOf(box_);
    target->queue.push_back(std::move(msg));
    return absl::OkStatus();
  }

  absl::StatusOr<bool> Recv(Message* out, absl::Duration timeout) override {
    absl::MutexLock l(&box_->mu);
    auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(box_->mu) {
      return !box_->queue.empty() || box_->woken;
    };
    box_->mu.AwaitWithTimeout(absl::Condition(&ready), timeout);
    if (box_->woken) {
      box_->woken = false;
      return false;
    }
    if (box_->queue.empty()) return false;
    *out = std::move(box_->queue.front());
    box_->queue.pop_front();
    return true;
  }

  // Inproc delivery is already thread-safe: send at once.
  void Post(Message msg) override {
    absl::Status st = Send(std::move(msg));
    if (!st.ok()) LOG(WARNING) << "posted message dropped: " << st;
  }

  void Wake() override {
    absl::MutexLock l(&box_->mu);
    box_->woken = true;
  }

 private:
  InprocHub* hub_;
  std::shared_ptr<Mailbox> box_;
  std::string bound_;
};

}  // namespace

std::unique_ptr<Transport> NewZmqTransport(const TransportOptions& options);

absl::StatusOr<std::unique_ptr<Transport>> CreateTransport(const TransportOptions& options) {
  switch (options.kind) {
    case TransportOptions::Kind::kZmq:
      if (options.io_threads < 1) return absl::InvalidArgumentError("io_threads must be >= 1");
      return NewZmqTransport(options);
    case TransportOptions::Kind::kInproc:
      if (options.hub == nullptr) return absl::InvalidArgumentError("inproc transport needs a hub");
      return std::unique_ptr<Transport>(new InprocTransport(options.hub));
  }
  return absl::InvalidArgumentError("unknown transport kind");
}

}  // namespace ember::net
