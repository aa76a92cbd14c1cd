// A real server process receives malformed messages from a raw ZeroMQ
// socket: each gets an error reply, and the server keeps serving. It also
// holds its limits: a PULL claiming 2^30 keys, a message part over
// --max_message_bytes and a stream of pulls of new keys past
// storage.max_resident_bytes are refused, and it stays up.
#include <random>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "net/transport.h"
#include "proto/wire.pb.h"
#include "scheduler/scheduler_client.h"
#include "tests/cluster_harness.h"
#include "tests/raw_peer.h"

namespace ember::testing {
namespace {


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
  absl::StatusOr<JoinedWorker> joined = JoinAsWorker(sched_ep);
  ASSERT_TRUE(joined.ok()) << joined.status() << ReadFile(tmp.path() + "/scheduler.log");
  auto& control = joined->control;
  const proto::RegisterReply* reg = &joined->registration;
  const std::string server_ep = joined->server_endpoints[0];
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
  peer.Send(pull(0, 2), {KeyBytes({1, 2}), "extra"});
  ASSERT_TRUE(peer.Recv(&h, &frames));
  EXPECT_EQ(h.error(), proto::BAD_FRAMES) << h.error_message();
  EXPECT_EQ(h.request_id(), 7u);
  // Unknown table.
  peer.Send(pull(99, 2), {KeyBytes({1, 2})});
  ASSERT_TRUE(peer.Recv(&h, &frames));
  EXPECT_EQ(h.error(), proto::UNKNOWN_TABLE) << h.error_message();
  // Truncated key bytes.
  peer.Send(pull(0, 2), {KeyBytes({1, 2}).substr(0, 13)});
  ASSERT_TRUE(peer.Recv(&h, &frames));
  EXPECT_EQ(h.error(), proto::BAD_SIZE) << h.error_message();
  // A push whose gradient frame does not match num_keys x dim.
  proto::Header push = pull(0, 2);
  push.set_command(proto::PUSH);
  peer.Send(push, {KeyBytes({1, 2}), std::string(4 * dim, '\0')});
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
  control->Leave("test over", true);
  EXPECT_NE(scheduler.Wait(absl::Seconds(30)), -1);
  EXPECT_NE(server.Wait(absl::Seconds(30)), -1);
}

}  // namespace
}  // namespace ember::testing

namespace ember::testing {
namespace {

// The server's resident ceiling in LimitsTest: 8 MiB, about 75K rows of
// local.conf's tables (dim 8, Adagrad: 112 bytes a row with its index slot).
constexpr uint64_t kCeiling = uint64_t{8} << 20;

// A scheduler and one server with storage.max_resident_bytes = kCeiling and
// --max_message_bytes = 1 MiB, no budget; the test registers as the job's
// only worker and talks to the server through a raw socket.
class LimitsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string data = tmp_.path() + "/data";
    ASSERT_TRUE(GenerateData(data, {"--train_rows=1000", "--test_rows=100", "--train_files=1", "--test_files=1"}));
    const std::string config = tmp_.path() + "/limits.conf";
    WriteFile(config, ReadFile(SourceDir() + "/examples/local.conf") +
                          absl::StrCat("\nstorage { max_resident_bytes: ", kCeiling, " }\n"));
    const int port = FreePort();
    const std::string sched_ep = absl::StrCat("tcp://127.0.0.1:", port);
    scheduler_ = std::make_unique<Process>(
        std::vector<std::string>{EmberBinary(), "scheduler", "--config=" + config, absl::StrCat("--port=", port),
                                 "--num_servers=1", "--num_workers=1", "--data_dir=" + data},
        tmp_.path() + "/scheduler.log");
    server_ = std::make_unique<Process>(
        std::vector<std::string>{EmberBinary(), "server", "--scheduler=" + sched_ep, "--max_message_bytes=1048576"},
        tmp_.path() + "/server.log");
    absl::StatusOr<JoinedWorker> joined = JoinAsWorker(sched_ep);
    ASSERT_TRUE(joined.ok()) << joined.status() << ReadFile(tmp_.path() + "/scheduler.log");
    control_ = std::move(joined->control);
    const proto::RegisterReply* reg = &joined->registration;
    server_ep_ = joined->server_endpoints[0];
    dim_ = reg->cluster().config().tables(0).dim();
    table_ = reg->cluster().config().tables(0).name();
  }
  void TearDown() override {
    // Processes still running are killed by their destructors.
    if (control_) {
      control_->Leave("test over", true);
      EXPECT_NE(scheduler_->Wait(absl::Seconds(30)), -1);
      EXPECT_NE(server_->Wait(absl::Seconds(30)), -1);
    }
  }

