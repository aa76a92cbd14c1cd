#include "worker/ps_client.h"

#include <random>
#include <thread>

#include "gtest/gtest.h"
#include "ps/routing.h"
#include "ps/server.h"
#include "storage/sparse_table.h"

namespace ember::worker {
namespace {

// Two servers on the in-process transport, and a client that knows them.
class PsClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    proto::JobConfig& config = *cluster_.mutable_config();
    auto* t = config.add_tables();
    t->set_name("emb");
    t->set_dim(3);
    t->mutable_optimizer()->set_kind(proto::OptimizerConfig::SGD);
    t->mutable_optimizer()->set_learning_rate(1.0f);
    config.mutable_cluster()->set_num_logical_shards(32);
    config.mutable_model()->mutable_dense_optimizer()->set_kind(proto::OptimizerConfig::SGD);
    config.mutable_model()->mutable_dense_optimizer()->set_learning_rate(1.0f);
    proto::ShardMap* map = cluster_.mutable_shard_map();
    map->set_num_logical_shards(32);
    for (int s = 0; s < 32; ++s) map->add_server_rank(s % 2);
    cluster_.mutable_dense()->set_total(5);
    for (uint64_t o : {0, 2, 5}) cluster_.mutable_dense()->add_offset(o);
    net::TransportOptions o;
    o.kind = net::TransportOptions::Kind::kInproc;
    o.hub = &hub_;
    for (uint32_t r = 0; r < 2; ++r) {
      auto transport = std::move(*net::CreateTransport(o));
      const std::string ep = "inproc://server" + std::to_string(r);
      ASSERT_TRUE(transport->Bind(ep).ok());
      proto::NodeInfo* n = cluster_.add_nodes();
      n->set_role(proto::SERVER);
      n->set_rank(static_cast<int>(r));
      n->set_endpoint(ep);
      ps::ServerOptions so;
      so.config = config;
      so.shard_map = *map;
      so.rank = r;
      so.dense_offset = cluster_.dense().offset(r);
      so.dense_init.assign(cluster_.dense().offset(r + 1) - cluster_.dense().offset(r), 10.0f * (r + 1));
      servers_.push_back(std::move(*ps::Server::Create(so, std::move(transport))));
    }
    for (auto& s : servers_) threads_.emplace_back([&s] { ASSERT_TRUE(s->Run().ok()); });
    PsClientOptions po;
    po.cluster = cluster_;
    auto c = PsClient::Create(po, std::move(*net::CreateTransport(o)));
    ASSERT_TRUE(c.ok()) << c.status();
    client_ = std::move(*c);
  }
  void TearDown() override {
    client_.reset();
    for (auto& s : servers_) s->Stop();
    for (auto& t : threads_) t.join();
  }

  proto::ClusterInfo cluster_;
  net::InprocHub hub_;
  std::vector<std::unique_ptr<ps::Server>> servers_;
  std::vector<std::thread> threads_;
  std::unique_ptr<PsClient> client_;
};

TEST_F(PsClientTest, SparseRoundTripAcrossServers) {
  std::mt19937_64 rng(5);
  std::vector<uint64_t> raw(3000);
  for (auto& k : raw) k = rng();
  auto keys = std::make_shared<std::vector<uint64_t>>();
  std::vector<uint32_t> begin;
  ps::KeyRouter(cluster_.shard_map(), 2).Group(raw, keys.get(), &begin, nullptr);
  ASSERT_GT(begin[1], 0u);
  ASSERT_LT(begin[1], keys->size());  // both servers get keys

  std::vector<float> before(keys->size() * 3);
  PsClient::Ticket t = client_->Pull(0, keys, begin, before.data());
  ASSERT_TRUE(client_->Wait(t).ok());
  storage::TableSpec spec(cluster_.config().tables(0));
  std::vector<uint8_t> row(spec.row_bytes());
  for (size_t i = 0; i < keys->size(); i += 7) {
    spec.InitRow((*keys)[i], 0, row.data());
    ASSERT_EQ(before[i * 3 + 2], storage::TableSpec::Weights(row.data())[2]) << i;
  }
  // SGD with lr 1: pushing g moves each row by -g.
  auto grads = std::make_shared<std::vector<float>>(keys->size() * 3);
  for (size_t i = 0; i < grads->size(); ++i) (*grads)[i] = static_cast<float>(i % 5);
  PsClient::Ticket p = client_->Push(0, keys, begin, grads);
  ASSERT_TRUE(client_->Wait(p).ok());
  std::vector<float> after(keys->size() * 3);
  t = client_->Pull(0, keys, begin, after.data());
  ASSERT_TRUE(client_->Wait(t).ok());
  for (size_t i = 0; i < after.size(); ++i) ASSERT_FLOAT_EQ(after[i], before[i] - (*grads)[i]) << i;
}

