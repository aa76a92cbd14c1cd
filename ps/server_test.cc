#include "ps/server.h"

#include <unistd.h>

#include <filesystem>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "net/client.h"
#include "proto/keys.h"
#include "ps/routing.h"
#include "storage/initializer.h"
#include "storage/sparse_table.h"

namespace ember::ps {
namespace {

// One server on an in-process transport, with a client connected to it.
class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto* t = config_.add_tables();
    t->set_name("emb");
    t->set_dim(4);
    t->mutable_optimizer()->set_kind(proto::OptimizerConfig::ADAGRAD);
    t->mutable_optimizer()->set_learning_rate(0.1f);
    t = config_.add_tables();
    t->set_name("bias");
    t->set_dim(1);
    t->mutable_optimizer()->set_kind(proto::OptimizerConfig::SGD);
    config_.mutable_cluster()->set_num_logical_shards(16);
    config_.mutable_cluster()->set_server_threads(3);
    config_.mutable_model()->mutable_dense_optimizer()->set_kind(proto::OptimizerConfig::SGD);
    config_.mutable_model()->mutable_dense_optimizer()->set_learning_rate(1.0f);
    // Server 0 owns even shards; odd shards belong to a server that is not here.
    map_.set_num_logical_shards(16);
    for (int s = 0; s < 16; ++s) map_.add_server_rank(s % 2);

    net::TransportOptions o;
    o.kind = net::TransportOptions::Kind::kInproc;
    o.hub = &hub_;
    auto st = net::CreateTransport(o);
    ASSERT_TRUE((*st)->Bind("inproc://ps0").ok());
    ServerOptions so;
    so.config = config_;
    so.shard_map = map_;
    so.rank = 0;
    so.dense_offset = 100;
    so.dense_init = {1, 2, 3};
    auto server = Server::Create(so, std::move(*st));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    thread_ = std::thread([this] { ASSERT_TRUE(server_->Run().ok()); });
    client_ = net::Client::Create(std::move(*net::CreateTransport(o)));
    peer_ = *client_->Connect("inproc://ps0");
  }
  void TearDown() override {
    client_.reset();
    server_->Stop();
    thread_.join();
  }

  std::vector<uint64_t> OwnKeys(size_t n, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::vector<uint64_t> keys;
    while (keys.size() < n) {
      uint64_t k = rng();
      if (proto::ShardOf(k, 16) % 2 == 0) keys.push_back(k);
    }
    return keys;
  }

  net::Message Pull(uint32_t table, uint32_t dim, const std::vector<uint64_t>& keys) {
    net::Message m;
    m.header.set_command(proto::PULL);
    m.header.set_table(table);
    m.header.set_dim(dim);
    m.header.set_num_keys(keys.size());
    m.frames.push_back(net::Frame::Copy(keys.data(), keys.size() * 8));
    return m;
  }

  std::vector<float> PullValues(uint32_t table, uint32_t dim, const std::vector<uint64_t>& keys) {
    auto r = client_->Call(peer_, Pull(table, dim, keys), absl::Seconds(10));
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return {};
    r->frames[0].Align<float>();
    auto v = r->frames[0].As<float>();
    return std::vector<float>(v.begin(), v.end());
  }

  absl::Status Push(uint32_t table, uint32_t dim, const std::vector<uint64_t>& keys, const std::vector<float>& g) {
    net::Message m;
    m.header.set_command(proto::PUSH);
    m.header.set_table(table);
    m.header.set_dim(dim);
    m.header.set_num_keys(keys.size());
    m.frames.push_back(net::Frame::Copy(keys.data(), keys.size() * 8));
    m.frames.push_back(net::Frame::Copy(g.data(), g.size() * 4));
    return client_->Call(peer_, std::move(m), absl::Seconds(10)).status();
  }

  proto::JobConfig config_;
  proto::ShardMap map_;
  net::InprocHub hub_;
  std::unique_ptr<Server> server_;
  std::thread thread_;
  std::unique_ptr<net::Client> client_;
  net::PeerId peer_;
};

