// The storage bars of the parameter server, in process: servers on an
// in-process transport, driven through PULL/PUSH and the storage commands
// (SAVE, RESTORE, RESET_TABLE, SWEEP, STATS) with CheckpointCoordinator.
// State is compared bit for bit: pulled weights, and every row's bytes
// (meta, weights, optimizer state) as written by a full checkpoint.
#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <cmath>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "net/client.h"
#include "proto/keys.h"
#include "ps/checkpoint_coordinator.h"
#include "ps/routing.h"
#include "ps/server.h"
#include "storage/checkpoint_files.h"
#include "storage/initializer.h"
#include "storage/optimizer.h"
#include "storage/sparse_table.h"
#include "storage/tiered_store.h"

namespace ember::ps {
namespace {

namespace fs = std::filesystem;

constexpr uint32_t kShards = 32;
constexpr uint32_t kDim = 8;
constexpr uint64_t kDense = 10;

proto::JobConfig BaseConfig() {
  proto::JobConfig c;
  auto* t = c.add_tables();
  t->set_name("emb");
  t->set_dim(kDim);
  t->mutable_optimizer()->set_kind(proto::OptimizerConfig::ADAGRAD);
  t->mutable_optimizer()->set_learning_rate(0.1f);
  t = c.add_tables();
  t->set_name("adam");
  t->set_dim(3);
  t->mutable_optimizer()->set_kind(proto::OptimizerConfig::ADAM);
  c.mutable_cluster()->set_num_logical_shards(kShards);
  c.mutable_cluster()->set_server_threads(2);
  c.mutable_model()->mutable_dense_optimizer()->set_kind(proto::OptimizerConfig::ADAM);
  return c;
}

// A scratch directory, removed at the end.
class Scratch {
 public:
  Scratch() {
    path_ = (fs::temp_directory_path() / absl::StrCat("ember-storage-", getpid(), "-", counter_++)).string();
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~Scratch() { fs::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  static inline int counter_ = 0;
  std::string path_;
};

// S servers on one in-process hub and a client connected to all of them.
class Servers {
 public:
  Servers(proto::JobConfig config, uint32_t num_servers, const std::string& spill_root)
      : config_(std::move(config)), router_(MakeMap(num_servers), num_servers) {
    config_.mutable_cluster()->set_num_servers(num_servers);
    config_.mutable_storage()->set_spill_path(spill_root);
    // Every test saves and restores below its scratch directory (the spill
    // root's parent): that is the job's checkpoint root.
    if (config_.checkpoint().dir().empty()) {
      config_.mutable_checkpoint()->set_dir(fs::path(spill_root).parent_path().string());
    }
    net::TransportOptions o;
    o.kind = net::TransportOptions::Kind::kInproc;
    o.hub = &hub_;
    const std::string tag = absl::StrCat(instance_++);
    for (uint32_t r = 0; r < num_servers; ++r) {
      auto t = net::CreateTransport(o);
      const std::string ep = absl::StrCat("inproc://st", tag, "-", r);
      EXPECT_TRUE((*t)->Bind(ep).ok());
      ServerOptions so;
      so.config = config_;
      so.shard_map = MakeMap(num_servers);
      so.rank = r;
      so.node_id = 1 + r;
      // The dense vector [0, kDense) cut evenly; the last 2 entries are
      // model state (not optimized), as with Dice.
      const uint64_t a = kDense * r / num_servers, b = kDense * (r + 1) / num_servers;
      so.dense_offset = a;
      for (uint64_t i = a; i < b; ++i) so.dense_init.push_back(0.5f + i);
      so.dense_state_begin = kDense - 2;
      so.dense_total = kDense;
      auto s = Server::Create(so, std::move(*t));
      EXPECT_TRUE(s.ok()) << s.status();
      servers_.push_back(std::move(*s));
      endpoints_.push_back(ep);
    }
    for (auto& s : servers_) threads_.emplace_back([p = s.get()] { EXPECT_TRUE(p->Run().ok()); });
    client_ = net::Client::Create(std::move(*net::CreateTransport(o)));
    CheckpointCoordinatorOptions co;
    co.config = config_;
    co.dense_total = kDense;
    for (const auto& ep : endpoints_) {
      peers_.push_back(*client_->Connect(ep));
      co.servers.push_back(peers_.back());
    }
    coordinator_ = std::make_unique<CheckpointCoordinator>(co, client_.get());
  }
  ~Servers() {
    coordinator_.reset();
    client_.reset();
    for (auto& s : servers_) s->Stop();
    for (auto& t : threads_) t.join();
  }

  static proto::ShardMap MakeMap(uint32_t n) {
    proto::ShardMap m;
    m.set_num_logical_shards(kShards);
    for (uint32_t s = 0; s < kShards; ++s) m.add_server_rank(s % n);
    return m;
  }

  uint32_t Dim(uint32_t table) const { return config_.tables(table).dim(); }

  // PULL of `keys` (any order, no repeats): values in the order of `keys`.
  std::vector<float> Pull(uint32_t table, const std::vector<uint64_t>& keys) {
    return Sparse(table, keys, nullptr, 0);
  }
  // PUSH of grads[i * dim ...] for keys[i].
  void Push(uint32_t table, const std::vector<uint64_t>& keys, const std::vector<float>& grads,
            uint64_t log_time = 0) {
    Sparse(table, keys, &grads, log_time);
  }

  std::vector<float> DensePull() {
    std::vector<float> all(kDense);
    for (uint32_t r = 0; r < servers_.size(); ++r) {
      const uint64_t a = kDense * r / servers_.size(), b = kDense * (r + 1) / servers_.size();
      net::Message m;
      m.header.set_command(proto::DENSE_PULL);
      m.header.set_dense_offset(a);
      m.header.set_dense_length(b - a);
      auto rep = client_->Call(peers_[r], std::move(m), absl::Seconds(30));
      EXPECT_TRUE(rep.ok()) << rep.status();
      if (!rep.ok()) return all;
      std::memcpy(all.data() + a, rep->frames[0].data(), (b - a) * sizeof(float));
    }
    return all;
  }

  void DensePush(const std::vector<float>& g) {
    for (uint32_t r = 0; r < servers_.size(); ++r) {
      const uint64_t a = kDense * r / servers_.size(), b = kDense * (r + 1) / servers_.size();
      net::Message m;
      m.header.set_command(proto::DENSE_PUSH);
      m.header.set_dense_offset(a);
      m.header.set_dense_length(b - a);
      m.frames.push_back(net::Frame::Copy(g.data() + a, (b - a) * sizeof(float)));
      auto rep = client_->Call(peers_[r], std::move(m), absl::Seconds(30));
      EXPECT_TRUE(rep.ok()) << rep.status();
    }
  }

  CheckpointCoordinator& coordinator() { return *coordinator_; }
  net::Client& client() { return *client_; }
  const std::vector<net::PeerId>& peers() const { return peers_; }
  const proto::JobConfig& config() const { return config_; }

  uint64_t ResidentRows(uint32_t table) {
    auto st = coordinator_->Stats();
    EXPECT_TRUE(st.ok()) << st.status();
    uint64_t n = 0;
    for (const auto& s : *st) n += s.tables(table).resident_rows();
    return n;
  }

 private:
  std::vector<float> Sparse(uint32_t table, const std::vector<uint64_t>& keys, const std::vector<float>* grads,
                            uint64_t log_time) {
    const uint32_t dim = Dim(table);
    std::vector<uint64_t> grouped;
    std::vector<uint32_t> begin, perm;
    router_.Group(keys, &grouped, &begin, &perm);
    std::vector<net::Client::CallId> calls;
    std::vector<uint32_t> servers;
    for (uint32_t r = 0; r < servers_.size(); ++r) {
      const uint32_t a = begin[r], b = begin[r + 1];
      if (a == b) continue;
      net::Message m;
      m.header.set_command(grads ? proto::PUSH : proto::PULL);
      m.header.set_table(table);
      m.header.set_dim(dim);
      m.header.set_num_keys(b - a);
      m.header.set_log_time(log_time);
      m.frames.push_back(net::Frame::Copy(grouped.data() + a, (b - a) * sizeof(uint64_t)));
      if (grads) {
        std::vector<float> g((b - a) * dim);
        for (uint32_t i = a; i < b; ++i) std::memcpy(&g[(i - a) * dim], &(*grads)[perm[i] * dim], dim * 4);
        m.frames.push_back(net::Frame::Copy(g.data(), g.size() * sizeof(float)));
      }
      calls.push_back(client_->Start(peers_[r], std::move(m)));
      servers.push_back(r);
    }
    std::vector<float> out(grads ? 0 : keys.size() * dim);
    for (size_t c = 0; c < calls.size(); ++c) {
      auto rep = client_->Wait(calls[c], absl::Seconds(60));
      EXPECT_TRUE(rep.ok()) << rep.status();
      if (!rep.ok() || grads) continue;
      const float* v = reinterpret_cast<const float*>(rep->frames[0].data());
      const uint32_t a = begin[servers[c]];
      for (uint32_t i = a; i < begin[servers[c] + 1]; ++i) {
        std::memcpy(&out[perm[i] * dim], v + (i - a) * dim, dim * 4);
      }
    }
    return out;
  }

  static inline int instance_ = 0;
  proto::JobConfig config_;
  net::InprocHub hub_;
  KeyRouter router_;
  std::vector<std::unique_ptr<Server>> servers_;
  std::vector<std::thread> threads_;
  std::vector<std::string> endpoints_;
  std::unique_ptr<net::Client> client_;
  std::vector<net::PeerId> peers_;
  std::unique_ptr<CheckpointCoordinator> coordinator_;
};

// Every row of a full checkpoint: (table, key) -> row bytes.
std::map<std::pair<uint32_t, uint64_t>, std::string> RowsOf(const std::string& dir) {
  std::map<std::pair<uint32_t, uint64_t>, std::string> rows;
  auto m = storage::ReadManifest(dir);
  EXPECT_TRUE(m.ok()) << m.status();
  if (!m.ok()) return rows;
  for (const auto& b : m->blocks()) {
    EXPECT_FALSE(b.delta()) << "RowsOf needs a full checkpoint";
    const size_t rb = m->tables(b.table()).row_bytes();
    std::string buf;
    EXPECT_TRUE(storage::ReadBlock(dir, b.file(), b.offset(), b.rows() * rb + b.tombstones() * 8, b.crc32c(), &buf)
                    .ok());
    for (uint64_t i = 0; i < b.rows(); ++i) {
      std::string row = buf.substr(i * rb, rb);
      uint64_t key;
      std::memcpy(&key, row.data(), 8);
      EXPECT_TRUE(rows.emplace(std::make_pair(b.table(), key), row).second) << "key " << key << " twice";
    }
  }
  return rows;
}

// Deterministic training traffic: Zipf-ish keys over a universe, pulls then
// pushes of gradients derived from the pulled values.
class Traffic {
 public:
  explicit Traffic(uint64_t seed, uint64_t universe = 20000) : rng_(seed), universe_(universe) {}

  std::vector<uint64_t> Batch(size_t n) {
    std::vector<uint64_t> keys;
    std::set<uint64_t> seen;
    while (keys.size() < n) {
      // Zipf-like: a power of a uniform concentrates on small indices.
      const double u = std::uniform_real_distribution<double>(0, 1)(rng_);
      const uint64_t idx = static_cast<uint64_t>(std::pow(u, 3.0) * universe_);
      const uint64_t key = proto::Mix64(idx + 1);
      if (seen.insert(key).second) keys.push_back(key);
    }
    return keys;
  }

  // n steps of pull + push on both tables; every pulled value is appended to
  // *trace.
  void Run(Servers& s, int steps, std::vector<float>* trace, size_t batch = 400) {
    for (int i = 0; i < steps; ++i) {
      for (uint32_t t = 0; t < 2; ++t) {
        std::vector<uint64_t> keys = Batch(batch);
        std::vector<float> v = s.Pull(t, keys);
        if (trace) trace->insert(trace->end(), v.begin(), v.end());
        std::vector<float> g(v.size());
        for (size_t j = 0; j < v.size(); ++j) g[j] = 0.5f * v[j] + 0.01f * static_cast<float>((j + i) % 7) - 0.03f;
        s.Push(t, keys, g);
      }
      std::vector<float> dg(kDense);
      for (uint64_t j = 0; j < kDense; ++j) dg[j] = 0.1f * ((i + j) % 3) - 0.1f;
      s.DensePush(dg);
    }
  }

  std::vector<uint64_t> Universe() const {
    std::vector<uint64_t> keys;
    for (uint64_t i = 0; i <= universe_; ++i) keys.push_back(proto::Mix64(i + 1));
    return keys;
  }

 private:
  std::mt19937_64 rng_;
  uint64_t universe_;
};

void ExpectSameBits(const std::vector<float>& a, const std::vector<float>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  size_t diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff += std::memcmp(&a[i], &b[i], 4) != 0;
  EXPECT_EQ(diff, 0u) << what << ": " << diff << " of " << a.size() << " floats differ";
}

void ExpectSameRows(const std::string& dir_a, const std::string& dir_b) {
  auto a = RowsOf(dir_a), b = RowsOf(dir_b);
  ASSERT_EQ(a.size(), b.size());
  ASSERT_GT(a.size(), 0u);
  size_t diff = 0;
  for (const auto& [k, row] : a) {
    auto it = b.find(k);
    if (it == b.end() || it->second != row) ++diff;
  }
  EXPECT_EQ(diff, 0u) << diff << " of " << a.size() << " rows differ between " << dir_a << " and " << dir_b;
}

std::string Save(Servers& s, const std::string& root, bool incremental, bool sweep = false) {
  auto m = s.coordinator().Save(root, incremental, sweep);
  EXPECT_TRUE(m.ok()) << m.status();
  if (!m.ok()) return "";
  return (fs::path(root) / storage::CheckpointDirName(m->id())).string();
}

// A fresh copy of checkpoint directory `ckpt` as <root>/ckpt-00000001
// (whatever was under root before is removed); returns the copy.
std::string CopyCheckpoint(const std::string& ckpt, const std::string& root) {
  const std::string copy = root + "/" + storage::CheckpointDirName(1);
  fs::remove_all(root);
  fs::create_directories(copy);
  for (const auto& e : fs::directory_iterator(ckpt)) fs::copy(e.path(), copy + "/" + e.path().filename().string());
  return copy;
}

// A full checkpoint of 2 servers after `pushes` rounds of `traffic`, saved
// under root/ckpt; returns its directory.
std::string TrainedCheckpoint(const proto::JobConfig& c, Traffic& traffic, int pushes, const std::string& root) {
  Servers s(c, 2, root + "/spill");
  traffic.Run(s, pushes, nullptr);
  return Save(s, root + "/ckpt", false);
}

// ---------------------------------------------------------------- tests

TEST(StorageTest, BudgetOfAThirdGivesBitIdenticalPulls) {
  Scratch dir;
  std::vector<float> plain_trace, budget_trace;
  uint64_t rows = 0;
  {
    Servers s(BaseConfig(), 1, dir.path() + "/spill-a");
    Traffic(7).Run(s, 60, &plain_trace);
    rows = s.ResidentRows(0) + s.ResidentRows(1);
    Save(s, dir.path() + "/a", false);
  }
  proto::JobConfig c = BaseConfig();
  // A third of what the same rows take unbudgeted.
  storage::TableSpec e(c.tables(0)), a(c.tables(1));
  const uint64_t table_bytes = rows * (storage::ResidentRowCost(e) + storage::ResidentRowCost(a)) / 2;
  c.mutable_storage()->set_memory_budget_bytes(table_bytes / 3);
  {
    Servers s(c, 1, dir.path() + "/spill-b");
    Traffic(7).Run(s, 60, &budget_trace);
    auto st = s.coordinator().Stats();
    ASSERT_TRUE(st.ok());
    const auto& t0 = (*st)[0].tables(0);
    EXPECT_GT(t0.evictions(), 0u);
    EXPECT_GT(t0.spill_reads(), 0u) << "rows were read back from RocksDB";
    EXPECT_GT(t0.spilled_rows(), 0u);
    EXPECT_LE(s.ResidentRows(0) + s.ResidentRows(1), rows / 2);
    Save(s, dir.path() + "/b", false);
  }
  ExpectSameBits(plain_trace, budget_trace, "pulled values");
  ExpectSameRows(dir.path() + "/a/" + storage::CheckpointDirName(1), dir.path() + "/b/" + storage::CheckpointDirName(1));
}

TEST(StorageTest, RoundTripIntoFreshServers) {
  for (uint64_t budget : {uint64_t{0}, uint64_t{300000}}) {
    SCOPED_TRACE(absl::StrCat("budget ", budget));
    Scratch dir;
    proto::JobConfig c = BaseConfig();
    c.mutable_storage()->set_memory_budget_bytes(budget);
    Traffic traffic(11);
    const std::vector<uint64_t> all = traffic.Universe();
    std::vector<float> before0, before1, dense;
    std::string ckpt;
    {
      Servers s(c, 2, dir.path() + "/spill-a");
      traffic.Run(s, 40, nullptr);
      ckpt = Save(s, dir.path() + "/ckpt", false);
      before0 = s.Pull(0, all);  // creates the untouched keys; after the save
      before1 = s.Pull(1, all);
      dense = s.DensePull();
    }
    Servers fresh(c, 2, dir.path() + "/spill-b");
    auto rows = fresh.coordinator().Restore(ckpt);
    ASSERT_TRUE(rows.ok()) << rows.status();
    EXPECT_GT(*rows, 0u);
    ExpectSameBits(fresh.Pull(0, all), before0, "table 0 after restore");
    ExpectSameBits(fresh.Pull(1, all), before1, "table 1 after restore");
    ExpectSameBits(fresh.DensePull(), dense, "dense after restore");
    // Optimizer state too: a full save of the restored servers, before any
    // new row, equals the original... the pulls above created rows, so
    // compare on a second restore instead.
    Servers again(c, 2, dir.path() + "/spill-c");
    ASSERT_TRUE(again.coordinator().Restore(ckpt).ok());
    const std::string resaved = Save(again, dir.path() + "/resave", false);
    ExpectSameRows(ckpt, resaved);
  }
}

TEST(StorageTest, BasePlusThreeIncrementsRestoresExactly) {
  Scratch dir;
  proto::JobConfig c = BaseConfig();
  c.mutable_tables(0)->mutable_expiry()->set_after_pushes(15);  // the sweeps leave tombstones
  c.mutable_storage()->set_memory_budget_bytes(400000);
  const std::string root = dir.path() + "/ckpt";
  Traffic traffic(5);
  std::string last, reference;
  {
    Servers s(c, 2, dir.path() + "/spill-a");
    traffic.Run(s, 20, nullptr);
    Save(s, root, /*incremental=*/false);
    for (int i = 0; i < 3; ++i) {
      traffic.Run(s, 10, nullptr);
      last = Save(s, root, /*incremental=*/true, /*sweep=*/true);
    }
    auto m = storage::ReadManifest(last);
    ASSERT_TRUE(m.ok());
    EXPECT_EQ(m->parent_id(), 3u);
    uint64_t tombs = 0, delta_blocks = 0;
    for (int id = 2; id <= 4; ++id) {
      auto mi = storage::ReadManifest(root + "/" + storage::CheckpointDirName(id));
      for (const auto& b : mi->blocks()) {
        tombs += b.tombstones();
        delta_blocks += b.delta();
      }
    }
    EXPECT_GT(tombs, 0u) << "expired rows travel as tombstones";
    EXPECT_EQ(delta_blocks, 3u * 2 * kShards);
    // The reference: a full checkpoint of the same state.
    reference = Save(s, dir.path() + "/full", false);
  }
  for (uint32_t servers : {2u, 3u}) {
    Servers fresh(c, servers, dir.path() + "/spill-" + std::to_string(servers));
    auto rows = fresh.coordinator().Restore(last);
    ASSERT_TRUE(rows.ok()) << rows.status();
    ExpectSameRows(reference, Save(fresh, dir.path() + "/re" + std::to_string(servers), false));
  }
}

TEST(StorageTest, TwoServersSavedRestoreOnThreeAndOne) {
  Scratch dir;
  proto::JobConfig c = BaseConfig();
  Traffic traffic(3);
  const std::vector<uint64_t> all = traffic.Universe();
  std::string ckpt;
  std::vector<float> dense;
  {
    Servers s(c, 2, dir.path() + "/spill");
    traffic.Run(s, 30, nullptr);
    ckpt = Save(s, dir.path() + "/ckpt", false);
    dense = s.DensePull();
  }
  std::vector<float> reference;
  for (uint32_t n : {3u, 1u}) {
    SCOPED_TRACE(absl::StrCat(n, " servers"));
    Servers fresh(c, n, dir.path() + "/spill" + std::to_string(n));
    ASSERT_TRUE(fresh.coordinator().Restore(ckpt).ok());
    ExpectSameRows(ckpt, Save(fresh, dir.path() + "/re" + std::to_string(n), false));
    ExpectSameBits(fresh.DensePull(), dense, "dense");
    const std::vector<float> v = fresh.Pull(0, all);
    if (reference.empty()) {
      reference = v;
    } else {
      ExpectSameBits(v, reference, "pulls on 3 and on 1 servers");
    }
  }
}

// Every push adds the same gradient to every key, so a row's state is a
// function of how many pushes it has seen: replaying `count` steps of the
// optimizer from the initial row must give its weights and state exactly.
TEST(StorageTest, CheckpointDuringPushesIsOneCut) {
  Scratch dir;
  proto::JobConfig c = BaseConfig();
  c.mutable_cluster()->set_server_threads(3);
  c.mutable_checkpoint()->set_keep(10);
  Servers s(c, 2, dir.path() + "/spill");
  std::vector<uint64_t> keys;
  for (uint64_t i = 0; i < 3000; ++i) keys.push_back(proto::Mix64(i + 100));
  const std::vector<float> g(keys.size() * kDim, 0.25f);
  std::atomic<bool> stop{false};
  std::atomic<int> pushes{0};
  std::thread pusher([&] {
    while (!stop.load()) {
      s.Push(0, keys, g);
      pushes.fetch_add(1);
    }
  });
  std::vector<std::string> ckpts;
  while (pushes.load() < 3) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  for (int i = 0; i < 4; ++i) {
    ckpts.push_back(Save(s, dir.path() + "/ckpt", false));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  stop.store(true);
  pusher.join();
  storage::TableSpec spec(c.tables(0));
  for (const std::string& ckpt : ckpts) {
    Servers fresh(c, 2, dir.path() + "/spill-f");
    auto restored = fresh.coordinator().Restore(ckpt);
    ASSERT_TRUE(restored.ok()) << restored.status();
    const std::string re = Save(fresh, dir.path() + "/re", false);
    auto rows = RowsOf(re);
    std::set<uint32_t> counts[2];  // per server: each server cuts its own push stream
    size_t torn = 0;
    for (const auto& [k, row] : rows) {
      if (k.first != 0) continue;
      storage::RowMeta meta;
      std::memcpy(&meta, row.data(), sizeof(meta));
      counts[proto::ShardOf(k.second, kShards) % 2].insert(meta.count);
      std::vector<uint8_t> expect(spec.row_bytes());
      spec.InitRow(k.second, 0, expect.data());
      for (uint32_t n = 0; n < meta.count; ++n) {
        spec.rule().Apply(storage::TableSpec::Weights(expect.data()), spec.State(expect.data()), g.data(), kDim);
      }
      constexpr size_t kMeta = sizeof(storage::RowMeta);
      torn += std::memcmp(row.data() + kMeta, expect.data() + kMeta, spec.row_bytes() - kMeta) != 0;
    }
    EXPECT_EQ(torn, 0u) << ckpt << ": rows whose weights and state are not those of their push count";
    EXPECT_EQ(counts[0].size(), 1u) << ckpt << ": a server's checkpoint cuts its push stream at one point";
    EXPECT_EQ(counts[1].size(), 1u) << ckpt << ": a server's checkpoint cuts its push stream at one point";
    fs::remove_all(dir.path() + "/re");
  }
}

// Admin commands run off the I/O thread: while a (throttled) SAVE writes,
// the server answers PING, LIST_CHECKPOINTS and dense requests; a STATS sent
// meanwhile waits for the SAVE instead of being refused; a SAVE naming a path
// outside the checkpoint root is refused at once.
TEST(StorageTest, ServerAnswersWhileASaveIsInProgress) {
  Scratch dir;
  proto::JobConfig c = BaseConfig();
  // About 3 s for ~400 KB of rows: long enough to talk to the server meanwhile.
  c.mutable_storage()->set_checkpoint_bytes_per_sec(128 << 10);
  Servers s(c, 1, dir.path() + "/spill");
  std::vector<uint64_t> keys;
  for (uint64_t i = 0; i < 3000; ++i) keys.push_back(proto::Mix64(i + 1));
  s.Push(0, keys, std::vector<float>(keys.size() * kDim, 0.25f));
  const std::vector<float> dense_before = s.DensePull();

  std::atomic<bool> saved{false};
  absl::StatusOr<proto::CheckpointManifest> manifest;
  std::thread save([&] {
    manifest = s.coordinator().Save(dir.path() + "/ckpt", false, false);
    saved.store(true);
  });
  struct Joiner {
    std::thread& t;
    ~Joiner() {
      if (t.joinable()) t.join();
    }
  } joiner{save};
  // Wait until the server has begun writing.
  const std::string part = dir.path() + "/ckpt/" + storage::CheckpointDirName(1) + "/t0-r0.rows";
  while (!fs::exists(part) && !saved.load()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_FALSE(saved.load()) << "the SAVE ended before it could be observed: " << manifest.status();

  auto call = [&](proto::Command command) {
    net::Message m;
    m.header.set_command(command);
    if (command == proto::LIST_CHECKPOINTS) m.header.mutable_list()->set_root("ckpt");
    return s.client().Call(s.peers()[0], std::move(m), absl::Seconds(60));
  };
  // STATS is queued behind the SAVE; start it now, collect it at the end.
  net::Message stats;
  stats.header.set_command(proto::STATS);
  const net::Client::CallId stats_call = s.client().Start(s.peers()[0], std::move(stats));

  absl::StatusOr<net::Message> ping = call(proto::PING);
  ASSERT_TRUE(ping.ok()) << ping.status();
  EXPECT_FALSE(saved.load()) << "PING was answered only after the SAVE";
  absl::StatusOr<net::Message> list = call(proto::LIST_CHECKPOINTS);
  ASSERT_TRUE(list.ok()) << list.status();
  ASSERT_EQ(list->header.list_reply().checkpoints_size(), 1);
  EXPECT_EQ(list->header.list_reply().checkpoints(0).dir(), "ckpt/" + storage::CheckpointDirName(1));
  EXPECT_FALSE(list->header.list_reply().checkpoints(0).complete());  // still being written
  EXPECT_EQ(s.DensePull(), dense_before);
  {
    net::Message m;
    m.header.set_command(proto::SAVE);
    m.header.mutable_save()->set_dir(dir.path());  // absolute
    absl::StatusOr<net::Message> r = s.client().Call(s.peers()[0], std::move(m), absl::Seconds(60));
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("BAD_REQUEST"), std::string::npos) << r.status();
    EXPECT_NE(r.status().message().find("absolute"), std::string::npos) << r.status();
  }
  EXPECT_FALSE(saved.load()) << "the SAVE ended before the requests above were answered";

  save.join();
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  absl::StatusOr<net::Message> st = s.client().Wait(stats_call);
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->header.stats_reply().tables(0).resident_rows(), keys.size());
}

TEST(StorageTest, DamagedCheckpointIsRefusedAndNothingLoads) {
  Scratch dir;
  proto::JobConfig c = BaseConfig();
  Traffic traffic(9);
  const std::vector<uint64_t> all = traffic.Universe();
  const std::string ckpt = TrainedCheckpoint(c, traffic, 10, dir.path());
  Servers target(c, 2, dir.path() + "/spill-t");
  traffic.Run(target, 3, nullptr);
  const std::vector<float> state = target.Pull(0, all);
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(ckpt)) files.push_back(e.path().filename().string());
  ASSERT_GE(files.size(), 6u);  // 2 tables x 2 servers, 2 dense, MANIFEST
  for (const std::string& f : files) {
    SCOPED_TRACE(f);
    const std::string copy = CopyCheckpoint(ckpt, dir.path() + "/bad");
    const std::string victim = copy + "/" + f;
    const auto size = fs::file_size(victim);
    if (size == 0) continue;
    {
      std::fstream io(victim, std::ios::in | std::ios::out | std::ios::binary);
      io.seekg(static_cast<std::streamoff>(size / 2));
      char ch;
      io.read(&ch, 1);
      ch ^= 0x10;
      io.seekp(static_cast<std::streamoff>(size / 2));
      io.write(&ch, 1);
    }
    auto r = target.coordinator().Restore(copy);
    ASSERT_FALSE(r.ok()) << "a flipped byte in " << f << " was loaded";
    EXPECT_NE(std::string(r.status().message()).find(f), std::string::npos) << r.status();
    // Truncated.
    fs::resize_file(victim, size - 1);
    r = target.coordinator().Restore(copy);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(std::string(r.status().message()).find(f), std::string::npos) << r.status();
    // Missing.
    fs::remove(victim);
    r = target.coordinator().Restore(copy);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(std::string(r.status().message()).find(f), std::string::npos) << r.status();
  }
  ExpectSameBits(target.Pull(0, all), state, "a refused restore changes nothing");
  // A checkpoint of another config is refused, naming the difference.
  proto::JobConfig other = c;
  other.mutable_tables(0)->set_dim(kDim + 1);
  Servers wrong(other, 1, dir.path() + "/spill-w");
  auto r = wrong.coordinator().Restore(ckpt);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("dim"), std::string::npos) << r.status();
}

// Crafted manifests whose checksums are all valid (the manifest is
// rewritten with WriteManifest; data blocks are untouched or sized so that
// their CRC still matches): counts that overflow a block's size, blocks
// outside their file, dense slices out of range or overlapping. Each is
// refused before anything is read or dropped, naming the field, and the
// server keeps its rows and dense values and goes on serving.
TEST(StorageTest, CraftedCheckpointsWithValidChecksumsAreRefused) {
  Scratch dir;
  proto::JobConfig c = BaseConfig();
  Traffic traffic(11);
  const std::vector<uint64_t> all = traffic.Universe();
  const std::string ckpt = TrainedCheckpoint(c, traffic, 10, dir.path());
  absl::StatusOr<proto::CheckpointManifest> good = storage::ReadManifest(ckpt);
  ASSERT_TRUE(good.ok()) << good.status();
  ASSERT_GE(good->dense_size(), 2);
  int with_rows = -1;  // a block with rows, for the edits that keep its bytes
  for (int i = 0; i < good->blocks_size() && with_rows < 0; ++i) {
    if (good->blocks(i).rows() > 0) with_rows = i;
  }
  ASSERT_GE(with_rows, 0);

  Servers target(c, 2, dir.path() + "/spill-t");
  traffic.Run(target, 3, nullptr);
  const std::vector<float> rows_before = target.Pull(0, all);
  const std::vector<float> dense_before = target.DensePull();

  struct Craft {
    const char* name;
    const char* expect;  // in the error
    std::function<void(proto::CheckpointManifest*)> edit;
  };
  const uint64_t kHuge = uint64_t{1} << 61;  // x 8 bytes wraps to 0
  const std::vector<Craft> crafts = {
      {"tombstones that overflow to an empty block (crc of nothing: 0)", "overflows",
       [&](proto::CheckpointManifest* m) {
         proto::ShardBlock* b = m->mutable_blocks(0);
         b->set_rows(0);
         b->set_tombstones(kHuge);
         b->set_crc32c(0);
       }},
      {"a huge tombstone count beside the block's real rows", "tombstones",
       [&](proto::CheckpointManifest* m) { m->mutable_blocks(with_rows)->set_tombstones(kHuge - 1); }},
      {"rows past the end of the file", "do not fit",
       [&](proto::CheckpointManifest* m) {
         proto::ShardBlock* b = m->mutable_blocks(with_rows);
         b->set_rows(b->rows() + 1000000);
       }},
      {"a block offset past the end of the file", "offset",
       [&](proto::CheckpointManifest* m) { m->mutable_blocks(with_rows)->set_offset(uint64_t{1} << 62); }},
      {"a block in a file the manifest does not list", "does not list",
       [&](proto::CheckpointManifest* m) { m->mutable_blocks(0)->set_file("../../etc/passwd"); }},
      {"a shard beyond num_logical_shards", "field shard",
       [&](proto::CheckpointManifest* m) { m->mutable_blocks(0)->set_shard(1u << 30); }},
      {"row_bytes too small for a row", "row_bytes",
       [&](proto::CheckpointManifest* m) { m->mutable_tables(0)->set_row_bytes(8); }},
      {"a dense slice whose offset + length overflows", "outside",
       [&](proto::CheckpointManifest* m) { m->mutable_dense(1)->set_offset(~uint64_t{0} - 1); }},
      {"a dense slice past dense_total", "outside",
       [&](proto::CheckpointManifest* m) { m->mutable_dense(1)->set_length(m->dense_total() + 1); }},
      {"overlapping dense slices", "overlap",
       [&](proto::CheckpointManifest* m) { m->mutable_dense(1)->set_offset(m->dense(0).offset()); }},
      {"a dense slice longer than its bytes", "cannot hold",
       [&](proto::CheckpointManifest* m) {
         proto::DenseBlock* d = m->mutable_dense(0);
         d->set_bytes(4 * d->length() - 4);
       }},
      {"more trained entries than entries", "trained",
       [&](proto::CheckpointManifest* m) { m->mutable_dense(0)->set_trained(m->dense(0).length() + 1); }},
  };
  for (const Craft& craft : crafts) {
    SCOPED_TRACE(craft.name);
    const std::string copy = CopyCheckpoint(ckpt, dir.path() + "/crafted");
    proto::CheckpointManifest m = *good;
    craft.edit(&m);
    ASSERT_TRUE(storage::WriteManifest(copy, m).ok());
    // The reader's own view: refused at once, naming the field.
    absl::Status bounds = storage::CheckManifestBounds(copy, m);
    auto r = target.coordinator().Restore(copy);
    ASSERT_FALSE(r.ok()) << "loaded";
    EXPECT_NE(std::string(r.status().message()).find(craft.expect), std::string::npos) << r.status();
    EXPECT_NE(std::string(r.status().message()).find(copy), std::string::npos) << r.status();
    EXPECT_EQ(bounds.code(), absl::StatusCode::kDataLoss) << bounds;
  }
  ExpectSameBits(target.Pull(0, all), rows_before, "refused restores change no row");
  ExpectSameBits(target.DensePull(), dense_before, "nor the dense values");
  // And the servers still train and restore the real checkpoint.
  traffic.Run(target, 1, nullptr);
  auto r = target.coordinator().Restore(ckpt);
  ASSERT_TRUE(r.ok()) << r.status();
}

TEST(StorageTest, AdmissionByCountAndByProbability) {
  Scratch dir;
  proto::JobConfig c = BaseConfig();
  auto* a = c.mutable_tables(0)->mutable_admission();
  a->set_min_count(3);
  a->set_sketch_width(1 << 16);
  a->set_default_value(0.0f);
  auto* p = c.mutable_tables(1)->mutable_admission();
  p->set_probability(0.25f);
  Servers s(c, 2, dir.path() + "/spill");
  std::vector<uint64_t> keys;
  for (uint64_t i = 0; i < 2000; ++i) keys.push_back(proto::Mix64(i + 7));
  const std::vector<float> g(keys.size() * kDim, 1.0f);
  for (int round = 1; round <= 3; ++round) {
    const std::vector<float> v = s.Pull(0, keys);
    EXPECT_EQ(std::count(v.begin(), v.end(), 0.0f), static_cast<long>(v.size())) << "not admitted: default value";
    EXPECT_EQ(s.ResidentRows(0), round == 1 ? 0u : 0u);
    s.Push(0, keys, g);
  }
  // The third push admitted every key (and applied its gradient).
  EXPECT_EQ(s.ResidentRows(0), keys.size());
  const std::vector<float> v = s.Pull(0, keys);
  EXPECT_EQ(std::count(v.begin(), v.end(), 0.0f), 0);
  auto st = s.coordinator().Stats();
  uint64_t not_admitted = 0;
  for (const auto& x : *st) not_admitted += x.tables(0).not_admitted();
  EXPECT_EQ(not_admitted, 3 * keys.size() + 2 * keys.size());  // 3 pulls, 2 pushes

  // Probability 0.25: about a quarter get a row at their first push.
  s.Push(1, keys, std::vector<float>(keys.size() * 3, 1.0f));
  const uint64_t admitted = s.ResidentRows(1);
  EXPECT_GT(admitted, keys.size() / 8);
  EXPECT_LT(admitted, keys.size() / 2);
}

TEST(StorageTest, ExpiryByPushes) {
  Scratch dir;
  proto::JobConfig c = BaseConfig();
  c.mutable_tables(0)->mutable_expiry()->set_after_pushes(5);
  c.mutable_storage()->set_memory_budget_bytes(100000);  // some expired rows are in RocksDB
  Servers s(c, 1, dir.path() + "/spill");
  std::vector<uint64_t> old_keys, live_keys;
  for (uint64_t i = 0; i < 1500; ++i) old_keys.push_back(proto::Mix64(i + 1));
  for (uint64_t i = 0; i < 300; ++i) live_keys.push_back(proto::Mix64(i + 100000));
  s.Push(0, old_keys, std::vector<float>(old_keys.size() * kDim, 1.0f));
  const std::vector<float> trained = s.Pull(0, old_keys);
  for (int i = 0; i < 10; ++i) s.Push(0, live_keys, std::vector<float>(live_keys.size() * kDim, 1.0f));
  auto removed = s.coordinator().Sweep();
  ASSERT_TRUE(removed.ok()) << removed.status();
  EXPECT_EQ(*removed, old_keys.size());
  EXPECT_EQ(s.ResidentRows(0), live_keys.size());
  // An expired key starts again from its initial value.
  storage::TableSpec spec(c.tables(0));
  std::vector<float> fresh(kDim);
  storage::InitWeights(c.tables(0).initializer(), old_keys[0], 0, fresh.data(), kDim);
  const std::vector<float> again = s.Pull(0, {old_keys[0]});
  ExpectSameBits(again, fresh, "expired key re-initialised");
  EXPECT_NE(std::memcmp(trained.data(), fresh.data(), kDim * 4), 0);
}

// A server whose push counter crosses 2^32 (here: restored from a checkpoint
// whose manifest says 2^32 - 3) still judges rows by their true push_seq. With a
// 32-bit counter the push_seq wrapped: rows pushed after the wrap looked older
// than the incremental cut and were left out of the delta, and a row pushed
// 2^32 pushes ago looked 4 pushes old and did not expire.
TEST(StorageTest, PushCounterPast2To32) {
  Scratch dir;
  proto::JobConfig c = BaseConfig();
  c.mutable_tables(0)->mutable_expiry()->set_after_pushes(5);
  const std::string root = dir.path() + "/ckpt";
  std::vector<uint64_t> a, b1, b2;
  for (uint64_t i = 0; i < 200; ++i) a.push_back(proto::Mix64(i + 1));
  for (uint64_t i = 0; i < 150; ++i) b1.push_back(proto::Mix64(i + 10000));
  for (uint64_t i = 0; i < 100; ++i) b2.push_back(proto::Mix64(i + 20000));
  auto ones = [](const std::vector<uint64_t>& k) { return std::vector<float>(k.size() * kDim, 1.0f); };
  std::string base;
  {
    Servers s(c, 1, dir.path() + "/spill-a");
    s.Push(0, a, ones(a));  // push_seq 1
    base = Save(s, root, false);
  }
  auto m = storage::ReadManifest(base);
  ASSERT_TRUE(m.ok()) << m.status();
  const uint64_t start = (uint64_t{1} << 32) - 3;
  m->set_push_seq(start);
  ASSERT_TRUE(storage::WriteManifest(base, *m).ok());

  Servers s(c, 1, dir.path() + "/spill-b");
  ASSERT_TRUE(s.coordinator().Restore(base).ok());
  s.Push(0, b1, ones(b1));                              // push_seq 2^32 - 2
  for (int i = 0; i < 7; ++i) s.Push(0, b2, ones(b2));  // push_seq 2^32 - 1 .. 2^32 + 5
  const std::string delta = Save(s, root, true);
  auto dm = storage::ReadManifest(delta);
  ASSERT_TRUE(dm.ok()) << dm.status();
  EXPECT_EQ(dm->push_seq(), start + 8);
  uint64_t delta_rows = 0;
  for (const auto& blk : dm->blocks()) {
    EXPECT_TRUE(blk.delta());
    if (blk.table() == 0) delta_rows += blk.rows();
  }
  EXPECT_EQ(delta_rows, b1.size() + b2.size()) << "every row pushed after the base's cut, and only those";

  // a: last pushed 2^32 + 4 pushes ago; b1: 7 pushes ago; b2: now.
  auto removed = s.coordinator().Sweep();
  ASSERT_TRUE(removed.ok()) << removed.status();
  EXPECT_EQ(*removed, a.size() + b1.size());
  EXPECT_EQ(s.ResidentRows(0), b2.size());
}

TEST(StorageTest, ExpiryByLogDays) {
  Scratch dir;
  proto::JobConfig c = BaseConfig();
  c.mutable_tables(0)->mutable_expiry()->set_after_days(7);
  Servers s(c, 1, dir.path() + "/spill");
  const uint64_t day = 86400, t0 = 1700000000;
  std::vector<uint64_t> a, b;
  for (uint64_t i = 0; i < 500; ++i) a.push_back(proto::Mix64(i + 1));
  for (uint64_t i = 0; i < 200; ++i) b.push_back(proto::Mix64(i + 5000));
  s.Push(0, a, std::vector<float>(a.size() * kDim, 1.0f), t0);
  s.Push(0, b, std::vector<float>(b.size() * kDim, 1.0f), t0 + 5 * day);
  auto removed = s.coordinator().Sweep();
  ASSERT_TRUE(removed.ok());
  EXPECT_EQ(*removed, 0u) << "5 days is within 7";
  s.Push(0, b, std::vector<float>(b.size() * kDim, 1.0f), t0 + 9 * day);
  removed = s.coordinator().Sweep();
  ASSERT_TRUE(removed.ok());
  EXPECT_EQ(*removed, a.size()) << "a was last seen 9 days before the newest log time";
  EXPECT_EQ(s.ResidentRows(0), b.size());
}

TEST(StorageTest, ResetReinitialisesResidentAndSpilledRows) {
  Scratch dir;
  proto::JobConfig c = BaseConfig();
  c.mutable_storage()->set_memory_budget_bytes(60000);  // most rows spill
  Servers s(c, 2, dir.path() + "/spill");
  std::vector<uint64_t> keys;
  for (uint64_t i = 0; i < 2000; ++i) keys.push_back(proto::Mix64(i + 3));
  for (int i = 0; i < 3; ++i) s.Push(0, keys, std::vector<float>(keys.size() * kDim, 0.5f));
  s.Push(1, keys, std::vector<float>(keys.size() * 3, 0.5f));
  const std::vector<float> trained1 = s.Pull(1, keys);
  auto generation = s.coordinator().ResetTable(0);
  ASSERT_TRUE(generation.ok()) << generation.status();
  EXPECT_EQ(*generation, 1u);
  // Every row of table 0 reads as a fresh draw for generation 1; table 1 keeps its.
  const std::vector<float> after = s.Pull(0, keys);
  std::vector<float> expect(keys.size() * kDim);
  for (size_t i = 0; i < keys.size(); ++i) {
    storage::InitWeights(c.tables(0).initializer(), keys[i], 1, &expect[i * kDim], kDim);
  }
  ExpectSameBits(after, expect, "reset table");
  ExpectSameBits(s.Pull(1, keys), trained1, "other table");
  // The optimizer state was reset too: one push from the fresh row equals one
  // optimizer step from the initial state.
  s.Push(0, {keys[0]}, std::vector<float>(kDim, 0.5f));
  storage::TableSpec spec(c.tables(0));
  std::vector<uint8_t> row(spec.row_bytes());
  spec.InitRow(keys[0], 1, row.data());
  const std::vector<float> g(kDim, 0.5f);
  spec.rule().Apply(storage::TableSpec::Weights(row.data()), spec.State(row.data()), g.data(), kDim);
  ExpectSameBits(s.Pull(0, {keys[0]}), std::vector<float>(storage::TableSpec::Weights(row.data()),
                                                          storage::TableSpec::Weights(row.data()) + kDim),
                 "first push after reset");
  // Rows: a second reset, then a sweep drops every stale row.
  ASSERT_TRUE(s.coordinator().ResetTable(0).ok());
  s.Push(0, {keys[1], keys[2]}, std::vector<float>(2 * kDim, 0.5f));
  auto removed = s.coordinator().Sweep();
  ASSERT_TRUE(removed.ok());
  EXPECT_GE(*removed, keys.size() - 2);
  EXPECT_EQ(s.ResidentRows(0), 2u);
  auto m = s.coordinator().Save(dir.path() + "/ckpt", false, false);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->tables(0).rows(), 2u);
  EXPECT_EQ(m->tables(0).generation(), 2u);
}

}  // namespace
}  // namespace ember::ps
