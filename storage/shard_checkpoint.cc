#include "storage/shard_checkpoint.h"

#include <algorithm>
#include <cstring>
#include <ctime>
#include <filesystem>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "proto/keys.h"
#include "storage/checkpoint_files.h"

namespace ember::storage {
namespace {

std::string RowsFileName(uint32_t table, uint32_t rank) { return absl::StrCat("t", table, "-r", rank, ".rows"); }
std::string DenseFileName(uint32_t rank) { return absl::StrCat("dense-r", rank, ".bin"); }

uint64_t BlockBytes(const proto::ShardBlock& b, size_t row_bytes) {
  return b.rows() * row_bytes + b.tombstones() * sizeof(uint64_t);
}

// Floats of optimizer state per dense entry, and scalars after the arrays.
void StateShape(const OptimizerRule& rule, size_t* per_entry, size_t* scalars) {
  *scalars = rule.StateFloats(0);
  *per_entry = rule.StateFloats(1) - *scalars;
}

}  // namespace

absl::StatusOr<proto::CheckpointPart> WriteCheckpointPart(const std::string& dir, const SaveSource& src) {
  const int64_t start = absl::GetCurrentTimeNanos();
  proto::CheckpointPart part;
  part.set_server_rank(src.rank);
  part.set_delta(src.delta);
  part.set_push_seq(src.push_seq);
  for (uint32_t g : src.generations) part.add_table_generation(g);

  // Owned shards in order, with the store that holds each.
  std::vector<std::pair<uint32_t, TieredStore*>> shards;
  for (TieredStore* s : src.stores) {
    for (uint32_t shard : s->shards()) shards.emplace_back(shard, s);
  }
  std::sort(shards.begin(), shards.end());

  for (uint32_t t = 0; t < src.specs.size(); ++t) {
    const size_t row_bytes = src.specs[t]->row_bytes();
    auto writer = DataFileWriter::Create(dir, RowsFileName(t, src.rank), src.bytes_per_sec);
    if (!writer.ok()) return writer.status();
    DataFileWriter& w = **writer;
    std::vector<uint8_t> scratch(row_bytes);
    for (const auto& [shard, store] : shards) {
      proto::ShardBlock* b = part.add_blocks();
      b->set_table(t);
      b->set_shard(shard);
      b->set_file(RowsFileName(t, src.rank));
      b->set_delta(src.delta);
      b->set_offset(w.BeginBlock());
      uint64_t rows = 0;
      absl::Status append;
      absl::Status st = store->ForEachRow(t, shard, src.generations[t], [&](const uint8_t* row) {
        if (!append.ok()) return;
        const RowMeta* m = reinterpret_cast<const RowMeta*>(row);
        if (src.delta && m->last_push_seq <= src.cut_push_seq) return;
        std::memcpy(scratch.data(), row, row_bytes);
        reinterpret_cast<RowMeta*>(scratch.data())->flags = 0;  // in-memory only
        append = w.Append(scratch.data(), row_bytes);
        ++rows;
      });
      if (!st.ok()) return st;
      if (!append.ok()) return append;
      uint64_t tombs = 0;
      if (src.delta && src.tombstones != nullptr) {
        auto it = src.tombstones->find(TableShard(t, shard));
        if (it != src.tombstones->end() && !it->second.empty()) {
          if (absl::Status a = w.Append(it->second.data(), it->second.size() * sizeof(uint64_t)); !a.ok()) return a;
          tombs = it->second.size();
        }
      }
      b->set_rows(rows);
      b->set_tombstones(tombs);
      b->set_crc32c(w.EndBlock());
    }
    auto file = w.Finish();
    if (!file.ok()) return file.status();
    part.set_bytes(part.bytes() + file->size());
    *part.add_files() = *file;
  }

  if (src.dense != nullptr) {
    const DenseSlice& d = *src.dense;
    auto writer = DataFileWriter::Create(dir, DenseFileName(src.rank), src.bytes_per_sec);
    if (!writer.ok()) return writer.status();
    DataFileWriter& w = **writer;
    proto::DenseBlock* b = part.add_dense();
    b->set_offset(d.offset);
    b->set_length(d.weights.size());
    b->set_trained(d.trained);
    b->set_file(DenseFileName(src.rank));
    b->set_file_offset(w.BeginBlock());
    if (absl::Status a = w.Append(d.weights.data(), d.weights.size() * sizeof(float)); !a.ok()) return a;
    if (absl::Status a = w.Append(d.state.data(), d.state.size() * sizeof(float)); !a.ok()) return a;
    b->set_bytes((d.weights.size() + d.state.size()) * sizeof(float));
    b->set_crc32c(w.EndBlock());
    auto file = w.Finish();
    if (!file.ok()) return file.status();
    part.set_bytes(part.bytes() + file->size());
    *part.add_files() = *file;
  }
  part.set_seconds((absl::GetCurrentTimeNanos() - start) * 1e-9);
  return part;
}

proto::CheckpointManifest MergeParts(const proto::JobConfig& config, uint64_t dense_total, uint64_t id,
                                     uint64_t parent_id, uint32_t epoch,
                                     const std::vector<proto::CheckpointPart>& parts) {
  proto::CheckpointManifest m;
  m.set_format_version(kCheckpointFormatVersion);
  m.set_id(id);
  m.set_parent_id(parent_id);
  m.set_config_fingerprint(ConfigFingerprint(config, dense_total));
  m.set_num_logical_shards(config.cluster().num_logical_shards());
  m.set_num_servers(static_cast<uint32_t>(parts.size()));
  m.set_created_unix(static_cast<int64_t>(std::time(nullptr)));
  m.set_dense_total(dense_total);
  m.set_job_name(config.name());
  *m.mutable_config() = config;
  m.set_epoch(epoch);
  for (int t = 0; t < config.tables_size(); ++t) {
    const proto::TableConfig& tc = config.tables(t);
    TableSpec spec(tc);
    proto::CheckpointTable* ct = m.add_tables();
    ct->set_name(tc.name());
    ct->set_dim(tc.dim());
    ct->set_row_bytes(static_cast<uint32_t>(spec.row_bytes()));
    ct->set_state_floats(static_cast<uint32_t>(spec.state_floats()));
    ct->set_optimizer(proto::OptimizerConfig::Kind_Name(tc.optimizer().kind()));
  }
  bool any_delta = false;
  for (const proto::CheckpointPart& p : parts) {
    for (const auto& f : p.files()) *m.add_files() = f;
    for (const auto& b : p.blocks()) {
      *m.add_blocks() = b;
      if (b.table() < static_cast<uint32_t>(m.tables_size())) {
        proto::CheckpointTable* ct = m.mutable_tables(b.table());
        ct->set_rows(ct->rows() + b.rows());
        ct->set_bytes(ct->bytes() + BlockBytes(b, ct->row_bytes()));
      }
      any_delta |= b.delta();
    }
    for (const auto& d : p.dense()) *m.add_dense() = d;
    for (int t = 0; t < p.table_generation_size() && t < m.tables_size(); ++t) {
      m.mutable_tables(t)->set_generation(std::max(m.tables(t).generation(), p.table_generation(t)));
    }
    m.set_push_seq(std::max(m.push_seq(), p.push_seq()));
  }
  // A checkpoint whose servers all wrote full shards depends on nothing.
  if (!any_delta) m.set_parent_id(0);
  return m;
}

// ---------------------------------------------------------------- restore

absl::StatusOr<RestorePlan> RestorePlan::Make(const std::string& dir, const RestoreTarget& target) {
  RestorePlan plan;
  plan.target_ = target;
  const proto::JobConfig& config = *target.config;
  const uint32_t L = config.cluster().num_logical_shards();
  const uint64_t fingerprint = ConfigFingerprint(config, target.dense_total);

  // The checkpoint, then ancestors while any block still needs its parent.
  absl::Status walked = WalkCheckpointChain(dir, [&](const std::string& at) -> absl::StatusOr<ChainLink> {
    if (target.root != nullptr) {
      absl::StatusOr<std::string> name = NameUnderRoot(target.root->path(), at);
      if (!name.ok()) return name.status();
      if (absl::StatusOr<std::string> ok = target.root->Resolve(*name); !ok.ok()) return ok.status();
    }
    absl::StatusOr<proto::CheckpointManifest> m = ReadManifest(at);
    if (!m.ok()) return m.status();
    // Every size and offset in range before anything is read or sized.
    if (absl::Status st = CheckManifestBounds(at, *m); !st.ok()) return st;
    if (m->num_logical_shards() != L) {
      return absl::FailedPreconditionError(absl::StrCat("checkpoint ", at, " has ", m->num_logical_shards(),
                                                        " logical shards, this job has ", L));
    }
    if (m->tables_size() != config.tables_size()) {
      return absl::FailedPreconditionError(absl::StrCat("checkpoint ", at, " has ", m->tables_size(),
                                                        " tables, this job has ", config.tables_size()));
    }
    for (int t = 0; t < config.tables_size(); ++t) {
      const proto::CheckpointTable& ct = m->tables(t);
      const proto::TableConfig& tc = config.tables(t);
      const std::string opt = proto::OptimizerConfig::Kind_Name(tc.optimizer().kind());
      if (ct.name() != tc.name() || ct.dim() != tc.dim() || ct.optimizer() != opt ||
          ct.row_bytes() != target.specs[t]->row_bytes()) {
        return absl::FailedPreconditionError(
            absl::StrCat("checkpoint ", at, " table ", t, " is '", ct.name(), "' dim ", ct.dim(), " ", ct.optimizer(),
                         "; this job's is '", tc.name(), "' dim ", tc.dim(), " ", opt));
      }
    }
    if (m->dense_total() != target.dense_total) {
      return absl::FailedPreconditionError(absl::StrCat("checkpoint ", at, " has ", m->dense_total(),
                                                        " dense parameters, this job's model has ",
                                                        target.dense_total));
    }
    if (m->config_fingerprint() != fingerprint) {
      return absl::FailedPreconditionError(absl::StrCat("checkpoint ", at, " was written for another config (",
                                                        "fingerprint ", m->config_fingerprint(), ", this job ",
                                                        fingerprint, ")"));
    }
    bool needs_parent = false;
    for (const auto& b : m->blocks()) needs_parent |= b.delta();
    const ChainLink link{m->id(), needs_parent ? m->parent_id() : 0};
    if (needs_parent && link.parent_id == 0) {
      return absl::DataLossError(absl::StrCat("checkpoint ", at, " has incremental blocks but no parent"));
    }
    plan.chain_.insert(plan.chain_.begin(), Link{at, std::move(*m)});
    return link;
  });
  if (!walked.ok()) return walked;

  // Index each link's blocks, then pick each owned shard's blocks.
  std::vector<absl::flat_hash_map<uint64_t, int>> index(plan.chain_.size());
  for (size_t l = 0; l < plan.chain_.size(); ++l) {
    const auto& blocks = plan.chain_[l].manifest.blocks();
    for (int i = 0; i < blocks.size(); ++i) {
      if (!index[l].emplace(TableShard(blocks[i].table(), blocks[i].shard()), i).second) {
        return absl::DataLossError(absl::StrCat("checkpoint ", plan.chain_[l].dir, " has two blocks for table ",
                                                blocks[i].table(), " shard ", blocks[i].shard()));
      }
    }
  }
  absl::flat_hash_map<std::string, uint64_t> needed_files;  // "dir/file" -> index of link
  for (uint32_t t = 0; t < target.specs.size(); ++t) {
    for (TieredStore* store : target.stores) {
      for (uint32_t shard : store->shards()) {
        std::vector<BlockRef> refs;
        int64_t l = static_cast<int64_t>(plan.chain_.size()) - 1;
        for (; l >= 0; --l) {
          auto it = index[l].find(TableShard(t, shard));
          if (it == index[l].end()) {
            return absl::DataLossError(absl::StrCat("checkpoint ", plan.chain_[l].dir, " has no block for table ", t,
                                                    " shard ", shard));
          }
          refs.push_back(BlockRef{static_cast<uint32_t>(l), it->second});
          if (!plan.chain_[l].manifest.blocks(it->second).delta()) break;
        }
        if (l < 0) {
          return absl::DataLossError(absl::StrCat("no full block for table ", t, " shard ", shard,
                                                  " in the chain of ", dir));
        }
        std::reverse(refs.begin(), refs.end());
        for (const BlockRef& r : refs) {
          needed_files.emplace(absl::StrCat(r.link, "/", plan.chain_[r.link].manifest.blocks(r.block).file()),
                               r.link);
        }
        plan.shards_.emplace_back(TableShard(t, shard), std::move(refs));
      }
    }
  }
  // Dense blocks come from the restored checkpoint itself.
  absl::StatusOr<std::vector<int>> dense = plan.DenseBlocks();
  if (!dense.ok()) return dense.status();
  plan.dense_blocks_ = *std::move(dense);
  for (int i : plan.dense_blocks_) {
    needed_files.emplace(absl::StrCat(plan.chain_.size() - 1, "/", plan.manifest().dense(i).file()),
                         plan.chain_.size() - 1);
  }
  // Every file the restore reads must be there, whole.
  for (size_t l = 0; l < plan.chain_.size(); ++l) {
    for (const proto::CheckpointFile& f : plan.chain_[l].manifest.files()) {
      if (!needed_files.contains(absl::StrCat(l, "/", f.name()))) continue;
      if (absl::Status st = VerifyFile(plan.chain_[l].dir, f, /*check_crc=*/false); !st.ok()) return st;
    }
  }
  return plan;
}

absl::StatusOr<std::vector<int>> RestorePlan::DenseBlocks() const {
  const Link& last = chain_.back();
  size_t per_entry, scalars;
  StateShape(*target_.dense_rule, &per_entry, &scalars);
  const uint64_t lo = target_.dense_offset, hi = lo + target_.dense_length, trained_hi = lo + target_.dense_trained;
  std::vector<int> picked;
  // [begin, end) of what the picked blocks cover, and whether one has state scalars.
  std::vector<std::pair<uint64_t, uint64_t>> cover;
  bool have_scalars = scalars == 0 || target_.dense_trained == 0;
  for (int i = 0; i < last.manifest.dense_size(); ++i) {
    const proto::DenseBlock& d = last.manifest.dense(i);  // in range: CheckManifestBounds
    const uint64_t begin = d.offset(), end = d.offset() + d.length();
    if (end <= lo || begin >= hi) continue;
    const uint64_t want = (d.length() + per_entry * d.trained() + (d.trained() > 0 ? scalars : 0)) * sizeof(float);
    if (want != d.bytes()) {
      return absl::DataLossError(absl::StrCat(last.dir, "/", d.file(), ": dense block of ", d.length(),
                                              " entries (", d.trained(), " trained) has ", d.bytes(),
                                              " bytes, this job's optimizer expects ", want));
    }
    // Entries this job trains must have been trained (have state) there too.
    if (std::min(end, trained_hi) > std::max(begin, lo) && std::min(end, trained_hi) > begin + d.trained()) {
      return absl::DataLossError(absl::StrCat("dense entry ", std::max(begin + d.trained(), lo),
                                              " is trained in this job but was not in ", last.dir));
    }
    have_scalars |= d.trained() > 0;
    cover.emplace_back(std::max(begin, lo), std::min(end, hi));
    picked.push_back(i);
  }
  std::sort(cover.begin(), cover.end());
  uint64_t next = lo;
  for (const auto& [b, e] : cover) {
    if (b > next) break;
    next = std::max(next, e);
  }
  if (next < hi || !have_scalars) {
    return absl::DataLossError(absl::StrCat(last.dir, ": its dense blocks do not cover [", lo, ", ", hi, ")"));
  }
  return picked;
}

std::vector<uint32_t> RestorePlan::generations() const {
  std::vector<uint32_t> e;
  for (const auto& t : manifest().tables()) e.push_back(t.generation());
  return e;
}

absl::Status RestorePlan::Verify(uint64_t* rows, uint64_t* bytes) const {
  *rows = 0;
  *bytes = 0;
  const uint32_t L = target_.config->cluster().num_logical_shards();
  std::string buf;
  for (const auto& [ts, refs] : shards_) {
    const uint32_t t = static_cast<uint32_t>(ts >> 32), shard = static_cast<uint32_t>(ts);
    const size_t row_bytes = target_.specs[t]->row_bytes();
    for (const BlockRef& r : refs) {
      const Link& link = chain_[r.link];
      const proto::ShardBlock& b = link.manifest.blocks(r.block);
      if (absl::Status st = ReadBlock(link.dir, b.file(), b.offset(), BlockBytes(b, row_bytes), b.crc32c(), &buf);
          !st.ok()) {
        return st;
      }
      for (uint64_t i = 0; i < b.rows(); ++i) {
        const RowMeta* m = reinterpret_cast<const RowMeta*>(buf.data() + i * row_bytes);
        if (proto::ShardOf(m->key, L) != shard) {
          return absl::DataLossError(absl::StrCat(link.dir, "/", b.file(), ": block of table ", t, " shard ", shard,
                                                  " holds key ", m->key, " of shard ", proto::ShardOf(m->key, L)));
        }
      }
      *rows += b.rows();
      *bytes += buf.size();
    }
  }
  const Link& last = chain_.back();
  for (int i : dense_blocks_) {
    const proto::DenseBlock& d = last.manifest.dense(i);
    if (absl::Status st = ReadBlock(last.dir, d.file(), d.file_offset(), d.bytes(), d.crc32c(), &buf); !st.ok()) {
      return st;
    }
    *bytes += buf.size();
  }
  return absl::OkStatus();
}

absl::Status RestorePlan::Apply(DenseSlice* dense, uint64_t* rows) const {
  *rows = 0;
  const std::vector<uint32_t> generation = generations();
  absl::flat_hash_map<uint32_t, TieredStore*> owner;
  for (TieredStore* s : target_.stores) {
    for (uint32_t shard : s->shards()) owner[shard] = s;
  }
  std::string buf;
  for (const auto& [ts, refs] : shards_) {
    const uint32_t t = static_cast<uint32_t>(ts >> 32), shard = static_cast<uint32_t>(ts);
    TieredStore* store = owner[shard];
    const size_t row_bytes = target_.specs[t]->row_bytes();
    if (absl::Status st = store->DropShard(t, shard); !st.ok()) return st;
    for (const BlockRef& r : refs) {
      const Link& link = chain_[r.link];
      const proto::ShardBlock& b = link.manifest.blocks(r.block);
      if (absl::Status st = ReadBlock(link.dir, b.file(), b.offset(), BlockBytes(b, row_bytes), b.crc32c(), &buf);
          !st.ok()) {
        return st;
      }
      if (b.tombstones() > 0) {
        if (absl::Status st = store->FlushPending(); !st.ok()) return st;
        std::vector<uint64_t> keys(b.tombstones());
        std::memcpy(keys.data(), buf.data() + b.rows() * row_bytes, keys.size() * sizeof(uint64_t));
        if (absl::Status st = store->Remove(t, shard, keys); !st.ok()) return st;
      }
      for (uint64_t i = 0; i < b.rows(); ++i) {
        const uint8_t* row = reinterpret_cast<const uint8_t*>(buf.data()) + i * row_bytes;
        if (reinterpret_cast<const RowMeta*>(row)->generation < generation[t]) continue;  // stale since a reset
        if (absl::Status st = store->Load(t, shard, row); !st.ok()) return st;
        ++*rows;
      }
    }
    if (absl::Status st = store->FlushPending(); !st.ok()) return st;
  }

  // The dense slice, gathered from the saved slices that overlap it.
  const Link& last = chain_.back();
  size_t per_entry, scalars;
  StateShape(*target_.dense_rule, &per_entry, &scalars);
  const uint64_t lo = target_.dense_offset, n = target_.dense_length, trained = target_.dense_trained;
  dense->offset = lo;
  dense->trained = trained;
  dense->weights.assign(n, 0.0f);
  dense->state.assign(target_.dense_rule->StateFloats(trained), 0.0f);
  // The blocks' sizes, coverage and trained entries were checked by Make
  // (DenseBlocks) and their checksums by ReadBlock.
  bool have_scalars = scalars == 0 || trained == 0;
  for (int i : dense_blocks_) {
    const proto::DenseBlock& d = last.manifest.dense(i);
    if (absl::Status st = ReadBlock(last.dir, d.file(), d.file_offset(), d.bytes(), d.crc32c(), &buf); !st.ok()) {
      return st;
    }
    const float* w = reinterpret_cast<const float*>(buf.data());
    const float* s = w + d.length();
    for (uint64_t g = std::max(lo, d.offset()); g < std::min(lo + n, d.offset() + d.length()); ++g) {
      const uint64_t src = g - d.offset(), dst = g - lo;
      dense->weights[dst] = w[src];
      if (dst < trained) {
        for (size_t j = 0; j < per_entry; ++j) dense->state[j * trained + dst] = s[j * d.trained() + src];
      }
    }
    if (!have_scalars && d.trained() > 0) {
      for (size_t j = 0; j < scalars; ++j) dense->state[per_entry * trained + j] = s[per_entry * d.trained() + j];
      have_scalars = true;
    }
  }
  return absl::OkStatus();
}

}  // namespace ember::storage
