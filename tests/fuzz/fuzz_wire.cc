// libFuzzer target: the wire validator and a real parameter server handling
// the message, in this process over the in-process transport.
//
// Input layout (little-endian uint32 lengths, each clamped to what is left):
//   [len][header frame: a serialized proto::Header] then, until the input
//   ends, [len][data frame] ...
// The header frame must parse (the transport answers an unparsable one
// itself, before validation); net::ValidateMessage then runs on the message,
// and a valid one goes to a ps::Server created once with two small tables,
// four logical shards of which it owns two (the others name a server that is
// not there), a 16-float dense slice and max_keys_per_request 4096. The
// server must answer every request (within 10 s) and never crash.
//
// What the harness changes: SAVE, RESTORE and LIST_CHECKPOINTS are not sent
// (they name directories; fuzz_checkpoint covers the readers), is_reply is
// cleared (a server ignores replies, so nothing would come back), and keys
// are reduced modulo 4096, since pulls create rows and random keys would
// grow the tables without limit over a long run.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "glog/logging.h"
#include "net/client.h"
#include "net/transport.h"
#include "net/validate.h"
#include "ps/server.h"
#include "tests/fuzz/fuzz_util.h"

namespace ember::fuzz {
namespace {

constexpr uint64_t kKeySpace = 4096;

proto::JobConfig Config() {
  proto::JobConfig c;
  auto* t = c.add_tables();
  t->set_name("emb");
  t->set_dim(4);
  t->mutable_optimizer()->set_kind(proto::OptimizerConfig::ADAGRAD);
  t->mutable_optimizer()->set_learning_rate(0.1f);
  t = c.add_tables();
  t->set_name("bias");
  t->set_dim(1);
  t->mutable_optimizer()->set_kind(proto::OptimizerConfig::FTRL);
  c.mutable_cluster()->set_num_logical_shards(4);
  c.mutable_cluster()->set_server_threads(2);
  c.mutable_cluster()->set_max_keys_per_request(kKeySpace);
  c.mutable_model()->mutable_dense_optimizer()->set_kind(proto::OptimizerConfig::ADAM);
  c.mutable_model()->mutable_dense_optimizer()->set_learning_rate(0.01f);
  return c;
}

// The server and a client connected to it, for the whole process.
struct Rig {
  net::InprocHub hub;
  std::unique_ptr<ps::Server> server;
  std::thread thread;
  std::unique_ptr<net::Client> client;
  net::PeerId peer = net::kNoPeer;

