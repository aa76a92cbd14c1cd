// The input plan: how a job config's columns feed a model, resolved once and
// shared by the worker's batch builder (which selects the sequence items each
// attention block sees, and so decides what is pulled) and the model (which
// reads the batch in the same layout). See docs/models.md.
//
// Batch::sparse layout under a plan: first one entry per sparse column
// (SPARSE / MULTI_SPARSE / SEQUENCE) in config order, called the column's
// "sparse index"; a column used only as attention keys gets an empty entry
// (no rows), since attention reads it through views instead. Then, per
// attention block in order, its views: one per key column (the selected
// items, aligned across the block's views), then the time-gap view if the
// block has a gap table. All views of a block share their CSR offsets.
#ifndef EMBER_MODELS_PLAN_H_
#define EMBER_MODELS_PLAN_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "proto/config.pb.h"

namespace ember::models {

// Slot of the time-gap keys: a gap bucket b of any block is the key
// Hash64(kGapSlot, decimal b) in the block's gap table.
inline constexpr uint32_t kGapSlot = 0x7fffffff;

struct AttentionPlan {
  std::string name;
  std::vector<int> query;  // sparse indices of the query columns
  std::vector<int> keys;   // sparse indices of the key columns, aligned with query
  std::vector<int> dims;   // embedding width of query[j] / keys[j]
  int query_dim = 0;       // sum of dims
  int gap_dim = 0;         // gap table dim, 0 without a gap view
  int key_dim() const { return query_dim + gap_dim; }
  std::vector<int> hidden;  // activation unit widths
  proto::Activation activation = proto::DICE;
  uint32_t last_n = 0;  // 0: all items
  bool search = false;
  proto::SearchConfig::Kind search_kind = proto::SearchConfig::HARD;
  uint32_t top_k = 0;
  int match = -1;        // HARD: index j into query/keys of the matched pair
  int time = -1;         // index among the time columns of the sample's TIME column
  int key_times = -1;    // index among the time columns of the TIME_SEQUENCE column
  int gap_table = -1;    // JobConfig.tables index, -1 without time gaps
  double gap_unit = 86400;
  uint32_t gap_buckets = 16;
  int first_view = 0;  // index in Batch::sparse of the first view
  int num_views() const { return static_cast<int>(keys.size()) + (gap_table >= 0 ? 1 : 0); }
};

struct InputPlan {
  // Per sparse index.
  std::vector<int> sparse_column;  // index in DataConfig.columns
  std::vector<int> sparse_table;   // index in JobConfig.tables
  std::vector<bool> attention_only;
  // Per time column (TIME / TIME_SEQUENCE, config order): its index in
  // DataConfig.columns.
  std::vector<int> time_column;
  std::vector<AttentionPlan> attention;
  int num_views = 0;  // Batch::sparse entries: sparse columns + all blocks' views
  std::vector<std::string> tasks;  // LABEL column names, config order
};

// Resolves the config's columns and model.attention into a plan. Returns
// InvalidArgument naming the config field and the reason (an unknown column,
// a key column that is not a SEQUENCE on its query column's table and slot,
// a search without its match columns, ...).
[[nodiscard]] absl::StatusOr<InputPlan> PlanInput(const proto::JobConfig& config);

// Bucket of a time gap (sample time minus item time, clamped at 0):
// min(floor(log2(1 + gap / unit)), buckets - 1).
uint32_t GapBucket(int64_t gap, double unit, uint32_t buckets);

}  // namespace ember::models

#endif  // EMBER_MODELS_PLAN_H_
