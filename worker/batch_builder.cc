// Batch assembly: keys are deduplicated per table as lines arrive, and
// Finish orders them by (server, shard) with a stable LSD radix sort over
// the shards' positions in that order.
#include "worker/batch_builder.h"

#include <algorithm>
#include <bit>
#include <charconv>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/memory/memory.h"
#include "absl/strings/str_cat.h"
#include "glog/logging.h"
#include "proto/keys.h"

namespace ember::worker {
namespace {

absl::Status CheckShardMap(const proto::ShardMap& map, int num_servers) {
  if (num_servers < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_servers is ", num_servers, ", must be >= 1"));
  }
  if (map.num_logical_shards() < 1) {
    return absl::InvalidArgumentError("shard map: num_logical_shards must be >= 1");
  }
  if (static_cast<uint64_t>(map.server_rank_size()) != map.num_logical_shards()) {
    return absl::InvalidArgumentError(absl::StrCat("shard map: ", map.server_rank_size(),
                                                   " server ranks for ", map.num_logical_shards(),
                                                   " logical shards"));
  }
  for (int s = 0; s < map.server_rank_size(); ++s) {
    if (map.server_rank(s) >= static_cast<uint32_t>(num_servers)) {
      return absl::InvalidArgumentError(absl::StrCat("shard map: shard ", s, " is on server ",
                                                     map.server_rank(s), " of only ", num_servers));
    }
  }
  return absl::OkStatus();
}

// Bits needed to write any value in [0, n).
int BitsFor(uint32_t n) {
  int bits = 0;
  while (bits < 32 && (uint64_t{1} << bits) < n) ++bits;
  return bits;
}

}  // namespace

absl::StatusOr<std::unique_ptr<BatchBuilder>> BatchBuilder::Create(const proto::JobConfig& config,
                                                                   const proto::ShardMap& shard_map,
                                                                   int num_servers) {
  absl::Status st = CheckShardMap(shard_map, num_servers);
  if (!st.ok()) return st;
  absl::StatusOr<LogParser> parser = LogParser::Create(config);
  if (!parser.ok()) return parser.status();
  absl::StatusOr<models::InputPlan> plan = models::PlanInput(config);
  if (!plan.ok()) return plan.status();
  return absl::WrapUnique(new BatchBuilder(*std::move(parser), *std::move(plan), shard_map,
                                           num_servers, config));
}

BatchBuilder::BatchBuilder(LogParser parser, models::InputPlan plan,
                           const proto::ShardMap& shard_map, int num_servers,
                           const proto::JobConfig& config)
    : parser_(std::move(parser)),
      plan_(std::move(plan)),
      num_servers_(num_servers),
      num_shards_(shard_map.num_logical_shards()) {
  // The log time a push carries (for expiry.after_days): the first TIME
  // column, counted among the time columns as the parser numbers them.
  int time_index = 0;
  for (const proto::ColumnConfig& c : config.data().columns()) {
    if (c.type() == proto::ColumnConfig::TIME) {
      log_time_index_ = time_index;
      break;
    }
    if (c.type() == proto::ColumnConfig::TIME_SEQUENCE) ++time_index;
  }
  // Position of each shard in (server, shard) order, by counting shards per server.
  std::vector<uint32_t> next(num_servers_ + 1, 0);
  shard_server_.assign(shard_map.server_rank().begin(), shard_map.server_rank().end());
  for (uint32_t server : shard_server_) ++next[server + 1];
  for (int s = 0; s < num_servers_; ++s) next[s + 1] += next[s];
  shard_pos_.resize(num_shards_);
  for (uint32_t shard = 0; shard < num_shards_; ++shard) {
    shard_pos_[shard] = next[shard_server_[shard]]++;
  }
  // Up to 4096 buckets a pass keeps the histogram in L1; beyond that two
  // passes of half the bits cost less than one pass over a huge histogram.
  const int bits = BitsFor(num_shards_);
  radix_passes_ = bits == 0 ? 0 : bits <= 12 ? 1 : 2;
  radix_bits_ = radix_passes_ == 2 ? (bits + 1) / 2 : bits;

  for (const LogParser::SparseColumn& sc : parser_.sparse_columns()) {
    ColumnState col;
    col.column = sc.column;
    col.table = sc.table;
    columns_.push_back(std::move(col));
  }
  // The attention blocks' views (see models/plan.h), after the columns.
  for (const models::AttentionPlan& a : plan_.attention) {
    for (int k : a.keys) {
      ColumnState col;
      col.column = columns_[k].column;
      col.table = columns_[k].table;
      columns_.push_back(std::move(col));
    }
    if (a.gap_table >= 0) {
      ColumnState col;
      col.column = -1;  // not a config column: the time gaps
      col.table = a.gap_table;
      columns_.push_back(std::move(col));
    }
  }
  CHECK_EQ(static_cast<int>(columns_.size()), plan_.num_views);
  // Attention reads its aligned columns piece by piece (see Select).
  for (const models::AttentionPlan& a : plan_.attention) {
    for (int k : a.keys) parser_.SetPositional(plan_.sparse_column[k]);
    if (a.gap_table >= 0) parser_.SetPositional(plan_.time_column[a.key_times]);
  }
  uint32_t max_buckets = 0;
  for (const models::AttentionPlan& a : plan_.attention) max_buckets = std::max(max_buckets, a.gap_buckets);
  for (uint32_t b = 0; b < max_buckets; ++b) {
    const std::string text = std::to_string(b);
    gap_keys_.push_back(proto::Hash64(models::kGapSlot, text));
  }
  selected_.resize(plan_.attention.size());
  tables_.resize(config.tables_size());
  Reset();
}

namespace {

// Separators in [p, end), 64 bytes at a time (a fixed-length inner loop the
// compiler vectorises).
uint32_t CountSeparators(const char* p, const char* end, char sep) {
  uint32_t n = 0;
  for (; end - p >= 64; p += 64) {
    uint32_t c = 0;
    for (int i = 0; i < 64; ++i) c += p[i] == sep;
    n += c;
  }
  for (; p < end; ++p) n += *p == sep;
  return n;
}

// Pieces of a positional field: every piece is an item, empty ones
// included, so aligned columns stay aligned.
uint32_t CountPieces(std::string_view field, char sep) {
  return field.empty() ? 0 : CountSeparators(field.data(), field.data() + field.size(), sep) + 1;
}

// The position just past the k-th separator from p (p itself for k = 0);
// the field must hold k more separators.
const char* SkipSeparators(const char* p, const char* end, char sep, uint32_t k) {
  while (k > 0 && end - p >= 64) {
    uint32_t c = 0;
    for (int i = 0; i < 64; ++i) c += p[i] == sep;
    if (c >= k) break;
    k -= c;
    p += 64;
  }
  for (; k > 0; ++p) k -= *p == sep;
  return p;
}

// Calls fn(piece) for the pieces at `back` (positions counted from the
// newest, ascending; the field has n pieces), in that order. Walks the field
// forward once, skipping whole blocks between the pieces it needs.
template <typename Fn>
void ForPiecesAt(std::string_view field, char sep, uint32_t n, const std::vector<uint32_t>& back,
                 std::vector<std::string_view>* scratch, Fn fn) {
  scratch->clear();
  const char* p = field.data();
  const char* end = p + field.size();
  uint32_t at = 0;  // the piece p starts
  for (size_t i = back.size(); i-- > 0;) {
    const uint32_t want = n - 1 - back[i];
    p = SkipSeparators(p, end, sep, want - at);
    at = want;
    const char* e = static_cast<const char*>(std::memchr(p, sep, end - p));
    if (e == nullptr) e = end;
    scratch->emplace_back(p, e - p);
  }
  for (size_t i = scratch->size(); i-- > 0;) fn((*scratch)[i]);
}

}  // namespace

absl::Status BatchBuilder::Select(const ParsedLine& line) {
  const uint32_t* key_begin = line.key_begin.data();
  for (size_t b = 0; b < plan_.attention.size(); ++b) {
    const models::AttentionPlan& a = plan_.attention[b];
    const int col0 = plan_.sparse_column[a.keys[0]];
    const uint32_t n = CountPieces(line.raw[col0], parser_.separator(col0));
    for (size_t j = 1; j < a.keys.size(); ++j) {
      const int col = plan_.sparse_column[a.keys[j]];
      const uint32_t nj = CountPieces(line.raw[col], parser_.separator(col));
      if (nj != n) {
        return absl::InvalidArgumentError(absl::StrCat("columns '", parser_.column_name(col0), "' and '",
                                                       parser_.column_name(col), "' have ", n, " and ", nj,
                                                       " values; attention block '", a.name,
                                                       "' needs them aligned"));
      }
    }
    const int times_col = a.gap_table >= 0 ? plan_.time_column[a.key_times] : -1;
    if (times_col >= 0) {
      const uint32_t nt = CountPieces(line.raw[times_col], parser_.separator(times_col));
      if (nt != n) {
        return absl::InvalidArgumentError(absl::StrCat("column '", parser_.column_name(col0), "' has ", n,
                                                       " values but its times column '",
                                                       parser_.column_name(times_col), "' has ", nt,
                                                       "; attention block '", a.name, "' needs them aligned"));
      }
    }
    // The newest max_len items are the sequence (as for any SEQUENCE).
    const uint32_t window = parser_.max_len(col0) != 0 ? std::min(n, parser_.max_len(col0)) : n;
    std::vector<uint32_t>& back = back_;
    back.clear();
    if (a.search && a.search_kind == proto::SearchConfig::HARD) {
      // The newest top_k items whose value equals the sample's.
      const int q = a.query[a.match];
      if (key_begin[q + 1] != key_begin[q]) {
        const std::string_view want = line.raw[plan_.sparse_column[q]];
        const int match_col = plan_.sparse_column[a.keys[a.match]];
        const std::string_view field = line.raw[match_col];
        const char sep = parser_.separator(match_col);
        // Occurrences of the value that are whole pieces, oldest first; the
        // separators between them give their positions.
        matches_.clear();
        const char* begin = field.data();
        const char* end = begin + field.size();
        const char* counted = begin;
        uint32_t piece = 0;
        for (const char* from = begin; from < end;) {
          const char* hit =
              static_cast<const char*>(memmem(from, end - from, want.data(), want.size()));
          if (hit == nullptr) break;
          const char* after = hit + want.size();
          if ((hit == begin || hit[-1] == sep) && (after == end || *after == sep)) {
            piece += CountSeparators(counted, hit, sep);
            counted = hit;
            matches_.push_back(piece);
            from = after;
          } else {
            from = hit + 1;
          }
        }
        for (size_t m = matches_.size(); m-- > 0 && back.size() < a.top_k;) {
          const uint32_t from_end = n - 1 - matches_[m];
          if (from_end >= window) break;
          back.push_back(from_end);
        }
      }
    } else {
      // Soft search scores every item (the model picks the top_k); DIN
      // blocks see the newest last_n.
      const uint32_t count = a.last_n != 0 ? std::min(window, a.last_n) : window;
      for (uint32_t pos = 0; pos < count; ++pos) back.push_back(pos);
    }
    std::vector<std::vector<uint64_t>>& keys = selected_[b];
    keys.resize(a.num_views());
    for (size_t j = 0; j < a.keys.size(); ++j) {
      const int col = plan_.sparse_column[a.keys[j]];
      const uint32_t slot = parser_.slot(col);
      keys[j].clear();
      ForPiecesAt(line.raw[col], parser_.separator(col), n, back, &pieces_,
                  [&](std::string_view piece) { keys[j].push_back(proto::Hash64(slot, piece)); });
      std::reverse(keys[j].begin(), keys[j].end());  // time order
    }
    if (times_col >= 0) {
      std::vector<uint64_t>& gaps = keys[a.keys.size()];
      gaps.clear();
      const int64_t now = line.times[line.time_begin[a.time]];
      absl::Status st;
      ForPiecesAt(line.raw[times_col], parser_.separator(times_col), n, back, &pieces_,
                  [&](std::string_view piece) {
        int64_t t = 0;
        const std::from_chars_result r = std::from_chars(piece.data(), piece.data() + piece.size(), t);
        if (piece.empty() || r.ec != std::errc() || r.ptr != piece.data() + piece.size()) {
          if (st.ok()) {
            st = absl::InvalidArgumentError(absl::StrCat("column '", parser_.column_name(times_col), "': '",
                                                         std::string(piece.substr(0, 40)), "' is not an integer time"));
          }
          return;
        }
        gaps.push_back(gap_keys_[models::GapBucket(now - t, a.gap_unit, a.gap_buckets)]);
      });
      if (!st.ok()) return st;
      std::reverse(gaps.begin(), gaps.end());
    }
  }
  return absl::OkStatus();
}

absl::Status BatchBuilder::AddLine(std::string_view line) {
  absl::Status st = parser_.Parse(line, &scratch_);
  if (!st.ok()) return st;
  st = Select(scratch_);
  if (!st.ok()) return st;
  const uint32_t* key_begin = scratch_.key_begin.data();
  const size_t num_sparse = plan_.sparse_column.size();
  for (size_t j = 0; j < columns_.size(); ++j) {
    const uint64_t n = j < num_sparse ? key_begin[j + 1] - key_begin[j] : 0;
    if (columns_[j].rows.size() + n + kMaxViewRows > std::numeric_limits<uint32_t>::max()) {
      return absl::ResourceExhaustedError(
          absl::StrCat("batch column #", columns_[j].column + 1, " would exceed 2^32 keys"));
    }
  }
  // Nothing can fail from here on, so the batch changes only for a good line.
  labels_.insert(labels_.end(), scratch_.labels.begin(), scratch_.labels.end());
  dense_.insert(dense_.end(), scratch_.dense.begin(), scratch_.dense.end());
  auto add = [this](ColumnState& col, uint64_t key) {
    TableState& table = tables_[col.table];
    bool inserted;
    const uint32_t pos = table.index.FindOrInsert(key, static_cast<uint32_t>(table.keys.size()), &inserted);
    if (inserted) table.keys.push_back(key);
    col.rows.push_back(pos);
  };
  for (size_t j = 0; j < num_sparse; ++j) {
    ColumnState& col = columns_[j];
    // A column read only through attention views contributes no rows of its
    // own: its items are pulled only where a view selected them.
    if (!plan_.attention_only[j]) {
      for (uint32_t k = key_begin[j]; k < key_begin[j + 1]; ++k) add(col, scratch_.keys[k]);
    }
    col.offsets.push_back(static_cast<uint32_t>(col.rows.size()));
  }
  for (size_t b = 0; b < plan_.attention.size(); ++b) {
    const models::AttentionPlan& a = plan_.attention[b];
    for (int v = 0; v < a.num_views(); ++v) {
      ColumnState& col = columns_[a.first_view + v];
      for (uint64_t key : selected_[b][v]) add(col, key);
      col.offsets.push_back(static_cast<uint32_t>(col.rows.size()));
    }
  }
  ++size_;
  bytes_ += line.size() + 1;
  if (log_time_index_ >= 0) {
    const uint32_t b = scratch_.time_begin[log_time_index_];
    if (b < scratch_.time_begin[log_time_index_ + 1] && scratch_.times[b] > 0) {
      log_time_ = std::max(log_time_, static_cast<uint64_t>(scratch_.times[b]));
    }
  }
  return absl::OkStatus();
}

void BatchBuilder::SortTable(const TableState& state, models::TableBatch* out) {
  const size_t n = state.keys.size();
  out->server_begin.assign(num_servers_ + 1, 0);
  pos_.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const uint32_t shard = proto::ShardOf(state.keys[i], num_shards_);
    pos_[i] = shard_pos_[shard];
    ++out->server_begin[shard_server_[shard] + 1];
  }
  for (int s = 0; s < num_servers_; ++s) out->server_begin[s + 1] += out->server_begin[s];

