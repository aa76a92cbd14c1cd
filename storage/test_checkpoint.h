// Test helpers (header-only, for unit tests): a scratch directory, and a
// model state that a test edits row by row and saves as real checkpoints
// (storage::WriteCheckpointPart + MergeParts + WriteManifest, as one server
// owning every logical shard), for the tests of export and serving.
#ifndef EMBER_STORAGE_TEST_CHECKPOINT_H_
#define EMBER_STORAGE_TEST_CHECKPOINT_H_

#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "proto/config.pb.h"
#include "proto/keys.h"
#include "storage/checkpoint_files.h"
#include "storage/shard_checkpoint.h"
#include "storage/sparse_table.h"
#include "storage/tiered_store.h"

namespace ember::storage::testing {

// A fresh directory under /tmp, removed with everything in it by the
// destructor.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/ember_test.XXXXXX";
    const char* made = ::mkdtemp(tmpl);
    EXPECT_NE(made, nullptr);
    path_ = made == nullptr ? "" : made;
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// The rows and dense vector of a job with `config`'s tables, all in memory.
class CheckpointWriter {
 public:
  CheckpointWriter(const proto::JobConfig& config, uint64_t dense_size) : config_(config) {
    for (const auto& t : config_.tables()) specs_.push_back(std::make_unique<TableSpec>(t));
    std::vector<uint32_t> all;
    for (uint32_t s = 0; s < L(); ++s) all.push_back(s);
    store_ = std::make_unique<TieredStore>(Specs(), all, L(), 0, nullptr);
    dense_.weights.resize(dense_size);
    for (uint64_t i = 0; i < dense_size; ++i) dense_.weights[i] = 0.01f * i;
  }

  // Sets the row of `key` in table t (creating it) to value + 0.001 * i in
  // weight i, last pushed at `push_seq`.
  void Set(uint32_t t, uint64_t key, float value, uint64_t push_seq = 1) {
    std::vector<float> w(specs_[t]->dim());
    for (size_t i = 0; i < w.size(); ++i) w[i] = value + 0.001f * i;
    SetRow(t, key, w, push_seq);
  }
  void SetRow(uint32_t t, uint64_t key, const std::vector<float>& w, uint64_t push_seq = 1) {
    bool created;
    uint8_t* row = store_->table(t, proto::ShardOf(key, L())).FindOrCreate(key, 0, &created);
    for (uint32_t i = 0; i < specs_[t]->dim(); ++i) TableSpec::Weights(row)[i] = w[i];
    TableSpec::Meta(row)->last_push_seq = push_seq;
  }
  void Erase(uint32_t t, uint64_t key) { store_->table(t, proto::ShardOf(key, L())).Erase(key); }
  std::vector<float>& dense() { return dense_.weights; }

  // Writes checkpoint `id` (full) under `root`; returns its directory.
  std::string Save(const std::string& root, uint64_t id, uint64_t push_seq = 1) {
    const std::string dir = root + "/" + CheckpointDirName(id);
    std::filesystem::create_directories(dir);
    SaveSource src;
    src.rank = 0;
    src.num_logical_shards = L();
    src.specs = Specs();
    src.stores = {store_.get()};
    src.generations.assign(specs_.size(), 0);
    src.dense = &dense_;
    src.push_seq = push_seq;
    absl::StatusOr<proto::CheckpointPart> part = WriteCheckpointPart(dir, src);
    EXPECT_TRUE(part.ok()) << part.status();
    if (!part.ok()) return dir;
    const proto::CheckpointManifest m = MergeParts(config_, dense_.weights.size(), id, 0, 0, {*part});
    EXPECT_TRUE(WriteManifest(dir, m).ok());
    return dir;
  }

 private:
  uint32_t L() const { return config_.cluster().num_logical_shards(); }
  std::vector<const TableSpec*> Specs() const {
    std::vector<const TableSpec*> v;
    for (const auto& s : specs_) v.push_back(s.get());
    return v;
  }

  proto::JobConfig config_;
  std::vector<std::unique_ptr<TableSpec>> specs_;
  std::unique_ptr<TieredStore> store_;
  DenseSlice dense_;
};

}  // namespace ember::storage::testing

#endif  // EMBER_STORAGE_TEST_CHECKPOINT_H_