// A read-only pull (evaluation) reads trained rows as they are and unseen
// keys as the default value (0 here), creating none of them on any server.
TEST_F(PsClientTest, ReadOnlyPullCreatesNoRows) {
  std::mt19937_64 rng(9);
  std::vector<uint64_t> raw(2000);
  for (auto& k : raw) k = rng();
  auto keys = std::make_shared<std::vector<uint64_t>>();
  std::vector<uint32_t> begin;
  ps::KeyRouter(cluster_.shard_map(), 2).Group(raw, keys.get(), &begin, nullptr);
  std::vector<float> out(keys->size() * 3, 7.0f);
  PsClient::Ticket t = client_->Pull(0, keys, begin, out.data(), PsClient::PullMode::kReadOnly);
  ASSERT_TRUE(client_->Wait(t).ok());
  for (size_t i = 0; i < out.size(); ++i) ASSERT_EQ(out[i], 0.0f) << i;
  for (const auto& s : servers_) EXPECT_EQ(s->stats().rows, 0u);
  // Train them, then the read-only pull sees the trained rows.
  std::vector<float> trained(keys->size() * 3);
  t = client_->Pull(0, keys, begin, trained.data());
  ASSERT_TRUE(client_->Wait(t).ok());
  t = client_->Pull(0, keys, begin, out.data(), PsClient::PullMode::kReadOnly);
  ASSERT_TRUE(client_->Wait(t).ok());
  EXPECT_EQ(out, trained);
}

TEST_F(PsClientTest, DenseIsSlicedAcrossServers) {
  std::vector<float> dense(5);
  PsClient::Ticket t = client_->PullDense(dense.data());
  ASSERT_TRUE(client_->Wait(t).ok());
  EXPECT_EQ(dense, (std::vector<float>{10, 10, 20, 20, 20}));
  auto g = std::make_shared<std::vector<float>>(std::vector<float>{1, 2, 3, 4, 5});
  PsClient::Ticket p = client_->PushDense(g);
  ASSERT_TRUE(client_->Wait(p).ok());
  t = client_->PullDense(dense.data());
  ASSERT_TRUE(client_->Wait(t).ok());
  EXPECT_EQ(dense, (std::vector<float>{9, 8, 17, 16, 15}));
}

// Each server's slice has a version that a pull reports and a push carries
// back; the server measures the push's staleness from it, and the client
// counts what the servers measured.
TEST_F(PsClientTest, DensePushesCarryTheirPullsVersion) {
  std::vector<float> dense(5);
  std::vector<uint64_t> v0(2), v1(2);
  PsClient::Ticket t = client_->PullDense(dense.data(), v0.data());
  ASSERT_TRUE(client_->Wait(t).ok());
  EXPECT_EQ(v0, (std::vector<uint64_t>{1, 1}));
  auto g = std::make_shared<std::vector<float>>(5, 1.0f);
  PsClient::Ticket p = client_->PushDense(g, v0);
  ASSERT_TRUE(client_->Wait(p).ok());
  t = client_->PullDense(dense.data(), v1.data());
  ASSERT_TRUE(client_->Wait(t).ok());
  EXPECT_EQ(v1, (std::vector<uint64_t>{2, 2})) << "one step each (one worker: every push is a round)";
  EXPECT_EQ(client_->dense_staleness().pushes, 2u);  // one per server
  EXPECT_EQ(client_->dense_staleness().max, 0u);
  // A second gradient computed on the first pull's weights is one step stale.
  p = client_->PushDense(g, v0);
  ASSERT_TRUE(client_->Wait(p).ok());
  EXPECT_EQ(client_->dense_staleness().pushes, 4u);
  EXPECT_EQ(client_->dense_staleness().sum, 2u);
  EXPECT_EQ(client_->dense_staleness().max, 1u);
}

TEST_F(PsClientTest, ServerErrorNamesServerAndCommand) {
  // Keys not grouped by server: server 0 receives keys of server 1's shards.
  auto keys = std::make_shared<std::vector<uint64_t>>();
  for (uint64_t k = 0; keys->size() < 10; ++k) keys->push_back(k);
  std::vector<uint32_t> begin = {0, 10, 10};
  std::vector<float> out(30);
  PsClient::Ticket t = client_->Pull(0, keys, begin, out.data());
  absl::Status st = client_->Wait(t);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(st.message().find("PULL to server 0"), std::string::npos) << st;
  EXPECT_NE(st.message().find("WRONG_SERVER"), std::string::npos) << st;
}

}  // namespace
}  // namespace ember::worker