  // Stable LSD passes: within a shard keys keep their first-seen order, so
  // the same lines always give the same batch.
  order_.resize(n);
  order_tmp_.resize(n);
  const uint32_t buckets = uint32_t{1} << radix_bits_;
  const uint32_t mask = buckets - 1;
  auto pass = [&](const uint32_t* in, uint32_t* dst, int shift) {
    counts_.assign(buckets, 0);
    for (size_t k = 0; k < n; ++k) {
      const uint32_t i = in != nullptr ? in[k] : static_cast<uint32_t>(k);
      ++counts_[(pos_[i] >> shift) & mask];
    }
    uint32_t sum = 0;
    for (uint32_t& c : counts_) {
      const uint32_t count = c;
      c = sum;  // first slot of this bucket
      sum += count;
    }
    for (size_t k = 0; k < n; ++k) {
      const uint32_t i = in != nullptr ? in[k] : static_cast<uint32_t>(k);
      dst[counts_[(pos_[i] >> shift) & mask]++] = i;
    }
  };
  if (radix_passes_ == 0) {
    for (size_t k = 0; k < n; ++k) order_[k] = static_cast<uint32_t>(k);
  } else if (radix_passes_ == 1) {
    pass(nullptr, order_.data(), 0);
  } else {
    pass(nullptr, order_tmp_.data(), 0);
    pass(order_tmp_.data(), order_.data(), radix_bits_);
  }

