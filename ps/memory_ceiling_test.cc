#include "ps/memory_ceiling.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"

namespace ember::ps {
namespace {

class CgroupTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = std::filesystem::temp_directory_path() /
            ("ember-cgroup-" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
             "-" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(root_);
  }
  void TearDown() override { std::filesystem::remove_all(root_); }
  void Write(const std::string& rel, const std::string& text) {
    std::filesystem::create_directories((root_ / rel).parent_path());
    std::ofstream(root_ / rel) << text;
  }
  std::filesystem::path root_;
};

TEST_F(CgroupTest, V2TakesTheSmallestLimitUpTheTree) {
  Write("job/server/memory.max", "max\n");
  Write("job/memory.max", "1073741824\n");
  Write("memory.max", "4294967296\n");
  EXPECT_EQ(CgroupMemoryLimit("0::/job/server\n", root_.string()), 1073741824u);
  EXPECT_EQ(CgroupMemoryLimit("0::/other\n", root_.string()), 4294967296u);
}

TEST_F(CgroupTest, V1MemoryControllerAndUnlimited) {
  Write("memory/docker/abc/memory.limit_in_bytes", "536870912\n");
  EXPECT_EQ(CgroupMemoryLimit("12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n", root_.string()),
            536870912u);
  Write("memory/docker/abc/memory.limit_in_bytes", "9223372036854771712\n");
  EXPECT_EQ(CgroupMemoryLimit("4:memory:/docker/abc\n", root_.string()), UINT64_MAX);
}

TEST_F(CgroupTest, NoLimitFiles) {
  EXPECT_EQ(CgroupMemoryLimit("0::/\n", root_.string()), UINT64_MAX);
  EXPECT_EQ(CgroupMemoryLimit("", root_.string()), UINT64_MAX);
}

TEST(MemoryCeilingTest, HostMemoryIsKnownAndAtMostPhysical) {
  const uint64_t bytes = HostMemoryBytes();
  EXPECT_GT(bytes, uint64_t{1} << 26);
  EXPECT_LE(bytes, static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE));
}

TEST(MemoryCeilingTest, ServersOnTheSameHostAddressShareIt) {
  proto::ClusterInfo c;
  auto add = [&](proto::Role role, int rank, const std::string& ep, const std::string& host) {
    proto::NodeInfo* n = c.add_nodes();
    n->set_role(role);
    n->set_rank(rank);
    n->set_endpoint(ep);
    n->set_host(host);
  };
  add(proto::SERVER, 0, "tcp://10.0.0.1:7001", "a");
  add(proto::SERVER, 1, "tcp://10.0.0.1:7002", "a");
  add(proto::SERVER, 2, "tcp://10.0.0.2:7001", "b");
  add(proto::SERVER, 3, "tcp://0.0.0.0:7003", "c");
  add(proto::SERVER, 4, "tcp://0.0.0.0:7004", "c");
  add(proto::WORKER, 0, "", "a");
  EXPECT_EQ(ServersOnHost(c, 0), 2u);
  EXPECT_EQ(ServersOnHost(c, 1), 2u);
  EXPECT_EQ(ServersOnHost(c, 2), 1u);
  EXPECT_EQ(ServersOnHost(c, 3), 2u) << "a wildcard address falls back to the host name";
  EXPECT_EQ(ServersOnHost(c, 9), 1u) << "not in the list: alone";
  EXPECT_EQ(DefaultMaxResidentBytes(8ull << 30, 2), 2ull << 30);
  EXPECT_EQ(DefaultMaxResidentBytes(8ull << 30, 0), 4ull << 30);
}

}  // namespace
}  // namespace ember::ps
