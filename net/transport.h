// Transport: message passing between ember nodes. A node binds one endpoint
// that others connect to (a ZeroMQ ROUTER) and opens one connection per peer
// it calls (a DEALER); replies travel back on the connection the request came
// in on. Two implementations: ZeroMQ over TCP/IPC, and an in-process one for
// unit tests (endpoints "inproc://name", delivery through an InprocHub).
//
// Thread safety: a Transport belongs to one thread, its owner, which calls
// Bind, Connect, Send and Recv. Post and Wake may be called from any thread.
#ifndef EMBER_NET_TRANSPORT_H_
#define EMBER_NET_TRANSPORT_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "net/message.h"
#include "net/security.h"

namespace ember::net {

class InprocHub;

struct TransportOptions {
  enum class Kind { kZmq, kInproc };
  Kind kind = Kind::kZmq;
  // kInproc: the hub that connects transports of one process. Not owned; must
  // outlive every transport created with it.
  InprocHub* hub = nullptr;
  // kZmq: I/O threads of the ZeroMQ context. 1 moves ~2-5 GB/s; more helps
  // only with many peers.
  int io_threads = 1;
  // kZmq: milliseconds a closing socket keeps trying to deliver queued
  // messages. Default 2000.
  int linger_ms = 2000;
  // kZmq: the largest message part a socket accepts (ZMQ_MAXMSGSIZE); a peer
  // that sends a larger one is disconnected before the part is allocated, so
  // a header naming 2^30 keys cannot make a node take 8 GiB. The largest part
  // ember sends is a pull reply of max_keys_per_message (256K) x dim floats
  // or an evaluation's scores; 1 GiB leaves room for both. -1: no limit.
  int64_t max_message_bytes = int64_t{1} << 30;
  // kZmq: high-water marks, in messages, of each socket's queue per peer
  // (ZMQ_SNDHWM / ZMQ_RCVHWM). At the receive mark ZeroMQ stops reading that
  // peer's connection (TCP pushes back); a reply that meets the send mark
  // (a peer that does not read its replies) is dropped and logged, so a slow
  // or hostile peer never blocks a node. A worker keeps at most a few
  // hundred requests in flight; 0 = unbounded.
  int send_hwm = 10000;
  int recv_hwm = 10000;
  // kZmq: CURVE keys (net/security.h). Off (default): plain TCP. On: every
  // socket is encrypted, Connect needs the peer's role to pick its key, and
  // the bound socket admits only authorised keys, stamping each message
  // with its sender's role.
  SecurityOptions security;
};

class Transport {
 public:
  virtual ~Transport() = default;
  Transport(const Transport&) = delete;
  Transport& operator=(const Transport&) = delete;

  // Listens on `endpoint` (e.g. "tcp://127.0.0.1:7001"; port 0 or "*" picks a
  // free port). Returns the endpoint others should connect to. At most once.
  [[nodiscard]] virtual absl::StatusOr<std::string> Bind(const std::string& endpoint) = 0;

  // Opens a connection to a bound endpoint; non-blocking (ZeroMQ connects in
  // the background and queues messages meanwhile). With security on,
  // `peer_role` names what the bound node is (SCHEDULER or SERVER): the
  // connection trusts only that role's key, and messages received on it
  // carry that role. Without security it is recorded and otherwise unused.
  [[nodiscard]] virtual absl::StatusOr<PeerId> Connect(const std::string& endpoint,
                                                       proto::Role peer_role = proto::ROLE_UNSPECIFIED) = 0;

  // Sends msg to msg.peer: the header is serialized into the first frame and
  // the data frames go without copying. Fails if the peer is unknown or gone.
  [[nodiscard]] virtual absl::Status Send(Message msg) = 0;

  // Waits up to `timeout` for a message from any peer. Returns true and fills
  // *out, or false on timeout or Wake(). Messages Post()ed from other threads
  // are sent from inside Recv. A message whose header frame does not parse
  // is answered with a BAD_HEADER error reply and logged, never returned.
  [[nodiscard]] virtual absl::StatusOr<bool> Recv(Message* out, absl::Duration timeout) = 0;

  // Thread-safe: queues msg to be sent by the owner thread's next Recv, and
  // wakes it. Send failures are logged.
  virtual void Post(Message msg) = 0;

  // Thread-safe: makes a blocked Recv return false promptly.
  virtual void Wake() = 0;

  // True if every message this transport receives carries an authenticated
  // Message::peer_role (security is on).
  virtual bool authenticates() const { return false; }

  // Thread-safe: connections the bound socket refused (key not authorised,
  // or no CURVE at all). Each is also logged, at a rate limit.
  virtual uint64_t rejected_peers() const { return 0; }

 protected:
  Transport() = default;
};

[[nodiscard]] absl::StatusOr<std::unique_ptr<Transport>> CreateTransport(
    const TransportOptions& options);

// The in-process switchboard: maps "inproc://name" to transports. Create one
// per test and pass it in TransportOptions::hub. Thread-safe.
class InprocHub {
 public:
  InprocHub();
  ~InprocHub();
  InprocHub(const InprocHub&) = delete;
  InprocHub& operator=(const InprocHub&) = delete;

  struct State;
  State* state() const { return state_.get(); }

 private:
  std::unique_ptr<State> state_;
};

}  // namespace ember::net

#endif  // EMBER_NET_TRANSPORT_H_