TEST_F(ServerTest, PullCreatesInitialisedRowsAndPushAppliesOptimizer) {
  std::vector<uint64_t> keys = OwnKeys(2000, 1);
  // Send them grouped by shard, as the client does, and also unordered.
  std::vector<uint64_t> grouped;
  std::vector<uint32_t> begin;
  KeyRouter(map_, 2).Group(keys, &grouped, &begin, nullptr);
  std::vector<float> v = PullValues(0, 4, grouped);
  ASSERT_EQ(v.size(), grouped.size() * 4);
  storage::TableSpec spec(config_.tables(0));
  std::vector<uint8_t> row(spec.row_bytes());
  for (size_t i = 0; i < grouped.size(); i += 101) {
    spec.InitRow(grouped[i], 0, row.data());
    for (int j = 0; j < 4; ++j) ASSERT_EQ(v[i * 4 + j], storage::TableSpec::Weights(row.data())[j]);
  }

  // Push a gradient to every key twice (duplicates within one request apply twice).
  std::vector<uint64_t> dup = keys;
  dup.insert(dup.end(), keys.begin(), keys.end());
  std::vector<float> g(dup.size() * 4, 0.5f);
  ASSERT_TRUE(Push(0, 4, dup, g).ok());
  std::vector<float> after = PullValues(0, 4, keys);
  for (size_t i = 0; i < keys.size(); i += 97) {
    spec.InitRow(keys[i], 0, row.data());
    float* w = storage::TableSpec::Weights(row.data());
    const float grad[4] = {0.5f, 0.5f, 0.5f, 0.5f};
    spec.rule().Apply(w, spec.State(row.data()), grad, 4);
    spec.rule().Apply(w, spec.State(row.data()), grad, 4);
    for (int j = 0; j < 4; ++j) ASSERT_EQ(after[i * 4 + j], w[j]) << i;
  }
  ServerStats s = server_->stats();
  EXPECT_EQ(s.pushed_keys, dup.size());
  EXPECT_EQ(s.errors, 0u);
}

TEST_F(ServerTest, ConcurrentClientsOnDisjointAndSharedKeys) {
  std::vector<uint64_t> keys = OwnKeys(500, 2);
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t) {
    ts.emplace_back([&] {
      for (int i = 0; i < 20; ++i) {
        ASSERT_TRUE(Push(1, 1, keys, std::vector<float>(keys.size(), 1.0f)).ok());
      }
    });
  }
  for (auto& t : ts) t.join();
  storage::TableSpec spec(config_.tables(1));
  std::vector<uint8_t> row(spec.row_bytes());
  std::vector<float> v = PullValues(1, 1, keys);
  for (size_t i = 0; i < keys.size(); ++i) {
    spec.InitRow(keys[i], 0, row.data());
    // SGD lr 0.05 (default) x 80 pushes of gradient 1, in any order.
    ASSERT_NEAR(v[i], storage::TableSpec::Weights(row.data())[0] - 80 * 0.05f, 1e-4);
  }
}

TEST_F(ServerTest, MalformedRequestsGetErrorRepliesAndServerKeepsServing) {
  std::vector<uint64_t> keys = OwnKeys(10, 3);
  // Wrong frame count.
  net::Message m = Pull(0, 4, keys);
  m.frames.push_back(net::Frame::Copy("x", 1));
  auto r = client_->Call(peer_, std::move(m), absl::Seconds(5));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("BAD_FRAMES"), std::string::npos) << r.status();
  // Unknown table.
  r = client_->Call(peer_, Pull(7, 4, keys), absl::Seconds(5));
  EXPECT_NE(r.status().message().find("UNKNOWN_TABLE"), std::string::npos) << r.status();
  // Truncated key bytes.
  m = Pull(0, 4, keys);
  m.frames[0] = net::Frame::Copy(keys.data(), keys.size() * 8 - 3);
  r = client_->Call(peer_, std::move(m), absl::Seconds(5));
  EXPECT_NE(r.status().message().find("BAD_SIZE"), std::string::npos) << r.status();
  // Wrong dim for the table.
  r = client_->Call(peer_, Pull(0, 8, keys), absl::Seconds(5));
  EXPECT_NE(r.status().message().find("dim 4"), std::string::npos) << r.status();
  // A key of another server's shard: the whole push is refused, nothing applied.
  std::vector<uint64_t> mixed = keys;
  uint64_t foreign = 0;
  while (proto::ShardOf(foreign, 16) % 2 == 0) ++foreign;
  std::vector<float> before = PullValues(0, 4, keys);
  mixed.push_back(foreign);
  absl::Status ps = Push(0, 4, mixed, std::vector<float>(mixed.size() * 4, 1.0f));
  EXPECT_EQ(ps.code(), absl::StatusCode::kFailedPrecondition) << ps;
  EXPECT_EQ(PullValues(0, 4, keys), before);
  // Unknown command.
  net::Message u;
  u.header.set_command(proto::GET_CHUNK);
  u.header.mutable_chunk_request();
  r = client_->Call(peer_, std::move(u), absl::Seconds(5));
  EXPECT_NE(r.status().message().find("UNKNOWN_COMMAND"), std::string::npos) << r.status();
  // Still serving.
  EXPECT_EQ(PullValues(0, 4, keys).size(), 40u);
  EXPECT_GE(server_->stats().errors, 6u);
}

