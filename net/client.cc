#include "net/client.h"

#include "absl/strings/str_cat.h"
#include "glog/logging.h"
#include "net/validate.h"

namespace ember::net {

absl::Status ReplyStatus(const proto::Header& reply) {
  if (reply.error() == proto::OK) return absl::OkStatus();
  std::string msg = absl::StrCat(proto::Command_Name(reply.command()), " failed (",
                                 proto::ErrorCode_Name(reply.error()), "): ", reply.error_message());
  switch (reply.error()) {
    case proto::BAD_HEADER:
    case proto::BAD_FRAMES:
    case proto::BAD_SIZE:
    case proto::UNKNOWN_TABLE:
    case proto::UNKNOWN_COMMAND:
    case proto::BAD_REQUEST:
      return absl::InvalidArgumentError(msg);
    case proto::WRONG_SERVER:
      return absl::FailedPreconditionError(msg);
    case proto::NOT_READY:
    case proto::SHUTTING_DOWN:
      return absl::UnavailableError(msg);
    case proto::JOB_FAILED:
      return absl::AbortedError(msg);
    case proto::RESOURCE_EXHAUSTED:
      return absl::ResourceExhaustedError(msg);
    default:
      return absl::InternalError(msg);
  }
}

std::unique_ptr<Client> Client::Create(std::unique_ptr<Transport> transport) {
  return std::unique_ptr<Client>(new Client(std::move(transport)));
}

Client::Client(std::unique_ptr<Transport> transport) : transport_(std::move(transport)) {
  io_ = std::thread([this] { Loop(); });
}

Client::~Client() {
  {
    absl::MutexLock l(&mu_);
    stopping_ = true;
  }
  transport_->Wake();
  io_.join();
}

void Client::Loop() {
  Message m;
  for (;;) {
    std::vector<std::function<void(Transport*)>> tasks;
    {
      absl::MutexLock l(&mu_);
      if (stopping_) break;
      tasks.swap(tasks_);
    }
    for (auto& t : tasks) t(transport_.get());
    absl::StatusOr<bool> got = transport_->Recv(&m, absl::Milliseconds(200));
    if (!got.ok()) {
      LOG(ERROR) << "client transport: " << got.status();
      continue;
    }
    if (!*got) continue;
    WireCheck check = ValidateMessage(m);
    if (!check.ok()) {
      // A malformed reply must not be taken for data: fail the call instead.
      m.header.set_error(check.code);
      m.header.set_error_message("malformed message from peer: " + check.why);
      m.frames.clear();
    }
    std::function<void(Message&&)> handler;
    {
      absl::MutexLock l(&mu_);
      if (m.header.is_reply()) {
        auto it = pending_.find(m.header.request_id());
        if (it != pending_.end()) {
          it->second.done = true;
          it->second.reply = std::move(m);
          continue;
        }
        // A reply nobody waits for (forgotten or timed out): drop it.
        continue;
      }
      handler = unsolicited_;
    }
    if (handler) {
      handler(std::move(m));
    } else {
      LOG(WARNING) << "unsolicited " << proto::Command_Name(m.header.command()) << " dropped";
    }
  }
  absl::MutexLock l(&mu_);
  for (auto& [id, p] : pending_) {
    if (!p.done) {
      p.done = true;
      p.reply.header.set_error(proto::SHUTTING_DOWN);
      p.reply.header.set_error_message("client stopped");
    }
  }
}

absl::StatusOr<PeerId> Client::Connect(const std::string& endpoint, proto::Role peer_role) {
  absl::StatusOr<PeerId> result = absl::UnknownError("not run");
  bool done = false;
  {
    absl::MutexLock l(&mu_);
    tasks_.push_back([&](Transport* t) {
      absl::StatusOr<PeerId> r = t->Connect(endpoint, peer_role);
      absl::MutexLock l2(&mu_);
      result = std::move(r);
      done = true;
    });
  }
  transport_->Wake();
  absl::MutexLock l(&mu_);
  mu_.Await(absl::Condition(&done));
  return result;
}

Client::CallId Client::Start(PeerId peer, Message request) {
  CallId id;
  {
    absl::MutexLock l(&mu_);
    id = next_id_++;
    pending_.try_emplace(id);
  }
  request.peer = peer;
  request.header.set_request_id(id);
  request.header.set_is_reply(false);
  transport_->Post(std::move(request));
  return id;
}

void Client::SendOneWay(PeerId peer, Message message) {
  message.peer = peer;
  message.header.set_is_reply(false);
  transport_->Post(std::move(message));
}

absl::StatusOr<Message> Client::Wait(CallId id, absl::Duration timeout) {
  absl::MutexLock l(&mu_);
  if (!pending_.contains(id)) return absl::NotFoundError(absl::StrCat("no pending call ", id));
  // flat_hash_map entries move on rehash, so the condition looks the call up each time.
  auto done = [this, id]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto i = pending_.find(id);
    return i == pending_.end() || i->second.done;
  };
  if (!mu_.AwaitWithTimeout(absl::Condition(&done), timeout)) {
    pending_.erase(id);
    return absl::DeadlineExceededError(absl::StrCat("no reply within ", absl::FormatDuration(timeout)));
  }
  auto it = pending_.find(id);
  if (it == pending_.end()) return absl::CancelledError("call forgotten");
  Message reply = std::move(it->second.reply);
  pending_.erase(it);
  absl::Status st = ReplyStatus(reply.header);
  if (!st.ok()) return st;
  return reply;
}

absl::StatusOr<size_t> Client::WaitAny(absl::Span<const CallId> ids, absl::Duration timeout) {
  absl::MutexLock l(&mu_);
  size_t which = ids.size();
  auto any = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (size_t i = 0; i < ids.size(); ++i) {
      auto it = pending_.find(ids[i]);
      if (it == pending_.end() || it->second.done) {
        which = i;
        return true;
      }
    }
    return false;
  };
  if (!mu_.AwaitWithTimeout(absl::Condition(&any), timeout)) {
    return absl::DeadlineExceededError(absl::StrCat("no reply within ", absl::FormatDuration(timeout)));
  }
  return which;
}

bool Client::Done(CallId id) {
  absl::MutexLock l(&mu_);
  auto it = pending_.find(id);
  return it == pending_.end() || it->second.done;
}

absl::StatusOr<Message> Client::Call(PeerId peer, Message request, absl::Duration timeout) {
  return Wait(Start(peer, std::move(request)), timeout);
}

void Client::Forget(CallId id) {
  absl::MutexLock l(&mu_);
  pending_.erase(id);
}

void Client::SetUnsolicitedHandler(std::function<void(Message&&)> handler) {
  absl::MutexLock l(&mu_);
  unsolicited_ = std::move(handler);
}

}  // namespace ember::net
