#include "net/security.h"

#include <sys/stat.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "net/transport.h"

namespace ember::net {
namespace {

class SecurityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/ember_security_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void Write(const std::string& name, const std::string& text, mode_t mode = 0600) {
    std::ofstream(dir_ + "/" + name) << text;
    chmod((dir_ + "/" + name).c_str(), mode);
  }
  std::string dir_;
};

TEST_F(SecurityTest, KeygenWritesPairsEveryRoleCanLoadAndNeverOverwrites) {
  const std::string keys = dir_ + "/keys";
  ASSERT_TRUE(WriteClusterKeys(keys).ok());
  for (proto::Role r : {proto::SCHEDULER, proto::SERVER, proto::WORKER, proto::ADMIN}) {
    absl::StatusOr<SecurityOptions> s = LoadSecurity(keys, r);
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_EQ(s->authorized.size(), 4u);
    EXPECT_EQ(s->authorized.at(s->self.public_key), r);
    struct stat st;
    ASSERT_EQ(stat(absl::StrCat(keys, "/", RoleName(r), ".key").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
  }
  const std::string before = [&] {
    std::ifstream in(keys + "/server.key");
    return std::string(std::istreambuf_iterator<char>(in), {});
  }();
  absl::Status again = WriteClusterKeys(keys);
  EXPECT_TRUE(absl::IsAlreadyExists(again)) << again;
  std::ifstream in(keys + "/server.key");
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), {}), before);
  // A worker's key file cannot stand in for the scheduler's.
  absl::StatusOr<SecurityOptions> swapped = LoadSecurity(keys, proto::SCHEDULER, keys + "/worker.key");
  EXPECT_FALSE(swapped.ok());
  EXPECT_NE(swapped.status().message().find("not listed as scheduler"), std::string::npos) << swapped.status();
}

TEST_F(SecurityTest, BadKeyFilesAreRefusedNamingFileAndLine) {
  KeyPair a = *GenerateKeyPair(), b = *GenerateKeyPair();
  Write("open.key", absl::StrCat("public = ", a.public_key, "\nsecret = ", a.secret_key, "\n"), 0644);
  absl::StatusOr<KeyPair> r = ReadKeyPair(dir_ + "/open.key");
  EXPECT_TRUE(absl::IsPermissionDenied(r.status())) << r.status();
  EXPECT_NE(r.status().message().find("chmod 600"), std::string::npos);
  Write("mixed.key", absl::StrCat("public = ", a.public_key, "\nsecret = ", b.secret_key, "\n"));
  r = ReadKeyPair(dir_ + "/mixed.key");
  EXPECT_NE(r.status().message().find("not the secret key's"), std::string::npos) << r.status();
  Write("short.key", "# c\npublic = abc\n");
  r = ReadKeyPair(dir_ + "/short.key");
  EXPECT_NE(r.status().message().find("short.key:2"), std::string::npos) << r.status();

  Write("authorized_keys", absl::StrCat("server ", a.public_key, "\nwizard ", b.public_key, "\n"));
  auto k = ReadAuthorizedKeys(dir_ + "/authorized_keys");
  EXPECT_NE(k.status().message().find("authorized_keys:2: unknown role 'wizard'"), std::string::npos) << k.status();
  Write("authorized_keys", absl::StrCat("server ", a.public_key, "\nworker ", a.public_key, "\n"));
  k = ReadAuthorizedKeys(dir_ + "/authorized_keys");
  EXPECT_NE(k.status().message().find("already listed as server"), std::string::npos) << k.status();
}

