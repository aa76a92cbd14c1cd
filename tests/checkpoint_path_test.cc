// A real server process receives SAVE and RESTORE naming paths outside the
// job's checkpoint root, with "..", and through symlinks, from a raw ZeroMQ
// socket: each is refused with the reason, nothing is written anywhere, and
// the server keeps serving; a SAVE named relative to the root still works.
#include <sys/stat.h>


#include <filesystem>
#include <map>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "net/transport.h"
#include "proto/wire.pb.h"
#include "scheduler/scheduler_client.h"
#include "tests/cluster_harness.h"
#include "tests/raw_peer.h"

namespace ember::testing {
namespace {

namespace fs = std::filesystem;

// The reply's header; command CMD_UNSPECIFIED if none came.
proto::Header Ask(RawPeer& peer, const proto::Header& h) { return peer.Call(h).value_or(proto::Header()); }

// Every path under `dir` (symlinks not followed) with its mode, size and
// mtime: what a refused request must leave as it was. Logs, and the
// checkpoints the scheduler itself takes (ckpt-*, but for the test's
// ckpt-00000005), may change meanwhile and are left out.
std::map<std::string, std::string> Snapshot(const std::string& dir, const std::string& root) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    const std::string path = e.path().string();
    if (e.path().extension() == ".log") continue;
    if (path.rfind(root + "/ckpt-", 0) == 0 && path.rfind(root + "/ckpt-00000005", 0) != 0) continue;
    struct stat st;
    if (::lstat(e.path().c_str(), &st) != 0) continue;
    out[e.path().string()] = absl::StrCat(st.st_mode, ":", st.st_size, ":", st.st_mtim.tv_sec, ".",
                                          st.st_mtim.tv_nsec);
  }
  return out;
}