  out->keys.resize(n);
  remap_.resize(n);
  for (size_t k = 0; k < n; ++k) {
    const uint32_t i = order_[k];
    out->keys[k] = state.keys[i];
    remap_[i] = static_cast<uint32_t>(k);
  }
}

models::Batch BatchBuilder::Finish() {
  models::Batch batch;
  Finish(&batch);
  return batch;
}

void BatchBuilder::Finish(models::Batch* out) {
  out->size = size_;
  out->num_labels = parser_.num_labels();
  out->num_dense = parser_.num_dense();
  out->bytes = bytes_;
  out->log_time = log_time_;
  out->labels.swap(labels_);
  out->dense.swap(dense_);
  out->tables.resize(tables_.size());
  for (size_t t = 0; t < tables_.size(); ++t) {
    SortTable(tables_[t], &out->tables[t]);
    for (ColumnState& col : columns_) {
      if (col.table != static_cast<int>(t)) continue;
      for (uint32_t& row : col.rows) row = remap_[row];
    }
  }
  out->sparse.resize(columns_.size());
  for (size_t j = 0; j < columns_.size(); ++j) {
    models::SparseColumnBatch& dst = out->sparse[j];
    dst.column = columns_[j].column;
    dst.table = columns_[j].table;
    dst.offsets.swap(columns_[j].offsets);
    dst.rows.swap(columns_[j].rows);
  }
  Reset();
  // The vectors swapped in from `out` may be empty; size them for a batch
  // like this one so the next batch does not grow them step by step.
  labels_.reserve(out->labels.size());
  dense_.reserve(out->dense.size());
  for (size_t j = 0; j < columns_.size(); ++j) {
    columns_[j].offsets.reserve(out->sparse[j].offsets.size());
    columns_[j].rows.reserve(out->sparse[j].rows.size());
  }
}

