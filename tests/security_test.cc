// CURVE and roles against real processes (docs/security.md): a job whose
// nodes all have keys trains to its final line, and peers without a key,
// with a key that is not authorised, or with a key of the wrong role cannot
// register, pull, push or send admin commands.
#include <stdlib.h>

#include <zmq.hpp>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "net/security.h"
#include "net/transport.h"
#include "proto/wire.pb.h"
#include "scheduler/scheduler_client.h"
#include "tests/cluster_harness.h"

namespace ember::testing {
namespace {

// A DEALER that speaks ember's frames, with CURVE keys or without.
class Peer {
 public:
  // `self` empty: no CURVE. `server_key`: the bound node's public key.
  Peer(const std::string& endpoint, const net::KeyPair& self, const std::string& server_key)
      : sock_(ctx_, zmq::socket_type::dealer) {
    sock_.set(zmq::sockopt::linger, 0);
    sock_.set(zmq::sockopt::rcvtimeo, 1500);
    // A DEALER whose handshake failed has no pipe, and a send would block.
    sock_.set(zmq::sockopt::sndtimeo, 1500);
    if (!self.public_key.empty()) {
      sock_.set(zmq::sockopt::curve_serverkey, server_key);
      sock_.set(zmq::sockopt::curve_publickey, self.public_key);
      sock_.set(zmq::sockopt::curve_secretkey, self.secret_key);
    }
    sock_.connect(endpoint);
  }
  // Sends and returns the reply header, or nullopt if none came in 1.5 s.
  std::optional<proto::Header> Call(const proto::Header& h, const std::vector<std::string>& frames = {}) {
    const std::string first = h.SerializeAsString();
    if (!sock_.send(zmq::buffer(first), frames.empty() ? zmq::send_flags::none : zmq::send_flags::sndmore)) {
      return std::nullopt;  // no connection to send on: refused
    }
    for (size_t i = 0; i < frames.size(); ++i) {
      sock_.send(zmq::buffer(frames[i]), i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
    zmq::message_t m;
    if (!sock_.recv(m)) return std::nullopt;
    proto::Header r;
    if (!r.ParseFromArray(m.data(), m.size())) return std::nullopt;
    while (m.more()) (void)sock_.recv(m);
    return r;
  }

 private:
  zmq::context_t ctx_;
  zmq::socket_t sock_;
};

net::KeyPair Pair(const std::string& dir, const std::string& role) {
  absl::StatusOr<net::KeyPair> kp = net::ReadKeyPair(absl::StrCat(dir, "/", role, ".key"));
  EXPECT_TRUE(kp.ok()) << kp.status();
  return kp.ok() ? *kp : net::KeyPair{};
}

proto::Header Command(proto::Command c) {
  proto::Header h;
  h.set_command(c);
  h.set_request_id(5);
  return h;
}

proto::Header Register(proto::Role role, const std::string& token) {
  proto::Header h = Command(proto::REGISTER);
  h.mutable_register_request()->mutable_node()->set_role(role);
  h.mutable_register_request()->mutable_node()->set_endpoint("tcp://127.0.0.1:1");
  h.mutable_register_request()->set_job_token(token);
  return h;
}

std::string Keys(std::vector<uint64_t> k) { return std::string(reinterpret_cast<char*>(k.data()), k.size() * 8); }

uint64_t Rows(const proto::ServerStatsProto& s) {
  uint64_t n = 0;
  for (const auto& t : s.tables()) n += t.resident_rows();
  return n;
}

bool Keygen(const std::string& dir) {
  Process p({EmberBinary(), "keygen", "--out=" + dir}, dir + ".log");
  return p.Wait(absl::Seconds(30)) == 0;
}

TEST(SecurityTest, PeersWithoutTheRightKeyCannotRegisterPullPushOrAdminister) {
  TempDir tmp;
  const std::string keys = tmp.path() + "/keys", foreign = tmp.path() + "/foreign";
  ASSERT_TRUE(Keygen(keys)) << ReadFile(keys + ".log");
  ASSERT_TRUE(Keygen(foreign)) << ReadFile(foreign + ".log");
  // keygen never overwrites.
  EXPECT_FALSE(Keygen(keys));
  EXPECT_NE(ReadFile(keys + ".log").find("never overwritten"), std::string::npos) << ReadFile(keys + ".log");
  const std::string token = "test-token-5f1c";
  setenv("EMBER_JOB_TOKEN", token.c_str(), 1);
  const std::string data = tmp.path() + "/data";
  ASSERT_TRUE(GenerateData(data, {"--train_rows=1000", "--test_rows=100", "--train_files=1", "--test_files=1"}));
  const int port = FreePort();
  const std::string sched_ep = absl::StrCat("tcp://127.0.0.1:", port);
  Process scheduler({EmberBinary(), "scheduler", "--config=" + SourceDir() + "/examples/local.conf",
                     absl::StrCat("--port=", port), "--num_servers=1", "--num_workers=1", "--data_dir=" + data,
                     "--keys_dir=" + keys},
                    tmp.path() + "/scheduler.log");
  Process server({EmberBinary(), "server", "--scheduler=" + sched_ep, "--keys_dir=" + keys},
                 tmp.path() + "/server.log");
  unsetenv("EMBER_JOB_TOKEN");

  absl::StatusOr<net::SecurityOptions> admin = net::LoadSecurity(keys, proto::ADMIN);
  ASSERT_TRUE(admin.ok()) << admin.status();
  const std::string scheduler_key = *admin->KeyOf(proto::SCHEDULER);
  const std::string server_key = *admin->KeyOf(proto::SERVER);
  const net::KeyPair none, worker = Pair(keys, "worker"), server_pair = Pair(keys, "server");
  const net::KeyPair stranger = Pair(foreign, "worker");

  // Before the job is complete: strangers cannot take the worker's place.
  {
    Peer plain(sched_ep, none, "");
    EXPECT_FALSE(plain.Call(Register(proto::WORKER, token))) << "a peer without CURVE was answered";
    Peer unknown(sched_ep, stranger, scheduler_key);
    EXPECT_FALSE(unknown.Call(Register(proto::WORKER, token))) << "a key not in authorized_keys was answered";
    Peer wrong_role(sched_ep, worker, scheduler_key);
    std::optional<proto::Header> r = wrong_role.Call(Register(proto::SERVER, token));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->error(), proto::UNAUTHORIZED) << r->error_message();
    EXPECT_NE(r->error_message().find("registering as server"), std::string::npos) << r->error_message();
    Peer server_key_as_worker(sched_ep, server_pair, scheduler_key);
    r = server_key_as_worker.Call(Register(proto::WORKER, token));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->error(), proto::UNAUTHORIZED) << r->error_message();
    // The right key, the wrong job.
    Peer wrong_job(sched_ep, worker, scheduler_key);
    r = wrong_job.Call(Register(proto::WORKER, "another-job"));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->error(), proto::BAD_REQUEST);
    EXPECT_NE(r->error_message().find("job token"), std::string::npos) << r->error_message();
    // A rank that is taken (the server registered as rank 0).
    proto::Header taken = Register(proto::SERVER, token);
    taken.mutable_register_request()->set_rank(0);
    Peer second_server(sched_ep, server_pair, scheduler_key);
    r = second_server.Call(taken);
    ASSERT_TRUE(r);
    EXPECT_NE(r->error_message().find("rank 0 is taken"), std::string::npos) << r->error_message();
  }