TEST(CheckpointPathTest, SaveAndRestoreOutsideTheRootAreRefusedAndWriteNothing) {
  TempDir tmp;
  const std::string data = tmp.path() + "/data";
  ASSERT_TRUE(GenerateData(data, {"--train_rows=1000", "--test_rows=100", "--train_files=1", "--test_files=1"}));
  const std::string root = tmp.path() + "/root";
  const std::string outside = tmp.path() + "/outside";
  const int port = FreePort();
  const std::string sched_ep = absl::StrCat("tcp://127.0.0.1:", port);
  Process scheduler({EmberBinary(), "scheduler", "--config=" + SourceDir() + "/examples/local.conf",
                     absl::StrCat("--port=", port), "--num_servers=1", "--num_workers=1", "--data_dir=" + data,
                     "--checkpoint_dir=" + root},
                    tmp.path() + "/scheduler.log");
  Process server({EmberBinary(), "server", "--scheduler=" + sched_ep}, tmp.path() + "/server.log");

  // This test is the job's worker: it registers, learns the server's
  // endpoint, and then sends admin commands itself.
  absl::StatusOr<JoinedWorker> joined = JoinAsWorker(sched_ep);
  ASSERT_TRUE(joined.ok()) << joined.status() << ReadFile(tmp.path() + "/scheduler.log");
  auto& control = joined->control;
  const std::string server_ep = joined->server_endpoints[0];
  RawPeer peer(server_ep);
  proto::Header ping;
  ping.set_command(proto::PING);
  ASSERT_EQ(Ask(peer, ping).command(), proto::PING);  // the server has started (and made its root)
  ASSERT_TRUE(fs::is_directory(root));

  // The attacker's stage: a directory outside the root with a file in it,
  // a symlink from inside the root to it, and a checkpoint directory whose
  // data file and MANIFEST are symlinks to that file.
  fs::create_directories(outside);
  WriteFile(outside + "/victim", "precious");
  fs::create_directory_symlink(outside, root + "/link");
  fs::create_directories(root + "/real");
  fs::create_directory_symlink(outside, root + "/real/inner");
  fs::create_directories(root + "/ckpt-00000005");
  fs::create_symlink(outside + "/victim", root + "/ckpt-00000005/t0-r0.rows");
  fs::create_symlink(outside + "/victim", root + "/ckpt-00000005/dense-r0.bin");
  fs::create_symlink(outside + "/victim", root + "/ckpt-00000005/MANIFEST");
  const auto before = Snapshot(tmp.path(), root);

  struct Case {
    std::string dir, reason;
  };
  const std::vector<Case> cases = {
      {outside, "absolute"},
      {root + "/real", "absolute"},  // even inside the root: names are relative
      {"../outside", "'..'"},
      {"real/../../outside", "'..'"},
      {"..", "'..'"},
      {"./real", "'.'"},
      {"", "empty"},
      {"real//x", "empty component"},
      {"link", "'link' is a symlink"},
      {"real/inner", "'real/inner' is a symlink"},
  };
  for (proto::Command command : {proto::SAVE, proto::RESTORE}) {
    for (const Case& c : cases) {
      SCOPED_TRACE(absl::StrCat(proto::Command_Name(command), " '", c.dir, "'"));
      proto::Header h;
      h.set_command(command);
      h.set_request_id(11);
      if (command == proto::SAVE) {
        h.mutable_save()->set_dir(c.dir);
        h.mutable_save()->set_id(5);
      } else {
        h.mutable_restore()->set_dir(c.dir);
      }
      const proto::Header r = Ask(peer, h);
      EXPECT_EQ(r.request_id(), 11u);
      EXPECT_EQ(r.error(), proto::BAD_REQUEST) << r.error_message();
      EXPECT_NE(r.error_message().find(c.reason), std::string::npos) << r.error_message();
      EXPECT_NE(r.error_message().find(proto::Command_Name(command)), std::string::npos) << r.error_message();
    }
  }
  // A checkpoint directory whose files are symlinks: the SAVE creates no
  // file through them, the RESTORE reads no MANIFEST through one.
  {
    proto::Header h;
    h.set_command(proto::SAVE);
    h.mutable_save()->set_dir("ckpt-00000005");
    h.mutable_save()->set_id(5);
    const proto::Header r = Ask(peer, h);
    EXPECT_EQ(r.error(), proto::BAD_REQUEST) << r.error_message();
    EXPECT_NE(r.error_message().find("t0-r0.rows"), std::string::npos) << r.error_message();
    EXPECT_NE(r.error_message().find("exists"), std::string::npos) << r.error_message();
    h.set_command(proto::RESTORE);
    h.mutable_restore()->set_dir("ckpt-00000005");
    const proto::Header q = Ask(peer, h);
    EXPECT_NE(q.error(), proto::OK);
    EXPECT_NE(q.error_message().find("MANIFEST"), std::string::npos) << q.error_message();
  }
  EXPECT_EQ(ReadFile(outside + "/victim"), "precious");
  EXPECT_EQ(Snapshot(tmp.path(), root), before) << "a refused request wrote something";

  // Still serving, and a SAVE named relative to the root works.
  EXPECT_TRUE(server.Running());
  EXPECT_EQ(Ask(peer, ping).error(), proto::OK);
  fs::create_directories(root + "/ckpt-00000042");
  proto::Header save;
  save.set_command(proto::SAVE);
  save.mutable_save()->set_dir("ckpt-00000042");
  save.mutable_save()->set_id(42);
  const proto::Header saved = Ask(peer, save);
  EXPECT_EQ(saved.error(), proto::OK) << saved.error_message();
  EXPECT_TRUE(fs::exists(root + "/ckpt-00000042/t0-r0.rows"));
  EXPECT_TRUE(fs::exists(root + "/ckpt-00000042/dense-r0.bin"));
  EXPECT_GT(saved.save_reply().part().files_size(), 0);
  proto::Header list;
  list.set_command(proto::LIST_CHECKPOINTS);
  list.mutable_list();
  const proto::Header listed = Ask(peer, list);
  EXPECT_EQ(listed.error(), proto::OK) << listed.error_message();
  bool found = false;
  for (const auto& c : listed.list_reply().checkpoints()) found |= c.dir() == "ckpt-00000042";
  EXPECT_TRUE(found) << listed.DebugString();

  control->Leave("test over", true);
  EXPECT_NE(scheduler.Wait(absl::Seconds(30)), -1);
  EXPECT_NE(server.Wait(absl::Seconds(30)), -1);
}

}  // namespace
}  // namespace ember::testing
