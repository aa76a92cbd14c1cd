// What multi-process tests use to talk to real nodes by hand: RawPeer, a
// bare ZeroMQ DEALER that sends any bytes (a hostile or broken peer), with
// CURVE keys or without; and JoinAsWorker, which registers the test itself
// as a job's worker so it can drive the servers directly.
#ifndef EMBER_TESTS_RAW_PEER_H_
#define EMBER_TESTS_RAW_PEER_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <zmq.hpp>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "net/security.h"
#include "net/transport.h"
#include "proto/wire.pb.h"
#include "scheduler/scheduler_client.h"

namespace ember::testing {

class RawPeer {
 public:
  // Connects to `endpoint`. With `self` non-empty it runs CURVE as that key
  // pair, trusting `server_key` for the bound node. A receive (and, since a
  // DEALER whose handshake failed has nowhere to send, a send) gives up
  // after `timeout`.
  explicit RawPeer(const std::string& endpoint, absl::Duration timeout = absl::Seconds(30),
                   const net::KeyPair& self = {}, const std::string& server_key = "");
  // Sends the header and frames; false if it could not be sent in time.
  bool Send(const proto::Header& h, const std::vector<std::string>& frames = {});
  // Sends `first` as frame 0 as it is (it need not parse), then `frames`.
  bool SendRaw(const std::string& first, const std::vector<std::string>& frames = {});
  // The next reply's header and data frames; false on timeout or if frame 0
  // does not parse.
  bool Recv(proto::Header* h, std::vector<std::string>* frames);
  // Send, then Recv: the reply's header, or nullopt if none came.
  std::optional<proto::Header> Call(const proto::Header& h, const std::vector<std::string>& frames = {});
  void SetTimeout(absl::Duration d);

 private:
  zmq::context_t ctx_;
  zmq::socket_t sock_;
};

// The test as a job's (only missing) worker: registered, heartbeating, and
// knowing the servers' endpoints by rank.
struct JoinedWorker {
  std::unique_ptr<scheduler::SchedulerClient> control;
  proto::RegisterReply registration;
  std::vector<std::string> server_endpoints;  // by rank
};

// Registers with the scheduler at `scheduler_endpoint` over a transport made
// from `transport` (e.g. with CURVE keys), presenting `job_token`; blocks
// until the job's registration completes.
[[nodiscard]] absl::StatusOr<JoinedWorker> JoinAsWorker(const std::string& scheduler_endpoint,
                                                        const net::TransportOptions& transport = {},
                                                        const std::string& job_token = "");

// uint64 keys as the bytes of a keys frame.
std::string KeyBytes(const std::vector<uint64_t>& keys);

}  // namespace ember::testing

#endif  // EMBER_TESTS_RAW_PEER_H_
