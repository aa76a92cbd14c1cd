// A real server process receives malformed messages from a raw ZeroMQ
// socket: each gets an error reply, and the server keeps serving.
#include <zmq.hpp>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "net/transport.h"
#include "proto/wire.pb.h"
#include "scheduler/scheduler_client.h"
#include "tests/cluster_harness.h"

namespace ember::testing {
namespace {

class RawPeer {
 public:
  explicit RawPeer(const std::string& endpoint) : sock_(ctx_, zmq::socket_type::dealer) {
    sock_.set(zmq::sockopt::linger, 0);
    sock_.set(zmq::sockopt::rcvtimeo, 10000);
    sock_.connect(endpoint);
  }
  void Send(const proto::Header& h, const std::vector<std::string>& frames) {
    SendRaw(h.SerializeAsString(), frames);
  }
  void SendRaw(const std::string& first, const std::vector<std::string>& frames) {
    sock_.send(zmq::buffer(first), frames.empty() ? zmq::send_flags::none : zmq::send_flags::sndmore);
    for (size_t i = 0; i < frames.size(); ++i) {
      sock_.send(zmq::buffer(frames[i]), i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
  }
  // The reply's header and data frames.
  bool Recv(proto::Header* h, std::vector<std::string>* frames) {
    zmq::message_t m;
    if (!sock_.recv(m)) return false;
    if (!h->ParseFromArray(m.data(), m.size())) return false;
    frames->clear();
    while (m.more()) {
      (void)sock_.recv(m);
      frames->push_back(m.to_string());
    }
    return true;
  }

 private:
  zmq::context_t ctx_;
  zmq::socket_t sock_;
};

std::string Keys(std::vector<uint64_t> k) { return std::string(reinterpret_cast<char*>(k.data()), k.size() * 8); }

TEST(BadMessageTest, ServerAnswersMalformedMessagesWithErrorsAndKeepsServing) {
  TempDir tmp;
  const std::string data = tmp.path() + "/data";
  ASSERT_TRUE(GenerateData(data, {"--train_rows=1000", "--test_rows=100", "--train_files=1", "--test_files=1"}));
  const int port = FreePort();
  const std::string sched_ep = absl::StrCat("tcp://127.0.0.1:", port);
  Process scheduler({EmberBinary(), "scheduler", "--config=" + SourceDir() + "/examples/local.conf",
                     absl::StrCat("--port=", port), "--num_servers=1", "--num_workers=1", "--data_dir=" + data},
                    tmp.path() + "/scheduler.log");
  Process server({EmberBinary(), "server", "--scheduler=" + sched_ep}, tmp.path() + "/server.log");

  // This test is the job's worker: it registers, learns the server's endpoint, and then misbehaves.
  scheduler::SchedulerClientOptions o;
  o.scheduler_endpoint = sched_ep;
  o.self.set_role(proto::WORKER);
  auto control = scheduler::SchedulerClient::Create(o, std::move(*net::CreateTransport({})));
  ASSERT_TRUE(control.ok());
  auto reg = (*control)->Register();
  ASSERT_TRUE(reg.ok()) << reg.status() << ReadFile(tmp.path() + "/scheduler.log");
  (*control)->StartHeartbeats(absl::Milliseconds(500), absl::Seconds(10));
  std::string server_ep;
  for (const auto& n : reg->cluster().nodes()) {
    if (n.role() == proto::SERVER) server_ep = n.endpoint();
  }
  ASSERT_FALSE(server_ep.empty());
  const uint32_t dim = reg->cluster().config().tables(0).dim();
  RawPeer peer(server_ep);
  proto::Header h;
  std::vector<std::string> frames;

  auto pull = [&](uint32_t table, uint64_t num_keys) {
    proto::Header p;
    p.set_command(proto::PULL);
    p.set_request_id(7);
    p.set_table(table);
    p.set_dim(dim);
    p.set_num_keys(num_keys);
    return p;
  };

  // Garbage instead of a header.
  peer.SendRaw("\x0a\xff\xff garbage", {});
  ASSERT_TRUE(peer.Recv(&h, &frames));
  EXPECT_EQ(h.error(), proto::BAD_HEADER);
  // Wrong frame count.
  peer.Send(pull(0, 2), {Keys({1, 2}), "extra"});
  ASSERT_TRUE(peer.Recv(&h, &frames));
  EXPECT_EQ(h.error(), proto::BAD_FRAMES) << h.error_message();
  EXPECT_EQ(h.request_id(), 7u);
  // Unknown table.
  peer.Send(pull(99, 2), {Keys({1, 2})});
  ASSERT_TRUE(peer.Recv(&h, &frames));
  EXPECT_EQ(h.error(), proto::UNKNOWN_TABLE) << h.error_message();
  // Truncated key bytes.
  peer.Send(pull(0, 2), {Keys({1, 2}).substr(0, 13)});
  ASSERT_TRUE(peer.Recv(&h, &frames));
  EXPECT_EQ(h.error(), proto::BAD_SIZE) << h.error_message();
  // A push whose gradient frame does not match num_keys x dim.
  proto::Header push = pull(0, 2);
  push.set_command(proto::PUSH);
  peer.Send(push, {Keys({1, 2}), std::string(4 * dim, '\0')});
  ASSERT_TRUE(peer.Recv(&h, &frames));
  EXPECT_EQ(h.error(), proto::BAD_SIZE) << h.error_message();
  // A command a server does not serve.
  proto::Header odd;
  odd.set_command(static_cast<proto::Command>(77));
  peer.Send(odd, {});
  ASSERT_TRUE(peer.Recv(&h, &frames));
  EXPECT_EQ(h.error(), proto::UNKNOWN_COMMAND) << h.error_message();

  // Still alive and serving: a well-formed pull of one key works.
  EXPECT_TRUE(server.Running());
  proto::Header ping;
  ping.set_command(proto::PING);
  ping.set_request_id(9);
  peer.Send(ping, {});
  ASSERT_TRUE(peer.Recv(&h, &frames));
  EXPECT_EQ(h.error(), proto::OK);
  EXPECT_EQ(h.request_id(), 9u);
  const std::string slog = ReadFile(tmp.path() + "/server.log");
  EXPECT_NE(slog.find("rejected PULL"), std::string::npos) << slog;

  // End the job; everyone stops.
  (*control)->Leave("test over", true);
  EXPECT_NE(scheduler.Wait(absl::Seconds(30)), -1);
  EXPECT_NE(server.Wait(absl::Seconds(30)), -1);
}

}  // namespace
}  // namespace ember::testing
