#include "net/transport.h"

#include <zmq.hpp>

#include "gtest/gtest.h"

namespace ember::net {
namespace {

class TransportTest : public ::testing::TestWithParam<TransportOptions::Kind> {
 protected:
  std::unique_ptr<Transport> Make() {
    TransportOptions o;
    o.kind = GetParam();
    o.hub = &hub_;
    o.linger_ms = 0;
    auto t = CreateTransport(o);
    EXPECT_TRUE(t.ok()) << t.status();
    return std::move(*t);
  }
  std::string Endpoint() {
    return GetParam() == TransportOptions::Kind::kZmq ? "tcp://127.0.0.1:0" : "inproc://server";
  }
  InprocHub hub_;
};

Message Recv(Transport& t) {
  Message m;
  absl::StatusOr<bool> got = t.Recv(&m, absl::Seconds(10));
  EXPECT_TRUE(got.ok() && *got);
  return m;
}

TEST_P(TransportTest, RequestAndReplyCarryHeaderAndFrames) {
  auto server = Make();
  auto client = Make();
  auto ep = server->Bind(Endpoint());
  ASSERT_TRUE(ep.ok()) << ep.status();
  auto peer = client->Connect(*ep);
  ASSERT_TRUE(peer.ok()) << peer.status();

  std::vector<uint64_t> keys(1000);
  for (size_t i = 0; i < keys.size(); ++i) keys[i] = i * 7919;
  Message req;
  req.peer = *peer;
  req.header.set_command(proto::PULL);
  req.header.set_request_id(42);
  req.header.set_num_keys(keys.size());
  req.frames.push_back(Frame::FromVector(std::move(keys)));
  ASSERT_TRUE(client->Send(std::move(req)).ok());

  Message got = Recv(*server);
  EXPECT_EQ(got.header.command(), proto::PULL);
  EXPECT_EQ(got.header.request_id(), 42u);
  ASSERT_EQ(got.frames.size(), 1u);
  got.frames[0].Align<uint64_t>();
  auto k = got.frames[0].As<uint64_t>();
  ASSERT_EQ(k.size(), 1000u);
  EXPECT_EQ(k[999], 999u * 7919);

  Message reply = MakeReply(got);
  std::vector<float> vals(1000, 1.5f);
  reply.frames.push_back(Frame::FromVector(std::move(vals)));
  ASSERT_TRUE(server->Send(std::move(reply)).ok());
  Message r = Recv(*client);
  EXPECT_TRUE(r.header.is_reply());
  EXPECT_EQ(r.peer, *peer);
  EXPECT_EQ(r.frames[0].size(), 4000u);
}

TEST_P(TransportTest, PostFromAnotherThreadIsDelivered) {
  auto server = Make();
  auto client = Make();
  auto ep = server->Bind(Endpoint());
  ASSERT_TRUE(ep.ok());
  auto peer = client->Connect(*ep);
  ASSERT_TRUE(peer.ok());
  std::thread t([&] {
    Message m;
    m.peer = *peer;
    m.header.set_command(proto::PING);
    client->Post(std::move(m));
  });
  t.join();
  // The client's owner thread flushes posted messages inside Recv.
  Message none;
  (void)client->Recv(&none, absl::Milliseconds(50));
  Message got = Recv(*server);
  EXPECT_EQ(got.header.command(), proto::PING);
}

TEST_P(TransportTest, WakeInterruptsRecv) {
  auto t = Make();
  std::thread waker([&] {
    absl::SleepFor(absl::Milliseconds(50));
    t->Wake();
  });
  Message m;
  absl::Time start = absl::Now();
  auto got = t->Recv(&m, absl::Seconds(30));
  waker.join();
  ASSERT_TRUE(got.ok());
  EXPECT_FALSE(*got);
  EXPECT_LT(absl::Now() - start, absl::Seconds(20));
}

TEST_P(TransportTest, SendToUnknownPeerFails) {
  auto t = Make();
  Message m;
  m.peer = 12345;
  EXPECT_FALSE(t->Send(std::move(m)).ok());
}

INSTANTIATE_TEST_SUITE_P(Kinds, TransportTest,
                         ::testing::Values(TransportOptions::Kind::kZmq, TransportOptions::Kind::kInproc));

TEST(ZmqTransportTest, GarbageHeaderGetsErrorReplyAndServerContinues) {
  TransportOptions o;
  o.linger_ms = 0;
  auto server = CreateTransport(o);
  ASSERT_TRUE(server.ok());
  auto ep = (*server)->Bind("tcp://127.0.0.1:0");
  ASSERT_TRUE(ep.ok());

  zmq::context_t ctx;
  zmq::socket_t raw(ctx, zmq::socket_type::dealer);
  raw.set(zmq::sockopt::linger, 0);
  raw.connect(*ep);
  const char junk[] = "\xff\xff\xff\xff not a protobuf";
  raw.send(zmq::buffer(junk, sizeof(junk)), zmq::send_flags::none);

  Message m;
  auto got = (*server)->Recv(&m, absl::Milliseconds(500));
  ASSERT_TRUE(got.ok());
  EXPECT_FALSE(*got);  // dropped, not returned
  raw.set(zmq::sockopt::rcvtimeo, 5000);
  zmq::message_t reply;
  ASSERT_TRUE(raw.recv(reply));
  proto::Header h;
  ASSERT_TRUE(h.ParseFromArray(reply.data(), reply.size()));
  EXPECT_EQ(h.error(), proto::BAD_HEADER);

  // Still serving.
  proto::Header ping;
  ping.set_command(proto::PING);
  std::string bytes = ping.SerializeAsString();
  raw.send(zmq::buffer(bytes), zmq::send_flags::none);
  Message m2;
  got = (*server)->Recv(&m2, absl::Seconds(5));
  ASSERT_TRUE(got.ok() && *got);
  EXPECT_EQ(m2.header.command(), proto::PING);
}

// A part larger than max_message_bytes never reaches the node: ZeroMQ drops
// the peer before allocating it, and the node goes on serving others.
TEST(ZmqTransportTest, OversizedMessageIsDroppedAndServerContinues) {
  TransportOptions o;
  o.linger_ms = 0;
  o.max_message_bytes = 1 << 20;
  auto server = CreateTransport(o);
  ASSERT_TRUE(server.ok());
  auto ep = (*server)->Bind("tcp://127.0.0.1:0");
  ASSERT_TRUE(ep.ok());

  zmq::context_t ctx;
  zmq::socket_t big(ctx, zmq::socket_type::dealer);
  big.set(zmq::sockopt::linger, 0);
  big.connect(*ep);
  proto::Header pull;
  pull.set_command(proto::PULL);
  pull.set_num_keys(uint64_t{1} << 18);  // 2 MiB of keys
  const std::string header = pull.SerializeAsString();
  std::string keys((size_t{1} << 18) * 8, '\0');
  big.send(zmq::buffer(header), zmq::send_flags::sndmore);
  big.send(zmq::buffer(keys), zmq::send_flags::none);
  Message m;
  auto got = (*server)->Recv(&m, absl::Milliseconds(500));
  ASSERT_TRUE(got.ok());
  EXPECT_FALSE(*got) << "a 2 MiB part passed a 1 MiB limit";

  zmq::socket_t small(ctx, zmq::socket_type::dealer);
  small.set(zmq::sockopt::linger, 0);
  small.connect(*ep);
  proto::Header ping;
  ping.set_command(proto::PING);
  const std::string bytes = ping.SerializeAsString();
  small.send(zmq::buffer(bytes), zmq::send_flags::none);
  got = (*server)->Recv(&m, absl::Seconds(5));
  ASSERT_TRUE(got.ok() && *got);
  EXPECT_EQ(m.header.command(), proto::PING);
}

}  // namespace
}  // namespace ember::net