  proto::Header Pull(uint64_t num_keys) {
    proto::Header p;
    p.set_command(proto::PULL);
    p.set_request_id(++request_id_);
    p.set_table(0);
    p.set_dim(dim_);
    p.set_num_keys(num_keys);
    return p;
  }
  // Sends `h` with `frames` and waits for its reply.
  bool Call(RawPeer& peer, const proto::Header& h, const std::vector<std::string>& frames, proto::Header* reply,
            std::vector<std::string>* reply_frames) {
    peer.Send(h, frames);
    return peer.Recv(reply, reply_frames);
  }

  TempDir tmp_;
  std::unique_ptr<Process> scheduler_, server_;
  std::unique_ptr<scheduler::SchedulerClient> control_;
  std::string server_ep_, table_;
  uint32_t dim_ = 0;
  uint64_t request_id_ = 0;
};

TEST_F(LimitsTest, ServerRefusesPastItsLimitsAndStaysUp) {
  RawPeer peer(server_ep_);
  proto::Header h;
  std::vector<std::string> frames;

  // A PULL naming 2^30 keys: its keys frame would be 8 GiB. The claim alone
  // is refused before anything is sized from it ...
  ASSERT_TRUE(Call(peer, Pull(uint64_t{1} << 30), {KeyBytes({1, 2})}, &h, &frames));
  EXPECT_EQ(h.error(), proto::BAD_SIZE) << h.error_message();
  // ... and a keys frame over --max_message_bytes (2 MiB of the 8 GiB) is
  // dropped by ZeroMQ before it is allocated in full: no reply.
  peer.SetTimeout(absl::Seconds(3));
  peer.Send(Pull(uint64_t{1} << 30), {std::string(2 << 20, '\0')});
  EXPECT_FALSE(peer.Recv(&h, &frames)) << "a 2 MiB part got through: " << h.ShortDebugString();
  peer.SetTimeout(absl::Seconds(30));
  ASSERT_TRUE(server_->Running()) << ReadFile(tmp_.path() + "/server.log");

  // A stream of pulls of random new keys, no budget: served until the
  // ceiling, then refused with RESOURCE_EXHAUSTED; none is left unanswered.
  std::mt19937_64 rng(12);
  constexpr size_t kBatch = 4096;
  std::vector<uint64_t> first;
  int served = 0, refused = 0;
  std::string refusal;
  for (int i = 0; i < 100 && refused < 5; ++i) {
    std::vector<uint64_t> keys(kBatch);
    for (uint64_t& k : keys) k = rng();
    if (first.empty()) first = keys;
    ASSERT_TRUE(Call(peer, Pull(kBatch), {KeyBytes(keys)}, &h, &frames)) << "pull " << i << " unanswered";
    if (h.error() == proto::OK) {
      ASSERT_EQ(refused, 0) << "a pull of new keys was served after a refusal";
      ASSERT_EQ(frames.size(), 1u);
      EXPECT_EQ(frames[0].size(), kBatch * dim_ * sizeof(float));
      ++served;
    } else {
      ASSERT_EQ(h.error(), proto::RESOURCE_EXHAUSTED) << h.error_message();
      refusal = h.error_message();
      ++refused;
    }
  }
  EXPECT_GT(served, 5) << "the ceiling holds about 75K rows, 4096 a pull";
  ASSERT_EQ(refused, 5) << "100 pulls of 4096 new keys never reached an 8 MiB ceiling";
  EXPECT_NE(refusal.find("storage.max_resident_bytes"), std::string::npos) << refusal;
  EXPECT_NE(refusal.find("'" + table_ + "'"), std::string::npos) << refusal;
  EXPECT_NE(refusal.find(absl::StrCat(kCeiling)), std::string::npos) << refusal;

  // STATS: the resident rows stopped at the ceiling.
  proto::Header stats;
  stats.set_command(proto::STATS);
  stats.set_request_id(++request_id_);
  ASSERT_TRUE(Call(peer, stats, {}, &h, &frames));
  ASSERT_EQ(h.error(), proto::OK) << h.error_message();
  EXPECT_EQ(h.stats_reply().max_resident_bytes(), kCeiling);
  uint64_t resident = 0, rows = 0;
  for (const auto& t : h.stats_reply().tables()) {
    resident += t.resident_bytes();
    rows += t.resident_rows();
  }
  EXPECT_LE(resident, kCeiling);
  EXPECT_GE(rows, served * kBatch);
  EXPECT_GE(h.stats_reply().errors(), 5u);

  // Still serving: PING, and a pull of existing keys.
  proto::Header ping;
  ping.set_command(proto::PING);
  ping.set_request_id(++request_id_);
  ASSERT_TRUE(Call(peer, ping, {}, &h, &frames));
  EXPECT_EQ(h.error(), proto::OK) << h.error_message();
  ASSERT_TRUE(Call(peer, Pull(kBatch), {KeyBytes(first)}, &h, &frames));
  EXPECT_EQ(h.error(), proto::OK) << h.error_message();
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].size(), kBatch * dim_ * sizeof(float));
  EXPECT_TRUE(server_->Running());
  const std::string slog = ReadFile(tmp_.path() + "/server.log");
  EXPECT_NE(slog.find(absl::StrCat("resident ceiling ", kCeiling, " bytes")), std::string::npos) << slog;
  EXPECT_NE(slog.find("refused PULL"), std::string::npos) << slog;
}