  // The test is the job's worker, with the worker key and the token.
  net::TransportOptions to;
  to.security = *net::LoadSecurity(keys, proto::WORKER);
  scheduler::SchedulerClientOptions o;
  o.scheduler_endpoint = sched_ep;
  o.self.set_role(proto::WORKER);
  o.job_token = token;
  auto control = scheduler::SchedulerClient::Create(o, std::move(*net::CreateTransport(to)));
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
  proto::Header pull = Command(proto::PULL);
  pull.set_table(0);
  pull.set_dim(dim);
  pull.set_num_keys(2);
  pull.set_incarnation(reg->cluster().incarnation());
  proto::Header push = pull;
  push.set_command(proto::PUSH);
  const std::string grads(2 * dim * sizeof(float), '\0');
  const std::vector<proto::Command> admin_commands = {proto::SAVE,        proto::RESTORE, proto::LIST_CHECKPOINTS,
                                                      proto::RESET_TABLE, proto::SWEEP,   proto::STATS};
  auto admin_command = [](proto::Command c) {
    proto::Header h = Command(c);
    if (c == proto::SAVE) h.mutable_save()->set_dir("ckpt-x");
    if (c == proto::RESTORE) h.mutable_restore()->set_dir("ckpt-x");
    return h;
  };

  // No key, or a key the job does not list: no answer at all.
  for (const net::KeyPair* kp : {&none, &stranger}) {
    Peer p(server_ep, *kp, server_key);
    EXPECT_FALSE(p.Call(pull, {Keys({1, 2})}));
    EXPECT_FALSE(p.Call(push, {Keys({1, 2}), grads}));
    EXPECT_FALSE(p.Call(Command(proto::STATS)));
  }
  // A worker's key: data yes, admin no.
  {
    Peer p(server_ep, worker, server_key);
    std::optional<proto::Header> r = p.Call(pull, {Keys({1, 2})});
    ASSERT_TRUE(r);
    EXPECT_EQ(r->error(), proto::OK) << r->error_message();
    for (proto::Command c : admin_commands) {
      r = p.Call(admin_command(c));
      ASSERT_TRUE(r) << proto::Command_Name(c);
      EXPECT_EQ(r->error(), proto::UNAUTHORIZED) << proto::Command_Name(c) << ": " << r->error_message();
    }
  }
  // An admin's key: admin yes, data no. A server's key: neither.
  {
    Peer p(server_ep, Pair(keys, "admin"), server_key);
    std::optional<proto::Header> r = p.Call(Command(proto::STATS));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->error(), proto::OK) << r->error_message();
    EXPECT_EQ(r->stats_reply().pulls(), 1u) << "only the worker's pull was served";
    EXPECT_EQ(r->stats_reply().pushes(), 0u);
    EXPECT_EQ(Rows(r->stats_reply()), 2u) << "only the worker's pull made rows";
    for (const proto::Header* h : {&pull, &push}) {
      r = p.Call(*h, h == &pull ? std::vector<std::string>{Keys({3, 4})} : std::vector<std::string>{Keys({3, 4}), grads});
      ASSERT_TRUE(r);
      EXPECT_EQ(r->error(), proto::UNAUTHORIZED) << r->error_message();
    }
    Peer s(server_ep, server_pair, server_key);
    r = s.Call(push, {Keys({3, 4}), grads});
    ASSERT_TRUE(r);
    EXPECT_EQ(r->error(), proto::UNAUTHORIZED) << r->error_message();
    r = s.Call(admin_command(proto::RESET_TABLE));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->error(), proto::UNAUTHORIZED) << r->error_message();
    r = p.Call(Command(proto::STATS));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->stats_reply().pulls(), 1u) << "a refused request was served";
    EXPECT_EQ(r->stats_reply().pushes(), 0u) << "a refused push was served";
    EXPECT_EQ(Rows(r->stats_reply()), 2u) << "a refused request changed the server";
  }
  EXPECT_TRUE(server.Running());
  EXPECT_TRUE(scheduler.Running());
  const std::string slog = ReadFile(tmp.path() + "/server.log");
  EXPECT_NE(slog.find("refused a connection"), std::string::npos) << slog;
  EXPECT_NE(slog.find("not in authorized_keys"), std::string::npos) << slog;

  (*control)->Leave("test over", true);
  EXPECT_NE(scheduler.Wait(absl::Seconds(30)), -1);
  EXPECT_NE(server.Wait(absl::Seconds(30)), -1);
}

