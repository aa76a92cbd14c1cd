// CURVE and roles against real processes (docs/security.md): a job whose
// nodes all have keys trains to its final line, and peers without a key,
// with a key that is not authorised, or with a key of the wrong role cannot
// register, pull, push or send admin commands.
#include <stdlib.h>


#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "net/security.h"
#include "net/transport.h"
#include "proto/wire.pb.h"
#include "scheduler/scheduler_client.h"
#include "tests/cluster_harness.h"
#include "tests/raw_peer.h"

namespace ember::testing {
namespace {

// How long a refused peer's request waits for the answer that never comes.
constexpr absl::Duration kNoAnswer = absl::Milliseconds(1500);
// How long an answer may take on a loaded machine.
constexpr absl::Duration kAnswer = absl::Seconds(20);

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
    RawPeer plain(sched_ep, kNoAnswer, none, "");
    EXPECT_FALSE(plain.Call(Register(proto::WORKER, token))) << "a peer without CURVE was answered";
    RawPeer unknown(sched_ep, kNoAnswer, stranger, scheduler_key);
    EXPECT_FALSE(unknown.Call(Register(proto::WORKER, token))) << "a key not in authorized_keys was answered";
    RawPeer wrong_role(sched_ep, kAnswer, worker, scheduler_key);
    std::optional<proto::Header> r = wrong_role.Call(Register(proto::SERVER, token));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->error(), proto::UNAUTHORIZED) << r->error_message();
    EXPECT_NE(r->error_message().find("registering as server"), std::string::npos) << r->error_message();
    RawPeer server_key_as_worker(sched_ep, kAnswer, server_pair, scheduler_key);
    r = server_key_as_worker.Call(Register(proto::WORKER, token));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->error(), proto::UNAUTHORIZED) << r->error_message();
    // The right key, the wrong job.
    RawPeer wrong_job(sched_ep, kAnswer, worker, scheduler_key);
    r = wrong_job.Call(Register(proto::WORKER, "another-job"));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->error(), proto::BAD_REQUEST);
    EXPECT_NE(r->error_message().find("job token"), std::string::npos) << r->error_message();
    // A rank that is taken (the server registered as rank 0).
    proto::Header taken = Register(proto::SERVER, token);
    taken.mutable_register_request()->set_rank(0);
    RawPeer second_server(sched_ep, kAnswer, server_pair, scheduler_key);
    r = second_server.Call(taken);
    ASSERT_TRUE(r);
    EXPECT_NE(r->error_message().find("rank 0 is taken"), std::string::npos) << r->error_message();
  }

  // The test is the job's worker, with the worker key and the token.
  net::TransportOptions to;
  to.security = *net::LoadSecurity(keys, proto::WORKER);
  absl::StatusOr<JoinedWorker> joined = JoinAsWorker(sched_ep, to, token);
  ASSERT_TRUE(joined.ok()) << joined.status() << ReadFile(tmp.path() + "/scheduler.log");
  auto& control = joined->control;
  const proto::RegisterReply* reg = &joined->registration;
  const std::string server_ep = joined->server_endpoints[0];
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

  // A key the job does not list, or no key: no answer at all. (The stranger
  // goes first: a plain peer's retries fill the rate-limited log quickly.)
  for (const net::KeyPair* kp : {&stranger, &none}) {
    RawPeer p(server_ep, kNoAnswer, *kp, server_key);
    EXPECT_FALSE(p.Call(pull, {KeyBytes({1, 2})}));
    EXPECT_FALSE(p.Call(push, {KeyBytes({1, 2}), grads}));
    EXPECT_FALSE(p.Call(Command(proto::STATS)));
  }
  // A worker's key: data yes, admin no.
  {
    RawPeer p(server_ep, kAnswer, worker, server_key);
    std::optional<proto::Header> r = p.Call(pull, {KeyBytes({1, 2})});
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
    RawPeer p(server_ep, kAnswer, Pair(keys, "admin"), server_key);
    std::optional<proto::Header> r = p.Call(Command(proto::STATS));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->error(), proto::OK) << r->error_message();
    EXPECT_EQ(r->stats_reply().pulls(), 1u) << "only the worker's pull was served";
    EXPECT_EQ(r->stats_reply().pushes(), 0u);
    EXPECT_EQ(Rows(r->stats_reply()), 2u) << "only the worker's pull made rows";
    for (const proto::Header* h : {&pull, &push}) {
      r = p.Call(*h, h == &pull ? std::vector<std::string>{KeyBytes({3, 4})} : std::vector<std::string>{KeyBytes({3, 4}), grads});
      ASSERT_TRUE(r);
      EXPECT_EQ(r->error(), proto::UNAUTHORIZED) << r->error_message();
    }
    RawPeer s(server_ep, kAnswer, server_pair, server_key);
    r = s.Call(push, {KeyBytes({3, 4}), grads});
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

  control->Leave("test over", true);
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