// A request naming more keys than cluster.max_keys_per_request is refused
// before a row is touched or a reply sized, and the server goes on serving.
TEST_F(ServerTest, RequestsAboveTheKeyLimitAreRefused) {
  const uint64_t limit = config_.cluster().max_keys_per_request();
  const std::vector<uint64_t> many(limit + 1, 0);  // key 0 is in an even shard or not: refused first either way
  const uint64_t rows = server_->stats().rows;
  auto r = client_->Call(peer_, Pull(0, 4, many), absl::Seconds(30));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("BAD_SIZE"), std::string::npos) << r.status();
  EXPECT_NE(r.status().message().find("max_keys_per_request"), std::string::npos) << r.status();
  absl::Status p = Push(1, 1, many, std::vector<float>(many.size(), 1.0f));
  EXPECT_NE(p.message().find("max_keys_per_request"), std::string::npos) << p;
  EXPECT_EQ(server_->stats().rows, rows) << "no row created";
  const std::vector<uint64_t> keys = OwnKeys(10, 5);
  EXPECT_EQ(PullValues(0, 4, keys).size(), 40u);
}

// A second server, on the test's hub, with its own config and client.
struct ExtraServer {
  std::unique_ptr<Server> server;
  std::thread thread;
  std::unique_ptr<net::Client> client;
  net::PeerId peer;
  ~ExtraServer() {
    client.reset();
    if (server) server->Stop();
    if (thread.joinable()) thread.join();
  }
  absl::StatusOr<net::Message> Call(proto::Command c, uint32_t dim, const std::vector<uint64_t>& keys,
                                    bool read_only = false) {
    net::Message m;
    m.header.set_command(c);
    m.header.set_table(0);
    m.header.set_dim(dim);
    m.header.set_num_keys(keys.size());
    m.header.set_read_only(read_only);
    m.frames.push_back(net::Frame::Copy(keys.data(), keys.size() * 8));
    if (c == proto::PUSH) {
      const std::vector<float> g(keys.size() * dim, 0.5f);
      m.frames.push_back(net::Frame::Copy(g.data(), g.size() * 4));
    }
    return client->Call(peer, std::move(m), absl::Seconds(30));
  }
  // Exact resident bytes over all tables (a STATS request).
  uint64_t ResidentBytes() {
    net::Message m;
    m.header.set_command(proto::STATS);
    auto r = client->Call(peer, std::move(m), absl::Seconds(30));
    EXPECT_TRUE(r.ok()) << r.status();
    uint64_t bytes = 0;
    if (r.ok()) {
      for (const auto& t : r->header.stats_reply().tables()) bytes += t.resident_bytes();
    }
    return bytes;
  }
};

