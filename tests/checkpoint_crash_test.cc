// Crash safety of checkpoints: a server process killed (SIGKILL) while it
// writes a checkpoint leaves the previous checkpoint loadable and the new one
// incomplete (no MANIFEST), listed as such and refused by restore.
//
// The servers are real processes on 127.0.0.1: children forked from this
// test before it starts any thread, each running a ps::Server over ZeroMQ.
// They die with the test (PR_SET_PDEATHSIG) and are killed by the fixture.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "net/client.h"
#include "net/transport.h"
#include "proto/keys.h"
#include "ps/checkpoint_coordinator.h"
#include "ps/server.h"
#include "storage/checkpoint_files.h"
#include "tests/cluster_harness.h"

namespace ember::testing {
namespace {

namespace fs = std::filesystem;

proto::JobConfig Config(uint64_t bytes_per_sec, const std::string& root) {
  proto::JobConfig c;
  auto* t = c.add_tables();
  t->set_name("emb");
  t->set_dim(16);
  t->mutable_optimizer()->set_kind(proto::OptimizerConfig::ADAGRAD);
  c.mutable_cluster()->set_num_logical_shards(64);
  c.mutable_cluster()->set_server_threads(2);
  c.mutable_storage()->set_checkpoint_bytes_per_sec(bytes_per_sec);
  c.mutable_checkpoint()->set_keep(5);
  c.mutable_checkpoint()->set_dir(root);
  return c;
}

// A server in a child process, serving on tcp://127.0.0.1:port until killed.
pid_t StartServer(const proto::JobConfig& config, int port, const std::string& spill) {
  const pid_t pid = fork();
  if (pid != 0) return pid;
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  proto::JobConfig c = config;
  c.mutable_storage()->set_spill_path(spill);
  net::TransportOptions o;
  auto t = net::CreateTransport(o);
  if (!t.ok() || !(*t)->Bind(absl::StrCat("tcp://127.0.0.1:", port)).ok()) _exit(3);
  ps::ServerOptions so;
  so.config = c;
  so.shard_map.set_num_logical_shards(64);
  for (int s = 0; s < 64; ++s) so.shard_map.add_server_rank(0);
  so.dense_init = {1, 2, 3, 4};
  auto server = ps::Server::Create(so, std::move(*t));
  if (!server.ok()) _exit(4);
  (void)(*server)->Run();
  _exit(0);
}

void Kill(pid_t pid) {
  if (pid <= 0) return;
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
}

TEST(CheckpointCrashTest, KilledMidSaveLeavesPreviousCheckpointLoadable) {
  TempDir dir;
  const std::string root = dir.path() + "/ckpt";
  // 1 MB/s: the second save (about 12 MB) takes seconds, time enough to kill
  // the server in the middle of it.
  const proto::JobConfig slow = Config(1 << 20, root);
  const int port = FreePort(), port2 = FreePort();
  pid_t victim = StartServer(slow, port, dir.path() + "/spill1");
  pid_t fresh = StartServer(Config(0, root), port2, dir.path() + "/spill2");
  struct Reaper {
    pid_t* a;
    pid_t* b;
    ~Reaper() {
      Kill(*a);
      Kill(*b);
    }
  } reaper{&victim, &fresh};

  net::TransportOptions o;
  auto client = net::Client::Create(std::move(*net::CreateTransport(o)));
  auto peer = client->Connect(absl::StrCat("tcp://127.0.0.1:", port));
  ASSERT_TRUE(peer.ok());
  ps::CheckpointCoordinatorOptions co;
  co.config = slow;
  co.dense_total = 4;
  co.servers = {*peer};
  // The killed server never answers: the second save gives up after this.
  co.timeout = absl::Seconds(15);
  ps::CheckpointCoordinator coord(co, client.get());

  auto push = [&](uint64_t first, uint64_t n) {
    std::vector<uint64_t> keys;
    for (uint64_t i = first; i < first + n; ++i) keys.push_back(proto::Mix64(i));
    std::vector<float> g(keys.size() * 16, 0.5f);
    net::Message m;
    m.header.set_command(proto::PUSH);
    m.header.set_table(0);
    m.header.set_dim(16);
    m.header.set_num_keys(keys.size());
    m.frames.push_back(net::Frame::Copy(keys.data(), keys.size() * 8));
    m.frames.push_back(net::Frame::Copy(g.data(), g.size() * 4));
    auto r = client->Call(*peer, std::move(m), absl::Seconds(60));
    ASSERT_TRUE(r.ok()) << r.status();
  };
  // Server start-up (fork + bind) is asynchronous: the first call waits for it.
  push(1, 10000);
  auto first = coord.Save(root, false, false);
  ASSERT_TRUE(first.ok()) << first.status();
  const uint64_t first_rows = first->tables(0).rows();
  EXPECT_EQ(first_rows, 10000u);

  push(20000, 70000);
  std::thread saver([&] {
    auto second = coord.Save(root, true, false);
    EXPECT_FALSE(second.ok()) << "the server was killed; the save cannot have completed";
  });
  // Kill once the second checkpoint's data has started to reach the disk.
  const fs::path second_dir = fs::path(root) / storage::CheckpointDirName(2);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  bool writing = false;
  while (!writing && std::chrono::steady_clock::now() < deadline) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(second_dir, ec)) writing |= e.is_regular_file() && e.file_size() > 0;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(writing) << "the second checkpoint never started";
  Kill(victim);
  victim = -1;
  saver.join();

  // The new checkpoint is absent or incomplete; the old one is the latest.
  const auto list = storage::ListCheckpoints(root);
  ASSERT_EQ(list.size(), 2u);
  EXPECT_TRUE(list[0].complete());
  EXPECT_FALSE(list[1].complete()) << "a checkpoint whose server died mid-write has no MANIFEST";
  auto latest = storage::LatestCheckpoint(root);
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ(fs::path(*latest).filename(), storage::CheckpointDirName(1));

  // A fresh server process loads the previous checkpoint, and refuses the new.
  auto peer2 = client->Connect(absl::StrCat("tcp://127.0.0.1:", port2));
  ASSERT_TRUE(peer2.ok());
  co.servers = {*peer2};
  ps::CheckpointCoordinator coord2(co, client.get());
  auto refused = coord2.Restore(second_dir.string());
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(std::string(refused.status().message()).find("MANIFEST"), std::string::npos) << refused.status();
  auto rows = coord2.Restore(root);  // the root: its newest complete checkpoint
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(*rows, first_rows);
}

}  // namespace
}  // namespace ember::testing