// A job whose server ceiling is too small for its first pull: the worker
// gets RESOURCE_EXHAUSTED and fails the job, and the scheduler reports the
// server's reason (the limit and the field to raise).
TEST(LimitsJobTest, RefusedRowsFailTheJobWithTheReason) {
  TempDir tmp;
  const std::string data = tmp.path() + "/data";
  ASSERT_TRUE(GenerateData(data, {"--train_rows=2000", "--test_rows=100", "--train_files=1", "--test_files=1"}));
  const std::string config = tmp.path() + "/tiny.conf";
  WriteFile(config, ReadFile(SourceDir() + "/examples/local.conf") + "\nstorage { max_resident_bytes: 4096 }\n");
  Cluster c(tmp.path(), config, 1, 1, {"--data_dir=" + data});
  ASSERT_TRUE(c.WaitAll(absl::Seconds(120))) << ReadFile(tmp.path() + "/scheduler.log");
  EXPECT_NE(c.scheduler().Wait(absl::ZeroDuration()), 0);
  EXPECT_NE(c.workers()[0]->Wait(absl::ZeroDuration()), 0);
  const std::string slog = ReadFile(tmp.path() + "/scheduler.log");
  EXPECT_NE(slog.find("RESOURCE_EXHAUSTED"), std::string::npos) << slog;
  EXPECT_NE(slog.find("storage.max_resident_bytes"), std::string::npos) << slog;
  EXPECT_EQ(c.Result().count("auc"), 0u) << "no final line";
}

}  // namespace
}  // namespace ember::testing