std::unique_ptr<ExtraServer> StartServer(net::InprocHub* hub, const std::string& ep, ServerOptions so) {
  net::TransportOptions o;
  o.kind = net::TransportOptions::Kind::kInproc;
  o.hub = hub;
  auto st = net::CreateTransport(o);
  EXPECT_TRUE((*st)->Bind(ep).ok());
  auto server = Server::Create(std::move(so), std::move(*st));
  EXPECT_TRUE(server.ok()) << server.status();
  if (!server.ok()) return nullptr;
  auto x = std::make_unique<ExtraServer>();
  x->server = std::move(*server);
  x->thread = std::thread([s = x->server.get()] { EXPECT_TRUE(s->Run().ok()); });
  x->client = net::Client::Create(std::move(*net::CreateTransport(o)));
  x->peer = *x->client->Connect(ep);
  return x;
}

// Without a budget, storage.max_resident_bytes stops new rows: a request
// that would create rows past a handler's share is refused, naming the
// limit and the table; existing rows are still pulled and pushed, read-only
// pulls still answer, and the resident bytes never pass the ceiling.
TEST_F(ServerTest, ResidentCeilingRefusesNewRowsAndServesExistingOnes) {
  storage::TableSpec spec(config_.tables(0));
  const uint64_t cost = spec.row_bytes() + 16;
  const uint64_t ceiling = 3 * 50 * cost;  // 50 rows per handler
  ServerOptions so;
  so.config = config_;
  so.config.mutable_storage()->set_max_resident_bytes(ceiling);
  so.shard_map = map_;
  so.dense_init = {0};
  auto x = StartServer(&hub_, "inproc://ps-ceiling", so);
  ASSERT_NE(x, nullptr);
  ASSERT_EQ(x->server->stats().max_resident_bytes, ceiling);

  const std::vector<uint64_t> first = OwnKeys(20, 11);
  ASSERT_TRUE(x->Call(proto::PULL, 4, first).ok());
  absl::Status refused;
  for (uint64_t seed = 100; seed < 200 && refused.ok(); ++seed) {
    refused = x->Call(seed % 2 ? proto::PULL : proto::PUSH, 4, OwnKeys(20, seed)).status();
    ASSERT_LE(x->ResidentBytes(), ceiling);
  }
  ASSERT_FALSE(refused.ok()) << "150 rows fit, 2000 were asked for";
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_NE(refused.message().find("RESOURCE_EXHAUSTED"), std::string::npos) << refused;
  EXPECT_NE(refused.message().find("storage.max_resident_bytes"), std::string::npos) << refused;
  EXPECT_NE(refused.message().find("'emb'"), std::string::npos) << refused;
  EXPECT_NE(refused.message().find("storage.memory_budget_bytes"), std::string::npos) << refused;
  const uint64_t resident = x->ResidentBytes();
  EXPECT_LE(resident, ceiling);
  EXPECT_GT(resident, ceiling / 2) << "the shares fill before refusals";
  EXPECT_GE(x->server->stats().errors, 1u);

  // Existing rows: pulled and pushed as before; a read-only pull of new keys answers.
  EXPECT_TRUE(x->Call(proto::PUSH, 4, first).ok());
  absl::StatusOr<net::Message> again = x->Call(proto::PULL, 4, first);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->frames[0].size(), first.size() * 4 * sizeof(float));
  EXPECT_TRUE(x->Call(proto::PULL, 4, OwnKeys(200, 999), /*read_only=*/true).ok());
  EXPECT_EQ(x->ResidentBytes(), resident) << "no row created since the refusal";
}