  Rig() {
    net::TransportOptions o;
    o.kind = net::TransportOptions::Kind::kInproc;
    o.hub = &hub;
    absl::StatusOr<std::unique_ptr<net::Transport>> st = net::CreateTransport(o);
    CHECK(st.ok()) << st.status();
    CHECK((*st)->Bind("inproc://ps0").ok());
    ps::ServerOptions so;
    so.config = Config();
    so.shard_map.set_num_logical_shards(4);
    for (int s = 0; s < 4; ++s) so.shard_map.add_server_rank(s % 2);
    so.rank = 0;
    so.node_id = 1;
    so.dense_offset = 8;
    so.dense_init.assign(16, 0.5f);
    so.dense_state_begin = 20;
    so.dense_total = 32;
    absl::StatusOr<std::unique_ptr<ps::Server>> server = ps::Server::Create(so, std::move(*st));
    CHECK(server.ok()) << server.status();
    this->server = std::move(*server);
    thread = std::thread([this] { CHECK(this->server->Run().ok()); });
    absl::StatusOr<std::unique_ptr<net::Transport>> ct = net::CreateTransport(o);
    CHECK(ct.ok()) << ct.status();
    client = net::Client::Create(std::move(*ct));
    absl::StatusOr<net::PeerId> p = client->Connect("inproc://ps0");
    CHECK(p.ok()) << p.status();
    peer = *p;
  }
};

Rig& TheRig() {
  // Never destroyed: libFuzzer may exit from any thread.
  static Rig* rig = new Rig();
  return *rig;
}

// Seeds: one well-formed request of each kind the server serves, and a few
// malformed ones.
void WriteSeeds(const std::string& dir) {
  int n = 0;
  auto seed = [&](const proto::Header& h, const std::vector<std::string>& frames) {
    std::string out;
    AppendPiece(&out, h.SerializeAsString());
    for (const std::string& f : frames) AppendPiece(&out, f);
    WriteFile(dir + "/seed-" + std::to_string(n++), out);
  };
  auto bytes = [](const auto& v) {
    return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(v[0]));
  };
  const std::vector<uint64_t> keys = {1, 2, 3, 100};
  proto::Header h;
  h.set_command(proto::PULL);
  h.set_table(0);
  h.set_dim(4);
  h.set_num_keys(keys.size());
  seed(h, {bytes(keys)});
  h.set_read_only(true);
  seed(h, {bytes(keys)});
  h.set_read_only(false);
  h.set_command(proto::PUSH);
  seed(h, {bytes(keys), bytes(std::vector<float>(16, 0.25f))});
  h.set_table(1);
  h.set_dim(1);
  seed(h, {bytes(keys), bytes(std::vector<float>(4, -1.0f))});
  h.set_command(proto::PULL);
  seed(h, {bytes(keys)});
  h.set_num_keys(5);  // frame too short
  seed(h, {bytes(keys)});
  h.Clear();
  h.set_command(proto::DENSE_PULL);
  h.set_dense_offset(8);
  h.set_dense_length(16);
  seed(h, {});
  h.set_command(proto::DENSE_PUSH);
  h.set_dense_version(1);
  seed(h, {bytes(std::vector<float>(16, 0.1f))});
  h.set_dense_offset(30);  // past the slice
  seed(h, {bytes(std::vector<float>(16, 0.1f))});
  h.Clear();
  for (proto::Command c : {proto::PING, proto::STATS, proto::SWEEP, proto::HEARTBEAT}) {
    h.set_command(c);
    seed(h, {});
  }
  h.set_command(proto::RESET_TABLE);
  h.mutable_reset()->set_table(1);
  seed(h, {});
}

}  // namespace
}  // namespace ember::fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = ember::fuzz::SeedDir()) {
    ember::fuzz::WriteSeeds(dir);
    std::exit(0);
  }
  FLAGS_minloglevel = google::GLOG_WARNING;  // not the server's INFO line per SWEEP or RESET_TABLE
  ember::fuzz::TheRig();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ember;
  fuzz::Cutter in(data, size);
  net::Message m;
  const std::string_view header = in.Piece();
  if (!m.header.ParseFromArray(header.data(), static_cast<int>(header.size()))) return 0;
  while (!in.empty()) {
    const std::string_view f = in.Piece();
    m.frames.push_back(net::Frame::Copy(f.data(), f.size()));
  }
  const proto::Command c = m.header.command();
  if (c == proto::SAVE || c == proto::RESTORE || c == proto::LIST_CHECKPOINTS) return 0;
  m.header.set_is_reply(false);
  if (!net::ValidateMessage(m).ok()) return 0;
  if ((c == proto::PULL || c == proto::PUSH) && !m.frames.empty()) {
    std::vector<uint64_t> keys(m.frames[0].count<uint64_t>());
    if (!keys.empty()) std::memcpy(keys.data(), m.frames[0].data(), keys.size() * 8);
    for (uint64_t& k : keys) k %= fuzz::kKeySpace;
    m.frames[0] = net::Frame::FromVector(std::move(keys));
  }
  fuzz::Rig& rig = fuzz::TheRig();
  const net::Client::CallId id = rig.client->Start(rig.peer, std::move(m));
  absl::StatusOr<net::Message> reply = rig.client->Wait(id, absl::Seconds(10));
  if (!reply.ok() && absl::IsDeadlineExceeded(reply.status())) {
    LOG(FATAL) << "the server did not answer a " << proto::Command_Name(c) << " within 10 s";
  }
  return 0;
}