TEST(AuthorizeTest, EachRoleMaySendOnlyItsCommands) {
  proto::Header h;
  auto may = [&](proto::Role receiver, proto::Role sender, proto::Command c) {
    h.set_command(c);
    return Authorize(receiver, sender, h).ok();
  };
  for (proto::Command c : {proto::PULL, proto::PUSH, proto::DENSE_PULL, proto::DENSE_PUSH}) {
    EXPECT_TRUE(may(proto::SERVER, proto::WORKER, c));
    EXPECT_TRUE(may(proto::SERVER, proto::SCHEDULER, c));
    EXPECT_FALSE(may(proto::SERVER, proto::ADMIN, c));
    EXPECT_FALSE(may(proto::SERVER, proto::SERVER, c));
    EXPECT_FALSE(may(proto::SERVER, proto::ROLE_UNSPECIFIED, c));
  }
  for (proto::Command c : {proto::SAVE, proto::RESTORE, proto::LIST_CHECKPOINTS, proto::RESET_TABLE, proto::SWEEP,
                           proto::STATS}) {
    EXPECT_TRUE(may(proto::SERVER, proto::SCHEDULER, c));
    EXPECT_TRUE(may(proto::SERVER, proto::ADMIN, c));
    EXPECT_FALSE(may(proto::SERVER, proto::WORKER, c));
    EXPECT_FALSE(may(proto::SERVER, proto::SERVER, c));
  }
  EXPECT_TRUE(may(proto::SERVER, proto::WORKER, proto::PING));
  EXPECT_TRUE(may(proto::SCHEDULER, proto::WORKER, proto::GET_CHUNK));
  EXPECT_FALSE(may(proto::SCHEDULER, proto::ADMIN, proto::GET_CHUNK));
  h.set_command(proto::REGISTER);
  h.mutable_register_request()->mutable_node()->set_role(proto::SERVER);
  EXPECT_TRUE(Authorize(proto::SCHEDULER, proto::SERVER, h).ok());
  EXPECT_FALSE(Authorize(proto::SCHEDULER, proto::WORKER, h).ok());
  EXPECT_FALSE(Authorize(proto::SCHEDULER, proto::ADMIN, h).ok());
}

// Two ZeroMQ transports with CURVE: an authorised client's messages arrive
// stamped with its role; an unlisted key and a plain socket get nowhere.
TEST_F(SecurityTest, CurveTransportAdmitsListedKeysAndStampsTheirRole) {
  ASSERT_TRUE(WriteClusterKeys(dir_ + "/k").ok());
  TransportOptions so, wo;
  so.linger_ms = wo.linger_ms = 0;
  so.security = *LoadSecurity(dir_ + "/k", proto::SERVER);
  wo.security = *LoadSecurity(dir_ + "/k", proto::WORKER);
  auto server = *CreateTransport(so);
  EXPECT_TRUE(server->authenticates());
  auto ep = server->Bind("tcp://127.0.0.1:0");
  ASSERT_TRUE(ep.ok());
  auto worker = *CreateTransport(wo);
  EXPECT_FALSE(worker->Connect(*ep).ok()) << "with security on, Connect needs the peer's role";
  auto peer = worker->Connect(*ep, proto::SERVER);
  ASSERT_TRUE(peer.ok()) << peer.status();
  Message m;
  m.peer = *peer;
  m.header.set_command(proto::PING);
  ASSERT_TRUE(worker->Send(std::move(m)).ok());
  Message got;
  absl::StatusOr<bool> r = server->Recv(&got, absl::Seconds(10));
  ASSERT_TRUE(r.ok() && *r);
  EXPECT_EQ(got.peer_role, proto::WORKER);
  Message reply = MakeReply(got);
  ASSERT_TRUE(server->Send(std::move(reply)).ok());
  r = worker->Recv(&got, absl::Seconds(10));
  ASSERT_TRUE(r.ok() && *r);
  EXPECT_EQ(got.peer_role, proto::SERVER);

  // A stranger's key, and no CURVE at all.
  TransportOptions xo;
  xo.linger_ms = 0;
  xo.security = wo.security;
  xo.security.self = *GenerateKeyPair();
  auto stranger = *CreateTransport(xo);
  auto plain = *CreateTransport(TransportOptions{});
  for (Transport* t : {stranger.get(), plain.get()}) {
    auto p = t->Connect(*ep, proto::SERVER);
    ASSERT_TRUE(p.ok());
    Message x;
    x.peer = *p;
    x.header.set_command(proto::PING);
    ASSERT_TRUE(t->Send(std::move(x)).ok());
  }
  r = server->Recv(&got, absl::Seconds(2));
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(*r) << "a message from an unauthorised peer arrived";
  for (int i = 0; i < 50 && server->rejected_peers() < 2; ++i) absl::SleepFor(absl::Milliseconds(100));
  EXPECT_GE(server->rejected_peers(), 2u);
}

}  // namespace
}  // namespace ember::net