// With a budget the tier spills cold rows instead of refusing new ones; only
// a request whose own rows exceed a handler's share of the ceiling is refused.
TEST_F(ServerTest, WithABudgetRowsSpillAndOnlyOversizedRequestsAreRefused) {
  storage::TableSpec spec(config_.tables(0));
  const uint64_t share = 100 * (spec.row_bytes() + 16);  // 100 rows per handler
  const std::string spill = absl::StrCat("/tmp/ember-ceiling-", getpid());
  std::filesystem::remove_all(spill);
  ServerOptions so;
  so.config = config_;
  so.config.mutable_storage()->set_memory_budget_bytes(3 * share);
  so.config.mutable_storage()->set_max_resident_bytes(3 * share);
  so.config.mutable_storage()->set_spill_path(spill);
  so.shard_map = map_;
  so.dense_init = {0};
  {
    auto x = StartServer(&hub_, "inproc://ps-tiered", so);
    ASSERT_NE(x, nullptr);
    for (uint64_t seed = 300; seed < 320; ++seed) {
      absl::StatusOr<net::Message> r = x->Call(proto::PULL, 4, OwnKeys(30, seed));
      ASSERT_TRUE(r.ok()) << "600 new rows over a 300-row budget spill: " << r.status();
    }
    EXPECT_GT(x->server->stats().evictions, 0u);
    EXPECT_LE(x->ResidentBytes(), 3 * share);
    // ~333 keys a handler at once: more than its share can pin.
    absl::Status big = x->Call(proto::PULL, 4, OwnKeys(1000, 400)).status();
    EXPECT_EQ(big.code(), absl::StatusCode::kResourceExhausted) << big;
    EXPECT_NE(big.message().find("storage.memory_budget_bytes"), std::string::npos) << big;
    EXPECT_NE(big.message().find("cluster.max_keys_per_request"), std::string::npos) << big;
    EXPECT_TRUE(x->Call(proto::PULL, 4, OwnKeys(30, 300)).ok());
  }
  std::filesystem::remove_all(spill);
}

// storage.max_resident_bytes = 0: half of the host's memory over the
// servers on the host, and never below the budget.
TEST_F(ServerTest, DefaultResidentCeilingIsDerivedFromTheHost) {
  ServerOptions so;
  so.config = config_;
  so.shard_map = map_;
  so.dense_init = {0};
  so.host_memory_bytes = uint64_t{8} << 30;
  so.servers_on_host = 4;
  auto x = StartServer(&hub_, "inproc://ps-default", so);
  ASSERT_NE(x, nullptr);
  EXPECT_EQ(x->server->stats().max_resident_bytes, uint64_t{1} << 30);
  so.config.mutable_storage()->set_max_resident_bytes(1000);
  so.config.mutable_storage()->set_memory_budget_bytes(2000);
  net::TransportOptions o;
  o.kind = net::TransportOptions::Kind::kInproc;
  o.hub = &hub_;
  auto st = net::CreateTransport(o);
  ASSERT_TRUE((*st)->Bind("inproc://ps-bad").ok());
  auto bad = Server::Create(so, std::move(*st));
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("storage.memory_budget_bytes"), std::string::npos) << bad.status();
}

TEST_F(ServerTest, SaveAndRestoreAreRefusedWithoutACheckpointRoot) {
  // This job has no checkpoint.dir: nothing may be saved or restored, even
  // into a directory that exists.
  const std::string dir = ::testing::TempDir();
  for (proto::Command command : {proto::SAVE, proto::RESTORE}) {
    net::Message m;
    m.header.set_command(command);
    if (command == proto::SAVE) {
      m.header.mutable_save()->set_dir(dir);
      m.header.mutable_save()->set_id(1);
    } else {
      m.header.mutable_restore()->set_dir("ckpt-00000001");
    }
    auto r = client_->Call(peer_, std::move(m), absl::Seconds(10));
    ASSERT_FALSE(r.ok()) << proto::Command_Name(command);
    EXPECT_NE(r.status().message().find("BAD_REQUEST"), std::string::npos) << r.status();
    EXPECT_NE(r.status().message().find("no checkpoint root"), std::string::npos) << r.status();
  }
  net::Message ping;
  ping.header.set_command(proto::PING);
  EXPECT_TRUE(client_->Call(peer_, std::move(ping), absl::Seconds(10)).ok());
}