void BatchBuilder::Clear() { Reset(); }

uint32_t BatchBuilder::KeyIndex::FindOrInsert(uint64_t key, uint32_t pos, bool* inserted) {
  if ((size_ + 1) * 4 > slots_.size()) Grow();
  const size_t mask = slots_.size() - 1;
  for (size_t i = static_cast<size_t>((key * 0x9e3779b97f4a7c15ULL) >> shift_);; i = (i + 1) & mask) {
    Slot& s = slots_[i];
    if (s.stamp != stamp_) {
      s = Slot{key, pos, stamp_};
      ++size_;
      *inserted = true;
      return pos;
    }
    if (s.key == key) {
      *inserted = false;
      return s.pos;
    }
  }
}

void BatchBuilder::KeyIndex::Grow() {
  std::vector<Slot> old;
  old.swap(slots_);
  const uint32_t live = stamp_;
  const size_t capacity = std::max<size_t>(64, old.size() * 2);
  slots_.assign(capacity, Slot{0, 0, 0});
  shift_ = 64 - std::countr_zero(capacity);
  stamp_ = 1;
  size_ = 0;
  bool unused;
  for (const Slot& s : old) {
    if (s.stamp == live) FindOrInsert(s.key, s.pos, &unused);
  }
}

void BatchBuilder::KeyIndex::Clear() {
  size_ = 0;
  if (++stamp_ == 0) {  // wrapped: every stamp must differ from the new one
    for (Slot& s : slots_) s.stamp = 0;
    stamp_ = 1;
  }
}

void BatchBuilder::Reset() {
  size_ = 0;
  bytes_ = 0;
  log_time_ = 0;
  labels_.clear();
  dense_.clear();
  for (ColumnState& col : columns_) {
    col.offsets.clear();
    col.offsets.push_back(0);
    col.rows.clear();
  }
  for (TableState& table : tables_) {
    table.index.Clear();
    table.keys.clear();
  }
}

}  // namespace ember::worker
