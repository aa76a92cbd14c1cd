#include "net/client.h"

#include <atomic>

#include "gtest/gtest.h"

namespace ember::net {
namespace {

// Error replies become statuses a caller can act on; a refusal for lack of
// memory is RESOURCE_EXHAUSTED (the worker fails the job with its message).
TEST(ReplyStatusTest, ErrorCodesMapToStatusCodes) {
  proto::Header h;
  h.set_command(proto::PULL);
  EXPECT_TRUE(ReplyStatus(h).ok());
  h.set_error(proto::RESOURCE_EXHAUSTED);
  h.set_error_message("raise storage.max_resident_bytes");
  absl::Status st = ReplyStatus(h);
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
  EXPECT_NE(st.message().find("RESOURCE_EXHAUSTED"), std::string::npos) << st;
  EXPECT_NE(st.message().find("storage.max_resident_bytes"), std::string::npos) << st;
  h.set_error(proto::BAD_SIZE);
  EXPECT_EQ(ReplyStatus(h).code(), absl::StatusCode::kInvalidArgument);
}

// Echo server on its own thread: replies to PING with the request's clock,
// after a delay of `clock` milliseconds, so replies come back out of order.
class EchoServer {
 public:
  explicit EchoServer(InprocHub* hub, const std::string& ep) {
    TransportOptions o;
    o.kind = TransportOptions::Kind::kInproc;
    o.hub = hub;
    t_ = std::move(*CreateTransport(o));
    EXPECT_TRUE(t_->Bind(ep).ok());
    thread_ = std::thread([this] {
      std::vector<std::pair<absl::Time, Message>> later;
      while (!stop_) {
        Message m;
        auto got = t_->Recv(&m, absl::Milliseconds(1));
        if (got.ok() && *got) {
          Message r = MakeReply(m);
          r.header.set_clock(m.header.clock());
          if (m.header.clock() == 999) {
            r = MakeErrorReply(m, proto::UNKNOWN_TABLE, "no table 7");
          }
          later.emplace_back(absl::Now() + absl::Milliseconds(m.header.clock() % 100), std::move(r));
        }
        for (auto it = later.begin(); it != later.end();) {
          if (it->first <= absl::Now()) {
            (void)t_->Send(std::move(it->second));
            it = later.erase(it);
          } else {
            ++it;
          }
        }
      }
    });
  }
  ~EchoServer() {
    stop_ = true;
    thread_.join();
  }

 private:
  std::unique_ptr<Transport> t_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
};

Message Ping(uint64_t clock) {
  Message m;
  m.header.set_command(proto::PING);
  m.header.set_clock(clock);
  return m;
}

TEST(ClientTest, ManyCallsInFlightToManyServersFromManyThreads) {
  InprocHub hub;
  EchoServer a(&hub, "inproc://a"), b(&hub, "inproc://b");
  TransportOptions o;
  o.kind = TransportOptions::Kind::kInproc;
  o.hub = &hub;
  auto client = Client::Create(std::move(*CreateTransport(o)));
  auto pa = client->Connect("inproc://a");
  auto pb = client->Connect("inproc://b");
  ASSERT_TRUE(pa.ok() && pb.ok());

  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::vector<Client::CallId> ids;
      for (int i = 0; i < 50; ++i) ids.push_back(client->Start(i % 2 ? *pa : *pb, Ping(t * 1000 + 50 - i)));
      // Later calls have shorter delays: WaitAny sees them complete out of order.
      auto first = client->WaitAny(ids, absl::Seconds(10));
      ASSERT_TRUE(first.ok());
      for (int i = 0; i < 50; ++i) {
        auto r = client->Wait(ids[i], absl::Seconds(10));
        ASSERT_TRUE(r.ok()) << r.status();
        if (r->header.clock() == static_cast<uint64_t>(t * 1000 + 50 - i)) ++ok;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 200);
}

TEST(ClientTest, ErrorReplyBecomesStatus) {
  InprocHub hub;
  EchoServer a(&hub, "inproc://a");
  TransportOptions o;
  o.kind = TransportOptions::Kind::kInproc;
  o.hub = &hub;
  auto client = Client::Create(std::move(*CreateTransport(o)));
  auto pa = client->Connect("inproc://a");
  ASSERT_TRUE(pa.ok());
  auto r = client->Call(*pa, Ping(999), absl::Seconds(10));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("no table 7"), std::string::npos);
}

TEST(ClientTest, TimeoutAndConnectFailure) {
  InprocHub hub;
  TransportOptions o;
  o.kind = TransportOptions::Kind::kInproc;
  o.hub = &hub;
  auto silent = CreateTransport(o);
  ASSERT_TRUE((*silent)->Bind("inproc://silent").ok());
  auto client = Client::Create(std::move(*CreateTransport(o)));
  EXPECT_FALSE(client->Connect("inproc://nobody").ok());
  auto p = client->Connect("inproc://silent");
  ASSERT_TRUE(p.ok());
  auto r = client->Call(*p, Ping(1), absl::Milliseconds(100));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded);
}

}  // namespace
}  // namespace ember::net