TEST_F(ServerTest, DenseSlicePullPush) {
  net::Message m;
  m.header.set_command(proto::DENSE_PULL);
  m.header.set_dense_offset(100);
  m.header.set_dense_length(3);
  auto r = client_->Call(peer_, m, absl::Seconds(5));
  ASSERT_TRUE(r.ok()) << r.status();
  r->frames[0].Align<float>();
  EXPECT_EQ(r->frames[0].As<float>()[2], 3.0f);
  net::Message p;
  p.header.set_command(proto::DENSE_PUSH);
  p.header.set_dense_offset(100);
  p.header.set_dense_length(3);
  p.frames.push_back(net::Frame::FromVector(std::vector<float>{1, 1, 1}));
  ASSERT_TRUE(client_->Call(peer_, p, absl::Seconds(5)).ok());
  r = client_->Call(peer_, m, absl::Seconds(5));
  ASSERT_TRUE(r.ok());
  r->frames[0].Align<float>();
  EXPECT_EQ(r->frames[0].As<float>()[0], 0.0f);  // SGD lr 1
  // Outside the slice.
  m.header.set_dense_offset(99);
  EXPECT_FALSE(client_->Call(peer_, m, absl::Seconds(5)).ok());
}

// Read-only PULLs (evaluation) on one server, in memory (budget 0: the fast
// path for tables without admission) and with a memory budget (every table
// through the TieredStore, most rows in RocksDB). Table 0 has no default
// value (0), table 1 admission.default_value 0.25 without a threshold, table
// 2 admission by count with default -0.5.
class ReadOnlyPullTest : public ::testing::TestWithParam<uint64_t> {
 protected:
  static constexpr uint32_t kShards = 8;

  void SetUp() override {
    spill_ = (std::filesystem::temp_directory_path() /
              absl::StrCat("ember-readonly-", getpid(), "-", GetParam()))
                 .string();
    std::filesystem::remove_all(spill_);
    auto* t = config_.add_tables();
    t->set_name("emb");
    t->set_dim(4);
    t->mutable_optimizer()->set_kind(proto::OptimizerConfig::ADAGRAD);
    t = config_.add_tables();
    t->set_name("dflt");
    t->set_dim(2);
    t->mutable_admission()->set_default_value(0.25f);
    t = config_.add_tables();
    t->set_name("admit");
    t->set_dim(2);
    t->mutable_admission()->set_min_count(2);
    t->mutable_admission()->set_sketch_width(65536);
    t->mutable_admission()->set_default_value(-0.5f);
    config_.mutable_cluster()->set_num_logical_shards(kShards);
    config_.mutable_cluster()->set_server_threads(2);
    config_.mutable_model()->mutable_dense_optimizer()->set_kind(proto::OptimizerConfig::SGD);
    config_.mutable_storage()->set_memory_budget_bytes(GetParam());
    config_.mutable_storage()->set_spill_path(spill_);
    proto::ShardMap map;
    map.set_num_logical_shards(kShards);
    for (uint32_t s = 0; s < kShards; ++s) map.add_server_rank(0);

    net::TransportOptions o;
    o.kind = net::TransportOptions::Kind::kInproc;
    o.hub = &hub_;
    auto st = net::CreateTransport(o);
    ASSERT_TRUE((*st)->Bind("inproc://ro0").ok());
    ServerOptions so;
    so.config = config_;
    so.shard_map = map;
    so.dense_init = {0};
    auto server = Server::Create(so, std::move(*st));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    thread_ = std::thread([this] { ASSERT_TRUE(server_->Run().ok()); });
    client_ = net::Client::Create(std::move(*net::CreateTransport(o)));
    peer_ = *client_->Connect("inproc://ro0");
  }
  void TearDown() override {
    client_.reset();
    server_->Stop();
    thread_.join();
    server_.reset();
    std::filesystem::remove_all(spill_);
  }

  uint32_t Dim(uint32_t table) const { return config_.tables(table).dim(); }

  static std::vector<uint64_t> Keys(uint64_t first, size_t n) {
    std::vector<uint64_t> keys;
    for (uint64_t i = first; i < first + n; ++i) keys.push_back(proto::Mix64(i));
    return keys;
  }

  std::vector<float> Pull(uint32_t table, const std::vector<uint64_t>& keys, bool read_only) {
    net::Message m;
    m.header.set_command(proto::PULL);
    m.header.set_table(table);
    m.header.set_dim(Dim(table));
    m.header.set_num_keys(keys.size());
    m.header.set_read_only(read_only);
    m.frames.push_back(net::Frame::Copy(keys.data(), keys.size() * 8));
    auto r = client_->Call(peer_, std::move(m), absl::Seconds(30));
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return {};
    r->frames[0].Align<float>();
    auto v = r->frames[0].As<float>();
    return std::vector<float>(v.begin(), v.end());
  }

