// See multiget_ceiling.h.
#include "bench/multiget_ceiling.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "proto/keys.h"
#include "storage/spill_store.h"

namespace ember::bench {

absl::StatusOr<double> MultiGetCeilingRowsPerSec(const MultiGetCeilingOptions& o) {
  if (o.rows == 0 || o.row_bytes < sizeof(uint64_t) || o.keys_per_call == 0 || o.threads < 1 ||
      o.logical_shards == 0) {
    return absl::InvalidArgumentError(
        "MultiGet ceiling: rows, row_bytes >= 8, keys_per_call, threads and "
        "logical_shards must be positive");
  }
  storage::SpillStoreOptions so;
  so.path = o.dir;
  so.tables = {"t"};
  so.block_cache_bytes = o.block_cache_bytes;
  absl::StatusOr<std::unique_ptr<storage::SpillStore>> store = storage::SpillStore::Open(so);
  if (!store.ok()) return store.status();
  storage::SpillStore& db = **store;

  // The rows: the key in the first 8 bytes, the rest a fixed pattern (the
  // tier stores no compression, so the contents do not matter).
  {
    std::vector<uint8_t> row(o.row_bytes, 0x5a);
    storage::SpillStore::Batch batch = db.NewBatch();
    for (uint64_t i = 0; i < o.rows; ++i) {
      const uint64_t key = proto::Mix64(i);
      std::memcpy(row.data(), &key, sizeof key);
      batch.Put(0, proto::ShardOf(key, o.logical_shards), key, row.data(), row.size());
      if (batch.count() >= 4096) {
        if (absl::Status st = db.Write(&batch); !st.ok()) return st;
      }
    }
    if (absl::Status st = db.Write(&batch); !st.ok()) return st;
  }

  // A ceiling: time the reads on a quiet RocksDB, not against the flushes
  // and compactions of the rows just written.
  while (db.BackgroundWorkPending()) std::this_thread::sleep_for(std::chrono::milliseconds(100));

  // Each thread's key lists are drawn before the clock starts.
  const uint64_t per_thread = (o.lookups + o.threads - 1) / o.threads;
  std::vector<std::vector<uint64_t>> keys(o.threads);
  std::vector<std::vector<uint32_t>> shards(o.threads);
  for (int t = 0; t < o.threads; ++t) {
    std::mt19937_64 rng(o.seed + t);
    std::uniform_int_distribution<uint64_t> pick(0, o.rows - 1);
    for (uint64_t i = 0; i < per_thread; ++i) {
      const uint64_t key = proto::Mix64(pick(rng));
      keys[t].push_back(key);
      shards[t].push_back(proto::ShardOf(key, o.logical_shards));
    }
  }
  std::vector<absl::Status> status(o.threads);
  std::vector<uint64_t> found_rows(o.threads, 0);
  const auto t0 = std::chrono::steady_clock::now();
  {
    std::vector<std::thread> pool;
    for (int t = 0; t < o.threads; ++t) {
      pool.emplace_back([&, t] {
        std::vector<uint8_t> out(o.keys_per_call * o.row_bytes);
        std::vector<uint8_t> found(o.keys_per_call);
        for (size_t b = 0; b < keys[t].size(); b += o.keys_per_call) {
          const size_t n = std::min(o.keys_per_call, keys[t].size() - b);
          status[t] = db.MultiGet(0, absl::MakeConstSpan(shards[t]).subspan(b, n),
                                  absl::MakeConstSpan(keys[t]).subspan(b, n), o.row_bytes,
                                  out.data(), found.data());
          if (!status[t].ok()) return;
          for (size_t i = 0; i < n; ++i) found_rows[t] += found[i];
        }
      });
    }
    for (auto& th : pool) th.join();
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  uint64_t found = 0;
  for (int t = 0; t < o.threads; ++t) {
    if (!status[t].ok()) return status[t];
    found += found_rows[t];
  }
  store->reset();
  std::error_code ec;
  std::filesystem::remove_all(o.dir, ec);
  const uint64_t looked_up = per_thread * o.threads;
  if (found != looked_up) {
    return absl::InternalError(
        absl::StrCat("MultiGet ceiling: found ", found, " of ", looked_up, " rows"));
  }
  return static_cast<double>(found) / seconds;
}

}  // namespace ember::bench
