// Turns parsed log lines into the models::Batch a model consumes: labels and
// dense values row-major, per sparse column a CSR of rows into each table's
// list of distinct keys, and those keys grouped by the server that owns them
// so the PS client can send each server one contiguous range.
#ifndef EMBER_WORKER_BATCH_BUILDER_H_
#define EMBER_WORKER_BATCH_BUILDER_H_

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/batch.h"
#include "models/plan.h"
#include "proto/config.pb.h"
#include "proto/wire.pb.h"
#include "worker/log_parser.h"

namespace ember::worker {

// Collects samples one line at a time and emits them as a models::Batch.
//
// Cost: AddLine is one parse plus one hash-map probe per key; Finish orders
// the distinct keys by (server rank, logical shard) with a radix sort, O(n)
// in the number of distinct keys whatever the number of logical shards.
// Internal buffers keep their capacity from batch to batch.
//
// Thread safety: none; one builder per reader thread. Not copyable.
class BatchBuilder {
 public:
  // Checks that `config`'s columns can be parsed (see LogParser::Create) and
  // that `shard_map` is usable with `num_servers`: num_logical_shards >= 1,
  // one server_rank per logical shard, each rank in [0, num_servers).
  // Returns InvalidArgument naming the problem. Use this for a shard map that
  // arrived over the network.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<BatchBuilder>> Create(
      const proto::JobConfig& config, const proto::ShardMap& shard_map, int num_servers);

  BatchBuilder(const BatchBuilder&) = delete;
  BatchBuilder& operator=(const BatchBuilder&) = delete;

  // Parses `line` (no trailing '\n'; a trailing '\r' is ignored) and appends
  // it as one sample. On a malformed line returns the parser's
  // InvalidArgument (no file:line; the caller knows them) and leaves the
  // pending batch exactly as it was. Returns ResourceExhausted, also leaving
  // the batch unchanged, if the sample would overflow the batch's 32-bit row
  // indices (more than 4G keys in one column); finish the batch and retry.
  [[nodiscard]] absl::Status AddLine(std::string_view line);

  // Samples added since the last Finish or Clear.
  int size() const { return size_; }

  // Moves the pending samples into a batch and starts a new, empty one.
  // Sets size, num_labels, num_dense, labels, dense, sparse (one entry per
  // sparse column, config order), tables (one entry per JobConfig table, each
  // with num_servers + 1 server_begin offsets) and bytes (sum of the line
  // lengths + 1 for each newline). chunk_id and last_of_chunk are left for the
  // caller. A builder with no samples yields a valid batch of size 0.
  models::Batch Finish();
  // As above, writing into `*out` and taking its vectors' capacity for the
  // next batch: pass back a batch the model is done with to avoid allocating.
  void Finish(models::Batch* out);

  // Drops the pending samples.
  void Clear();

  const LogParser& parser() const { return parser_; }

 private:
  // Headroom left under 2^32 rows per column for one line's view rows.
  static constexpr uint64_t kMaxViewRows = uint64_t{1} << 24;

  // A batch's distinct keys of one table -> their position: open addressing
  // with linear probing, at most a quarter full, emptied in O(1) by a new
  // stamp. (absl's clear()
  // frees a table of more than 127 slots, so every batch allocated its index
  // again; serving::Predictor promises no allocation per call.) Grows, and
  // so allocates, only when a batch has more keys than any before it.
  class KeyIndex {
   public:
    // The position of `key`; a new key is inserted with `pos` (*inserted).
    uint32_t FindOrInsert(uint64_t key, uint32_t pos, bool* inserted);
    void Clear();

   private:
    struct Slot {
      uint64_t key;
      uint32_t pos;
      uint32_t stamp;  // the slot is in use iff stamp == stamp_
    };
    void Grow();
    std::vector<Slot> slots_;
    uint32_t stamp_ = 1;
    size_t size_ = 0;
    int shift_ = 64;  // slot of a key: (key * golden) >> shift_
  };

  // Samples of one table: its distinct keys in first-seen order.
  struct TableState {
    KeyIndex index;  // key -> position in keys
    std::vector<uint64_t> keys;
  };

  // Pending CSR of one sparse column or attention view; rows index
  // TableState::keys until Finish remaps them to the sorted order.
  struct ColumnState {
    int column = 0;  // -1 for a time-gap view
    int table = 0;
    std::vector<uint32_t> offsets;
    std::vector<uint32_t> rows;
  };

  BatchBuilder(LogParser parser, models::InputPlan plan, const proto::ShardMap& shard_map,
               int num_servers, const proto::JobConfig& config);

  // Picks, per attention block, the sequence items the block sees and
  // hashes only those: selected_[b][v] are the keys of view v in time order.
  // InvalidArgument if the block's aligned columns have different lengths or
  // a needed time is not an integer.
  absl::Status Select(const ParsedLine& line);

  // Sorts `state`'s keys into `*out` and fills `remap_` (first-seen position
  // -> sorted position).
  void SortTable(const TableState& state, models::TableBatch* out);
  void Reset();

  LogParser parser_;
  models::InputPlan plan_;
  ParsedLine scratch_;
  std::vector<std::vector<std::vector<uint64_t>>> selected_;  // per block, per view
  std::vector<uint32_t> back_;     // Select's positions, counted from the newest
  std::vector<uint32_t> matches_;  // hard-search matches, positions from the oldest
  std::vector<std::string_view> pieces_;  // ForPiecesAt's scratch
  std::vector<uint64_t> gap_keys_;               // key of each time-gap bucket
  int num_servers_;
  uint32_t num_shards_;
  // Shards in (server rank, shard) order: shard_pos_[shard] is the shard's
  // place in that order; shard_server_[shard] its server.
  std::vector<uint32_t> shard_pos_;
  std::vector<uint32_t> shard_server_;
  // Radix sort of positions in [0, num_shards_): one or two passes of
  // radix_bits_ bits.
  int radix_bits_;
  int radix_passes_;

  int size_ = 0;
  uint64_t bytes_ = 0;
  int log_time_index_ = -1;  // of the first TIME column among the time columns, or -1
  uint64_t log_time_ = 0;    // newest log time of the batch so far
  std::vector<float> labels_;
  std::vector<float> dense_;
  std::vector<ColumnState> columns_;
  std::vector<TableState> tables_;

  // Finish's scratch, reused.
  std::vector<uint32_t> pos_;
  std::vector<uint32_t> order_;
  std::vector<uint32_t> order_tmp_;
  std::vector<uint32_t> counts_;
  std::vector<uint32_t> remap_;
};

}  // namespace ember::worker

#endif  // EMBER_WORKER_BATCH_BUILDER_H_
