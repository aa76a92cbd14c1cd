// Client: many requests in flight to many peers over one Transport, from any
// thread. A background I/O thread owns the transport; Start() hands it a
// request and returns a call id at once; Wait()/WaitAny() block until replies
// arrive. Messages that are not replies to a pending call (for example a
// SHUTDOWN pushed by the scheduler) go to the unsolicited handler.
//
// Thread safety: every method may be called from any thread.
#ifndef EMBER_NET_CLIENT_H_
#define EMBER_NET_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "net/transport.h"

namespace ember::net {

// The status an error reply stands for; OK for a successful reply. The
// message names the command and the peer's explanation.
absl::Status ReplyStatus(const proto::Header& reply);

class Client {
 public:
  using CallId = uint64_t;

  // Takes ownership of `transport` (which must be unused so far) and starts
  // the I/O thread.
  static std::unique_ptr<Client> Create(std::unique_ptr<Transport> transport);
  // Stops the I/O thread. Pending calls complete with CANCELLED.
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Opens a connection (runs on the I/O thread; blocks until done).
  // `peer_role`: what the bound node is (Transport::Connect).
  [[nodiscard]] absl::StatusOr<PeerId> Connect(const std::string& endpoint,
                                               proto::Role peer_role = proto::ROLE_UNSPECIFIED);

  // Sends `request` to `peer` with a fresh request id and returns at once.
  // The request's header.request_id is overwritten.
  CallId Start(PeerId peer, Message request);

  // Sends a message that expects no reply.
  void SendOneWay(PeerId peer, Message message);

  // Blocks until the reply to `id` arrives or `timeout` passes. Consumes the
  // call. An error reply becomes a non-OK status naming the command;
  // DEADLINE_EXCEEDED on timeout (the call is then forgotten).
  [[nodiscard]] absl::StatusOr<Message> Wait(CallId id, absl::Duration timeout = absl::InfiniteDuration());

  // Blocks until any of `ids` has a reply; returns its index in `ids` without
  // consuming it (Wait on it next). DEADLINE_EXCEEDED on timeout.
  [[nodiscard]] absl::StatusOr<size_t> WaitAny(absl::Span<const CallId> ids,
                                               absl::Duration timeout = absl::InfiniteDuration());

  // True if the reply to `id` has arrived.
  bool Done(CallId id);

  // Start + Wait.
  [[nodiscard]] absl::StatusOr<Message> Call(PeerId peer, Message request,
                                             absl::Duration timeout = absl::InfiniteDuration());

  // Drops interest in a call; a late reply is discarded.
  void Forget(CallId id);

  // Called on the I/O thread for each message that answers no pending call.
  // Must not block for long. Set it before the first message can arrive.
  void SetUnsolicitedHandler(std::function<void(Message&&)> handler);

 private:
  explicit Client(std::unique_ptr<Transport> transport);
  void Loop();

  struct Pending {
    bool done = false;
    Message reply;
  };

  std::unique_ptr<Transport> transport_;
  std::thread io_;

  absl::Mutex mu_;
  CallId next_id_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<CallId, Pending> pending_ ABSL_GUARDED_BY(mu_);
  std::vector<std::function<void(Transport*)>> tasks_ ABSL_GUARDED_BY(mu_);
  std::function<void(Message&&)> unsolicited_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace ember::net

#endif  // EMBER_NET_CLIENT_H_