  void Push(uint32_t table, const std::vector<uint64_t>& keys, float g) {
    net::Message m;
    m.header.set_command(proto::PUSH);
    m.header.set_table(table);
    m.header.set_dim(Dim(table));
    m.header.set_num_keys(keys.size());
    m.frames.push_back(net::Frame::Copy(keys.data(), keys.size() * 8));
    const std::vector<float> grads(keys.size() * Dim(table), g);
    m.frames.push_back(net::Frame::Copy(grads.data(), grads.size() * 4));
    auto r = client_->Call(peer_, std::move(m), absl::Seconds(30));
    EXPECT_TRUE(r.ok()) << r.status();
  }

  proto::ServerStatsProto Stats() {
    net::Message m;
    m.header.set_command(proto::STATS);
    auto r = client_->Call(peer_, std::move(m), absl::Seconds(30));
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->header.stats_reply() : proto::ServerStatsProto();
  }

  // Resident rows plus, with a budget, RocksDB's estimate of its rows: exact
  // while no row was ever spilled, or without a budget.
  uint64_t Rows(uint32_t table) {
    proto::ServerStatsProto s = Stats();
    return s.tables(table).resident_rows() + s.tables(table).spilled_rows();
  }
  // Exact counters that any row created, read back or evicted moves.
  std::vector<uint64_t> Footprint(uint32_t table) {
    proto::TableStatsProto s = Stats().tables(table);
    return {s.resident_rows(), s.evictions(), s.spill_reads()};
  }

  void ResetTable(uint32_t table) {
    net::Message m;
    m.header.set_command(proto::RESET_TABLE);
    m.header.mutable_reset()->set_table(table);
    auto r = client_->Call(peer_, std::move(m), absl::Seconds(30));
    ASSERT_TRUE(r.ok()) << r.status();
  }

  std::string spill_;
  proto::JobConfig config_;
  net::InprocHub hub_;
  std::unique_ptr<Server> server_;
  std::thread thread_;
  std::unique_ptr<net::Client> client_;
  net::PeerId peer_;
};

TEST_P(ReadOnlyPullTest, UnseenKeysGiveTheDefaultAndCreateNoRow) {
  const std::vector<uint64_t> keys = Keys(1, 3000);
  const float defaults[3] = {0.0f, 0.25f, -0.5f};
  for (uint32_t t = 0; t < 3; ++t) {
    SCOPED_TRACE(config_.tables(t).name());
    const std::vector<float> v = Pull(t, keys, /*read_only=*/true);
    ASSERT_EQ(v.size(), keys.size() * Dim(t));
    for (size_t i = 0; i < v.size(); ++i) ASSERT_EQ(v[i], defaults[t]) << i;
    EXPECT_EQ(Rows(t), 0u);
    EXPECT_EQ(Stats().tables(t).not_admitted(), 0u) << "an evaluation's unseen keys are no refused admissions";
  }
  // A training pull of the same keys creates (and initialises) them, except
  // under admission; the read-only pulls did not count towards admission.
  const std::vector<float> trained = Pull(0, keys, /*read_only=*/false);
  EXPECT_EQ(Rows(0), keys.size());
  std::vector<float> init(4);
  storage::InitWeights(config_.tables(0).initializer(), keys[5], 0, init.data(), 4);
  for (int j = 0; j < 4; ++j) EXPECT_EQ(trained[5 * 4 + j], init[j]);
  Push(2, keys, 1.0f);  // first push of each key: counted, not admitted
  EXPECT_EQ(Rows(2), 0u);
}