TEST(SecurityTest, JobWithKeysTrainsToItsFinalLine) {
  TempDir tmp;
  const std::string keys = tmp.path() + "/keys";
  ASSERT_TRUE(Keygen(keys));
  const std::string data = tmp.path() + "/data";
  ASSERT_TRUE(GenerateData(data, {"--train_rows=60000", "--test_rows=10000"}));
  Cluster c(tmp.path(), SourceDir() + "/examples/local.conf", 2, 2,
            {"--data_dir=" + data, "--epochs=1", "--keys_dir=" + keys}, {}, {"--keys_dir=" + keys});
  ASSERT_TRUE(c.WaitAll(absl::Minutes(5))) << ReadFile(tmp.path() + "/scheduler.log");
  EXPECT_EQ(c.scheduler().Wait(absl::ZeroDuration()), 0) << ReadFile(tmp.path() + "/scheduler.log");
  const auto result = c.Result();
  ASSERT_TRUE(result.count("auc")) << ReadFile(tmp.path() + "/scheduler.log");
  EXPECT_GT(std::stod(result.at("auc")), 0.7);
}

TEST(SecurityTest, PlainTcpOnANonLoopbackAddressNeedsKeysOrInsecure) {
  TempDir tmp;
  Process s({EmberBinary(), "server", "--scheduler=tcp://127.0.0.1:1", "--host=0.0.0.0"}, tmp.path() + "/s.log");
  EXPECT_EQ(s.Wait(absl::Seconds(30)), 1);
  const std::string log = ReadFile(tmp.path() + "/s.log");
  EXPECT_NE(log.find("flag --host: 0.0.0.0 is not a loopback address"), std::string::npos) << log;
  EXPECT_NE(log.find("--insecure"), std::string::npos) << log;
}

}  // namespace
}  // namespace ember::testing
