#include "storage/spill_store.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace ember::storage {
namespace {

namespace fs = std::filesystem;

class SpillDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / absl::StrCat("ember-spill-test-", getpid(), "-",
                                                     ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  SpillStoreOptions Options(const std::string& sub) {
    SpillStoreOptions o;
    o.path = (root_ / sub).string();
    o.tables = {"t"};
    return o;
  }

  fs::path root_;
};

// Two servers (of two jobs, or a job misconfigured) never share a tier: the
// second is refused while the first holds the lock, and nothing of the
// first's is touched.
TEST_F(SpillDirTest, ADirectoryInUseIsRefused) {
  auto first = SpillStore::Open(Options("s"));
  ASSERT_TRUE(first.ok()) << first.status();
  SpillStore::Batch b = (*first)->NewBatch();
  const uint8_t row[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  b.Put(0, 3, 42, row, sizeof(row));
  ASSERT_TRUE((*first)->Write(&b).ok());

  auto second = SpillStore::Open(Options("s"));
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(second.status().message().find("in use"), std::string::npos) << second.status();
  EXPECT_NE(second.status().message().find((root_ / "s").string()), std::string::npos) << second.status();

  uint8_t out[8] = {0}, found = 0;
  const uint32_t shard = 3;
  const uint64_t key = 42;
  ASSERT_TRUE((*first)->MultiGet(0, {&shard, 1}, {&key, 1}, sizeof(out), out, &found).ok());
  EXPECT_EQ(found, 1);
  EXPECT_EQ(out[7], 8);
}

// A directory holding files ember did not write is refused and left whole.
TEST_F(SpillDirTest, ForeignFilesAreRefusedAndKept) {
  fs::create_directories(root_ / "mine");
  std::ofstream(root_ / "mine" / "notes.txt") << "precious";
  auto store = SpillStore::Open(Options("mine"));
  ASSERT_FALSE(store.ok());
  EXPECT_NE(store.status().message().find("not an ember spill directory"), std::string::npos) << store.status();
  EXPECT_TRUE(fs::exists(root_ / "mine" / "notes.txt"));
}

// The tier is a cache: closing removes the directory; a dead server's
// leftovers (lock file present, lock free) are cleared at the next open.
TEST_F(SpillDirTest, ClosedRemovesItsDirectoryAndStaleOnesAreReused) {
  {
    auto store = SpillStore::Open(Options("s"));
    ASSERT_TRUE(store.ok()) << store.status();
    EXPECT_TRUE(fs::exists(root_ / "s" / "EMBER_SPILL_LOCK"));
  }
  EXPECT_FALSE(fs::exists(root_ / "s"));
  fs::create_directories(root_ / "s" / "old-sst");
  std::ofstream(root_ / "s" / "EMBER_SPILL_LOCK") << "";
  auto store = SpillStore::Open(Options("s"));
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_FALSE(fs::exists(root_ / "s" / "old-sst"));
}

}  // namespace
}  // namespace ember::storage