TEST_P(ReadOnlyPullTest, ExistingRowsGiveTheirWeights) {
  const std::vector<uint64_t> keys = Keys(1, 3000);
  for (uint32_t t = 0; t < 3; ++t) {
    SCOPED_TRACE(config_.tables(t).name());
    Push(t, keys, 0.5f);
    Push(t, keys, 0.5f);  // table 2 admits at the second push
    if (GetParam() == 0) EXPECT_EQ(Rows(t), keys.size());
    const std::vector<float> before = Pull(t, keys, /*read_only=*/false);
    std::vector<uint64_t> mixed = keys;  // plus keys never seen, and a repeat
    const std::vector<uint64_t> unseen = Keys(100000, 50);
    mixed.insert(mixed.end(), unseen.begin(), unseen.end());
    mixed.push_back(keys[0]);
    const std::vector<float> v = Pull(t, mixed, /*read_only=*/true);
    ASSERT_EQ(v.size(), mixed.size() * Dim(t));
    const size_t d = Dim(t);
    EXPECT_EQ(std::vector<float>(v.begin(), v.begin() + keys.size() * d), before);
    for (size_t i = keys.size() * d; i < (keys.size() + unseen.size()) * d; ++i) {
      ASSERT_EQ(v[i], config_.tables(t).admission().default_value());
    }
    EXPECT_EQ(std::vector<float>(v.end() - d, v.end()), std::vector<float>(before.begin(), before.begin() + d));
    // With a budget the read-only pull may read rows back (and evict
    // others), as any lookup does; without one nothing may change.
    if (GetParam() == 0) EXPECT_EQ(Rows(t), keys.size());
    EXPECT_EQ(Pull(t, keys, /*read_only=*/false), before) << "the read-only pull changed a row";
  }
}

TEST_P(ReadOnlyPullTest, RowsStaleSinceAResetGiveTheDefaultAndStayStale) {
  const std::vector<uint64_t> keys = Keys(1, 3000);
  for (uint32_t t : {0u, 1u}) {
    SCOPED_TRACE(config_.tables(t).name());
    Push(t, keys, 0.5f);
    ResetTable(t);
    const std::vector<uint64_t> footprint = Footprint(t);
    const std::vector<float> v = Pull(t, keys, /*read_only=*/true);
    ASSERT_EQ(v.size(), keys.size() * Dim(t));
    for (size_t i = 0; i < v.size(); ++i) ASSERT_EQ(v[i], config_.tables(t).admission().default_value()) << i;
    EXPECT_EQ(Pull(t, keys, /*read_only=*/true), v) << "a read-only pull re-drew a stale row";
    EXPECT_EQ(Footprint(t), footprint) << "(resident rows, evictions, spill reads)";
    // Training touches them: fresh draws for generation 1.
    const std::vector<float> fresh = Pull(t, keys, /*read_only=*/false);
    std::vector<float> init(Dim(t));
    storage::InitWeights(config_.tables(t).initializer(), keys[7], 1, init.data(), Dim(t));
    for (uint32_t j = 0; j < Dim(t); ++j) EXPECT_EQ(fresh[7 * Dim(t) + j], init[j]);
    EXPECT_EQ(Pull(t, keys, /*read_only=*/true), fresh);
  }
}

TEST_P(ReadOnlyPullTest, ReadOnlyPushIsRefused) {
  const std::vector<uint64_t> keys = Keys(1, 10);
  net::Message m;
  m.header.set_command(proto::PUSH);
  m.header.set_table(0);
  m.header.set_dim(4);
  m.header.set_num_keys(keys.size());
  m.header.set_read_only(true);
  m.frames.push_back(net::Frame::Copy(keys.data(), keys.size() * 8));
  const std::vector<float> grads(keys.size() * 4, 1.0f);
  m.frames.push_back(net::Frame::Copy(grads.data(), grads.size() * 4));
  auto r = client_->Call(peer_, std::move(m), absl::Seconds(30));
  EXPECT_NE(r.status().message().find("read_only"), std::string::npos) << r.status();
  EXPECT_EQ(Rows(0), 0u);
}

// 0: in memory; 40 KB: roughly 400 of the 3000 rows of a table stay resident.
INSTANTIATE_TEST_SUITE_P(Budgets, ReadOnlyPullTest, ::testing::Values(uint64_t{0}, uint64_t{40000}),
                         [](const ::testing::TestParamInfo<uint64_t>& i) {
                           return i.param == 0 ? std::string("InMemory") : std::string("Tiered");
                         });

}  // namespace
}  // namespace ember::ps
