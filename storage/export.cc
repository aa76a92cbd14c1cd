// Export bundles: writing one from a checkpoint, loading a chain of them for
// serving, applying deltas. The layout is in docs/export_format.md.
#include "storage/export.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "storage/checkpoint_files.h"
#include "storage/fd.h"
#include "storage/shard_checkpoint.h"
#include "storage/sparse_table.h"
#include "storage/tiered_store.h"

namespace ember::storage {
namespace {

namespace fs = std::filesystem;

constexpr FrameKind kExportFrame{"EMBEREXP", kExportFormatVersion, "export manifest", "bundle"};

std::string Join(const std::string& dir, const std::string& name) { return (fs::path(dir) / name).string(); }

// `dir` without "." / ".." parts or a trailing slash.
fs::path Clean(const std::string& dir) {
  fs::path p = fs::path(dir).lexically_normal();
  if (p.filename().empty() && p.has_parent_path()) p = p.parent_path();
  return p;
}

size_t ValueSize(proto::ValueType type) { return type == proto::FP16 ? 2 : 4; }

// IEEE binary16 <-> binary32, round to nearest even (the compiler's
// conversions: F16C where the target has it, libgcc's otherwise). Clang
// before 15 has no _Float16 on x86 but the storage type __fp16, whose
// conversions come from compiler-rt's builtins (CMakeLists.txt links them).
#if defined(__clang__) && __clang_major__ < 15
using Half = __fp16;
#else
using Half = _Float16;
#endif

void Encode(const float* w, size_t n, proto::ValueType type, uint8_t* out) {
  if (type == proto::FP16) {
    for (size_t i = 0; i < n; ++i) {
      const Half h = static_cast<Half>(w[i]);
      std::memcpy(out + 2 * i, &h, 2);
    }
  } else {
    std::memcpy(out, w, n * sizeof(float));
  }
}

void Decode(const uint8_t* in, size_t n, proto::ValueType type, float* out) {
  if (type == proto::FP16) {
    for (size_t i = 0; i < n; ++i) {
      Half h;
      std::memcpy(&h, in + 2 * i, 2);
      out[i] = static_cast<float>(h);
    }
  } else {
    std::memcpy(out, in, n * sizeof(float));
  }
}

// A read-only memory map of a whole file.
class MappedFile {
 public:
  static absl::StatusOr<std::shared_ptr<const MappedFile>> Open(const std::string& path, uint64_t size) {
    auto m = std::shared_ptr<MappedFile>(new MappedFile);
    if (size == 0) return std::shared_ptr<const MappedFile>(std::move(m));
    Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.get() < 0) return absl::ErrnoToStatus(errno, absl::StrCat(path, ": cannot open"));
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd.get(), 0);
    if (p == MAP_FAILED) return absl::ErrnoToStatus(errno, absl::StrCat(path, ": mmap failed"));
    m->data_ = static_cast<const uint8_t*>(p);
    m->size_ = size;
    return std::shared_ptr<const MappedFile>(std::move(m));
  }
  ~MappedFile() {
    if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
  }
  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  MappedFile() = default;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

// Runs that a delta rewrote, owned by the models that use them.
struct HeapRun {
  std::vector<uint64_t> keys;
  std::vector<uint8_t> values;
};

// The files of one bundle, checked and mapped.
struct Mapped {
  std::string dir;
  proto::ExportManifest manifest;
  std::vector<float> dense;
  // Per table: keys, values, index (num_shards + 1), deleted keys.
  struct Table {
    std::shared_ptr<const MappedFile> keys, values, index, deleted;
    const uint64_t* Keys() const { return reinterpret_cast<const uint64_t*>(keys->data()); }
    const uint64_t* Index() const { return reinterpret_cast<const uint64_t*>(index->data()); }
    const uint64_t* Deleted() const { return reinterpret_cast<const uint64_t*>(deleted->data()); }
  };
  std::vector<Table> tables;
};

const proto::CheckpointFile* FindFile(const proto::ExportManifest& m, const std::string& name) {
  for (const auto& f : m.files()) {
    if (f.name() == name) return &f;
  }
  return nullptr;
}

// Checks one data file named by the manifest (size, CRC-32C, expected
// length) and maps it.
absl::StatusOr<std::shared_ptr<const MappedFile>> MapChecked(const std::string& dir, const proto::ExportManifest& m,
                                                             const std::string& name, uint64_t expect_bytes) {
  const proto::CheckpointFile* f = FindFile(m, name);
  if (f == nullptr) {
    return absl::DataLossError(absl::StrCat(Join(dir, kManifestName), ": names data file '", name,
                                            "' but does not list it in files"));
  }
  if (f->size() != expect_bytes) {
    return absl::DataLossError(absl::StrCat(Join(dir, name), ": the manifest lists ", f->size(), " bytes, its counts ",
                                            "need ", expect_bytes));
  }
  // Name and size here; the checksum over the mapping, so the file is read
  // once (the pages it faults in stay cached for the lookups).
  if (absl::Status st = VerifyFile(dir, *f, /*check_crc=*/false); !st.ok()) return st;
  absl::StatusOr<std::shared_ptr<const MappedFile>> mapped = MappedFile::Open(Join(dir, name), f->size());
  if (!mapped.ok()) return mapped.status();
  const uint32_t crc = (*mapped)->size() == 0 ? 0 : Crc32c((*mapped)->data(), (*mapped)->size());
  if (crc != f->crc32c()) {
    return absl::DataLossError(absl::StrCat(Join(dir, name), ": checksum mismatch (whole file of ", f->size(),
                                            " bytes: crc ", CrcHex(crc), ", manifest says ", CrcHex(f->crc32c()),
                                            ")"));
  }
  return mapped;
}

// Checks that keys[0, rows) are sorted by (shard, key), strictly, with the
// index giving each shard's run.
absl::Status CheckRuns(const std::string& path, const uint64_t* keys, uint64_t rows, const uint64_t* index,
                       uint32_t num_shards) {
  if (index[0] != 0 || index[num_shards] != rows) {
    return absl::DataLossError(absl::StrCat(path, ": index runs from ", index[0], " to ", index[num_shards],
                                            ", expected 0 to ", rows));
  }
  for (uint32_t s = 0; s < num_shards; ++s) {
    if (index[s] > index[s + 1]) return absl::DataLossError(absl::StrCat(path, ": index decreases at shard ", s));
    for (uint64_t i = index[s]; i < index[s + 1]; ++i) {
      if (proto::ShardOf(keys[i], num_shards) != s || (i > index[s] && keys[i] <= keys[i - 1])) {
        return absl::DataLossError(absl::StrCat(path, ": key ", i, " (", keys[i], ") is out of order or not in shard ",
                                                s));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Mapped>> MapBundle(const std::string& dir) {
  auto b = std::make_unique<Mapped>();
  b->dir = dir;
  absl::StatusOr<proto::ExportManifest> m = ReadExportManifest(dir);
  if (!m.ok()) return m.status();
  b->manifest = *std::move(m);
  const proto::ExportManifest& man = b->manifest;
  const std::string mpath = Join(dir, kManifestName);
  if (man.format_version() != kExportFormatVersion) {
    return absl::FailedPreconditionError(absl::StrCat(mpath, ": format_version ", man.format_version(),
                                                      ", this build reads ", kExportFormatVersion));
  }
  const uint32_t L = man.num_logical_shards();
  if (L == 0 || L > (1u << 24)) return absl::DataLossError(absl::StrCat(mpath, ": num_logical_shards ", L));
  if (man.tables_size() != man.config().tables_size()) {
    return absl::DataLossError(absl::StrCat(mpath, ": ", man.tables_size(), " tables, its config has ",
                                            man.config().tables_size()));
  }
  if (man.dense_size() > (uint64_t{1} << 32)) {
    return absl::DataLossError(absl::StrCat(mpath, ": dense_size ", man.dense_size()));
  }
  absl::StatusOr<std::shared_ptr<const MappedFile>> dense =
      MapChecked(dir, man, man.dense_file(), man.dense_size() * sizeof(float));
  if (!dense.ok()) return dense.status();
  b->dense.resize(man.dense_size());
  if (!b->dense.empty()) std::memcpy(b->dense.data(), (*dense)->data(), b->dense.size() * sizeof(float));
  for (int t = 0; t < man.tables_size(); ++t) {
    const proto::ExportTable& et = man.tables(t);
    const proto::TableConfig& tc = man.config().tables(t);
    if (et.dim() != tc.dim() || et.dim() == 0 || et.dim() > 4096 || et.name() != tc.name()) {
      return absl::DataLossError(absl::StrCat(mpath, ": table ", t, " '", et.name(), "' dim ", et.dim(),
                                              " does not match its config ('", tc.name(), "' dim ", tc.dim(), ")"));
    }
    const uint64_t row_value_bytes = uint64_t{et.dim()} * ValueSize(et.value_type());
    if (et.rows() > (uint64_t{1} << 40) || et.deleted() > (uint64_t{1} << 40)) {
      return absl::DataLossError(absl::StrCat(mpath, ": table ", t, " row counts out of range"));
    }
    Mapped::Table mt;
    for (auto [file, bytes, out] :
         {std::tuple{et.keys_file(), et.rows() * 8, &mt.keys}, std::tuple{et.values_file(), et.rows() * row_value_bytes, &mt.values},
          std::tuple{et.index_file(), (uint64_t{L} + 1) * 8, &mt.index}}) {
      absl::StatusOr<std::shared_ptr<const MappedFile>> f = MapChecked(dir, man, file, bytes);
      if (!f.ok()) return f.status();
      *out = *std::move(f);
    }
    if (absl::Status st = CheckRuns(Join(dir, et.keys_file()), mt.Keys(), et.rows(), mt.Index(), L); !st.ok()) {
      return st;
    }
    if (man.base_version() == 0 && et.deleted() != 0) {
      return absl::DataLossError(absl::StrCat(mpath, ": a full bundle with deleted keys in table ", t));
    }
    if (et.deleted() > 0) {
      absl::StatusOr<std::shared_ptr<const MappedFile>> f = MapChecked(dir, man, et.deleted_file(), et.deleted() * 8);
      if (!f.ok()) return f.status();
      mt.deleted = *std::move(f);
      const uint64_t* d = mt.Deleted();
      for (uint64_t i = 1; i < et.deleted(); ++i) {
        const uint32_t a = proto::ShardOf(d[i - 1], L), c = proto::ShardOf(d[i], L);
        if (a > c || (a == c && d[i - 1] >= d[i])) {
          return absl::DataLossError(absl::StrCat(Join(dir, et.deleted_file()), ": key ", i, " out of order"));
        }
      }
    }
    b->tables.push_back(std::move(mt));
  }
  return b;
}

// Writes one table's files of a new bundle, shard by shard in order.
class TableWriter {
 public:
  static absl::StatusOr<std::unique_ptr<TableWriter>> Create(const std::string& dir, int t, uint32_t dim,
                                                             proto::ValueType type, bool delta, uint32_t num_shards) {
    auto w = std::unique_ptr<TableWriter>(new TableWriter);
    w->t_ = t;
    w->dim_ = dim;
    w->type_ = type;
    w->value_bytes_ = dim * ValueSize(type);
    w->delta_ = delta;
    w->index_.reserve(num_shards + 1);
    w->index_.push_back(0);
    for (auto [name, out] : {std::pair{absl::StrCat("t", t, ".keys"), &w->keys_},
                             std::pair{absl::StrCat("t", t, ".values"), &w->values_}}) {
      absl::StatusOr<std::unique_ptr<DataFileWriter>> f = DataFileWriter::Create(dir, name, 0);
      if (!f.ok()) return f.status();
      *out = *std::move(f);
    }
    if (delta) {
      absl::StatusOr<std::unique_ptr<DataFileWriter>> f = DataFileWriter::Create(dir, absl::StrCat("t", t, ".deleted"), 0);
      if (!f.ok()) return f.status();
      w->deleted_ = *std::move(f);
    }
    w->encoded_.resize(w->value_bytes_);
    return w;
  }

  // Appends one row (values already in the bundle's type).
  absl::Status AddEncoded(uint64_t key, const uint8_t* value) {
    if (absl::Status st = keys_->Append(&key, 8); !st.ok()) return st;
    ++rows_;
    return values_->Append(value, value_bytes_);
  }
  absl::Status AddDeleted(uint64_t key) {
    ++deleted_count_;
    return deleted_->Append(&key, 8);
  }
  // Ends the current shard's run.
  void EndShard() { index_.push_back(rows_); }

  // Finishes the files; adds them and the table's entry to `m`.
  absl::Status Finish(const std::string& dir, proto::ExportManifest* m, proto::ExportTable* et) {
    absl::StatusOr<std::unique_ptr<DataFileWriter>> idx = DataFileWriter::Create(dir, absl::StrCat("t", t_, ".index"), 0);
    if (!idx.ok()) return idx.status();
    if (absl::Status st = (*idx)->Append(index_.data(), index_.size() * 8); !st.ok()) return st;
    for (DataFileWriter* w : {keys_.get(), values_.get(), idx->get(), deleted_.get()}) {
      if (w == nullptr) continue;
      absl::StatusOr<proto::CheckpointFile> f = w->Finish();
      if (!f.ok()) return f.status();
      *m->add_files() = *std::move(f);
    }
    et->set_rows(rows_);
    et->set_deleted(deleted_count_);
    et->set_value_type(type_);
    et->set_keys_file(absl::StrCat("t", t_, ".keys"));
    et->set_values_file(absl::StrCat("t", t_, ".values"));
    et->set_index_file(absl::StrCat("t", t_, ".index"));
    if (delta_) et->set_deleted_file(absl::StrCat("t", t_, ".deleted"));
    return absl::OkStatus();
  }

  size_t value_bytes() const { return value_bytes_; }
  uint8_t* scratch() { return encoded_.data(); }

 private:
  TableWriter() = default;
  int t_ = 0;
  uint32_t dim_ = 0;
  proto::ValueType type_ = proto::FP32;
  size_t value_bytes_ = 0;
  bool delta_ = false;
  std::unique_ptr<DataFileWriter> keys_, values_, deleted_;
  std::vector<uint64_t> index_;
  uint64_t rows_ = 0, deleted_count_ = 0;
  std::vector<uint8_t> encoded_;
};

// Removes the bundle directory an export made, unless it was completed.
class DirGuard {
 public:
  explicit DirGuard(std::string dir) : dir_(std::move(dir)) {}
  ~DirGuard() {
    if (dir_.empty()) return;
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  void Release() { dir_.clear(); }

 private:
  std::string dir_;
};

bool SamePath(const std::string& a, const std::string& b) {
  std::error_code ea, eb;
  const fs::path ca = fs::weakly_canonical(a, ea), cb = fs::weakly_canonical(b, eb);
  return !ea && !eb && ca == cb;
}

}  // namespace

absl::StatusOr<proto::ValueType> ParseValueType(const std::string& name) {
  if (name == "fp32") return proto::FP32;
  if (name == "fp16") return proto::FP16;
  return absl::InvalidArgumentError(absl::StrCat("'", name, "': the value type is fp32 or fp16"));
}

bool IsExportBundle(const std::string& dir) {
  Fd fd(::open(Join(dir, kManifestName).c_str(), O_RDONLY | O_CLOEXEC));
  char magic[8];
  return fd.get() >= 0 && ::pread(fd.get(), magic, 8, 0) == 8 && std::memcmp(magic, kExportFrame.magic, 8) == 0;
}

std::string ExportRootOf(const std::string& dir) {
  const fs::path p = Clean(dir);
  if (!IsExportBundle(dir)) return p.string();
  return p.has_parent_path() ? p.parent_path().string() : ".";
}

uint64_t ExportVersionOf(const std::string& name) {
  if (name.empty() || name.size() > 19 || name[0] == '0') return 0;
  for (char c : name) {
    if (c < '0' || c > '9') return 0;
  }
  uint64_t v = 0;
  return absl::SimpleAtoi(name, &v) ? v : 0;
}

std::vector<ExportEntry> ListExports(const std::string& root) {
  std::vector<ExportEntry> out;
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(root, ec)) {
    const uint64_t v = ExportVersionOf(e.path().filename().string());
    if (v == 0 || !e.is_directory(ec)) continue;
    ExportEntry x;
    x.version = v;
    x.dir = e.path().string();
    absl::StatusOr<proto::ExportManifest> m = ReadExportManifest(x.dir);
    x.complete = m.ok();
    if (m.ok()) {
      x.base_version = m->base_version();
    } else {
      x.problem = std::string(m.status().message());
    }
    out.push_back(std::move(x));
  }
  std::sort(out.begin(), out.end(), [](const ExportEntry& a, const ExportEntry& b) { return a.version < b.version; });
  return out;
}

absl::StatusOr<proto::ExportManifest> ReadExportManifest(const std::string& dir) {
  proto::ExportManifest m;
  if (absl::Status st = ReadFramed(dir, kExportFrame, &m); !st.ok()) return st;
  if (m.format_version() != kExportFormatVersion) {
    return absl::FailedPreconditionError(absl::StrCat(Join(dir, kManifestName), ": manifest format_version ",
                                                      m.format_version(), ", this build reads ",
                                                      kExportFormatVersion));
  }
  if (m.version() != ExportVersionOf(Clean(dir).filename().string())) {
    return absl::DataLossError(absl::StrCat(Join(dir, kManifestName), ": holds version ", m.version(),
                                            ", not its directory's"));
  }
  return m;
}

// ---------------------------------------------------------------------------
// Export.

absl::StatusOr<proto::ExportManifest> ExportCheckpoint(const ExportOptions& options) {
  absl::StatusOr<proto::CheckpointManifest> ckpt = ReadManifest(options.checkpoint_dir);
  if (!ckpt.ok()) return ckpt.status();
  proto::JobConfig config;
  if (ckpt->has_config()) {
    config = ckpt->config();
    if (options.config != nullptr &&
        ConfigFingerprint(*options.config, ckpt->dense_total()) != ConfigFingerprint(config, ckpt->dense_total())) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the given config's tables or shards differ from the config stored in checkpoint ", options.checkpoint_dir));
    }
  } else if (options.config != nullptr) {
    config = *options.config;
  } else {
    return absl::FailedPreconditionError(absl::StrCat("checkpoint ", options.checkpoint_dir,
                                                      " holds no job config (it predates export): pass --config"));
  }
  const uint32_t L = ckpt->num_logical_shards();
  const uint64_t fingerprint = ConfigFingerprint(config, ckpt->dense_total());
  if (fingerprint != ckpt->config_fingerprint()) {
    return absl::FailedPreconditionError(absl::StrCat("checkpoint ", options.checkpoint_dir,
                                                      " was written for another config (fingerprint ",
                                                      ckpt->config_fingerprint(), ", the config's ", fingerprint, ")"));
  }
  if (options.shards_per_pass == 0) return absl::InvalidArgumentError("shards_per_pass must be >= 1");

  std::shared_ptr<const ExportedModel> base;
  if (!options.base_dir.empty()) {
    if (!SamePath(Clean(options.base_dir).parent_path().string(), options.out_root)) {
      return absl::InvalidArgumentError(absl::StrCat("the base bundle ", options.base_dir,
                                                     " must be in the export root ", options.out_root,
                                                     " (a delta names its base by version)"));
    }
    absl::StatusOr<std::shared_ptr<const ExportedModel>> b = ExportedModel::Load(options.base_dir);
    if (!b.ok()) return b.status();
    base = *std::move(b);
    if (base->manifest().config_fingerprint() != fingerprint || base->manifest().num_logical_shards() != L) {
      return absl::FailedPreconditionError(absl::StrCat("base bundle ", options.base_dir,
                                                        " has another model layout than checkpoint ",
                                                        options.checkpoint_dir));
    }
    for (const auto& t : base->manifest().tables()) {
      if (t.value_type() != options.value_type) {
        return absl::InvalidArgumentError(absl::StrCat("base bundle ", options.base_dir, " stores ",
                                                       proto::ValueType_Name(t.value_type()), ", the delta would be ",
                                                       proto::ValueType_Name(options.value_type)));
      }
    }
  }

  // The new version's directory: made here, so removed here on failure.
  std::error_code ec;
  fs::create_directories(options.out_root, ec);
  if (ec) return absl::InternalError(absl::StrCat(options.out_root, ": cannot create: ", ec.message()));
  uint64_t version = 1;
  for (const fs::directory_entry& e : fs::directory_iterator(options.out_root, ec)) {
    version = std::max(version, ExportVersionOf(e.path().filename().string()) + 1);
  }
  const std::string dir = Join(options.out_root, std::to_string(version));
  if (::mkdir(dir.c_str(), 0755) != 0) return absl::ErrnoToStatus(errno, absl::StrCat(dir, ": cannot create"));
  DirGuard guard(dir);

  proto::ExportManifest m;
  m.set_format_version(kExportFormatVersion);
  m.set_version(version);
  m.set_base_version(base ? base->version() : 0);
  m.set_full_version(base ? base->manifest().full_version() : version);
  m.set_model_name(config.name());
  *m.mutable_config() = config;
  m.set_config_fingerprint(fingerprint);
  m.set_num_logical_shards(L);
  m.set_checkpoint_id(ckpt->id());
  m.set_checkpoint_dir(fs::absolute(options.checkpoint_dir, ec).lexically_normal().string());
  m.set_epoch(ckpt->epoch());
  m.set_global_step(ckpt->job_state().global_step());
  m.set_created_unix(static_cast<int64_t>(std::time(nullptr)));
  m.set_dense_size(ckpt->dense_total());
  m.set_dense_file("dense.f32");

  std::vector<std::unique_ptr<TableSpec>> owned_specs;
  std::vector<const TableSpec*> specs;
  for (const proto::TableConfig& tc : config.tables()) {
    owned_specs.push_back(std::make_unique<TableSpec>(tc));
    specs.push_back(owned_specs.back().get());
  }
  const OptimizerRule dense_rule(config.model().dense_optimizer());
  RestoreTarget target;
  target.config = &config;
  target.dense_total = ckpt->dense_total();
  target.specs = specs;
  target.dense_rule = &dense_rule;

  // The dense vector: a plan over no shards.
  {
    TieredStore none(specs, {}, L, 0, nullptr);
    target.stores = {&none};
    target.dense_length = ckpt->dense_total();
    absl::StatusOr<RestorePlan> plan = RestorePlan::Make(options.checkpoint_dir, target);
    if (!plan.ok()) return plan.status();
    DenseSlice dense;
    uint64_t rows = 0;
    if (absl::Status st = plan->Apply(&dense, &rows); !st.ok()) return st;
    absl::StatusOr<std::unique_ptr<DataFileWriter>> w = DataFileWriter::Create(dir, m.dense_file(), 0);
    if (!w.ok()) return w.status();
    if (absl::Status st = (*w)->Append(dense.weights.data(), dense.weights.size() * sizeof(float)); !st.ok()) {
      return st;
    }
    absl::StatusOr<proto::CheckpointFile> f = (*w)->Finish();
    if (!f.ok()) return f.status();
    *m.add_files() = *std::move(f);
    target.dense_length = 0;
  }

  std::vector<uint32_t> generation;
  for (const auto& t : ckpt->tables()) generation.push_back(t.generation());
  std::vector<std::unique_ptr<TableWriter>> writers;
  for (int t = 0; t < config.tables_size(); ++t) {
    absl::StatusOr<std::unique_ptr<TableWriter>> w =
        TableWriter::Create(dir, t, config.tables(t).dim(), options.value_type, base != nullptr, L);
    if (!w.ok()) return w.status();
    writers.push_back(*std::move(w));
  }

  // Expiry's "now": the cut's push counter, and per table the newest log day
  // among its rows (a first pass, only for tables that expire by day).
  const uint64_t now_push_seq = ckpt->push_seq();
  std::vector<uint32_t> now_day(config.tables_size(), 0);
  bool by_day = false;
  for (const auto& tc : config.tables()) by_day |= tc.expiry().after_days() > 0;

  std::vector<uint64_t> total(config.tables_size(), 0);
  std::vector<std::pair<uint64_t, const uint8_t*>> rows;
  for (int pass = by_day ? 0 : 1; pass < 2; ++pass) {
    for (uint32_t first = 0; first < L; first += options.shards_per_pass) {
      std::vector<uint32_t> shards;
      for (uint32_t s = first; s < std::min(L, first + options.shards_per_pass); ++s) shards.push_back(s);
      TieredStore store(specs, shards, L, 0, nullptr);
      target.stores = {&store};
      absl::StatusOr<RestorePlan> plan = RestorePlan::Make(options.checkpoint_dir, target);
      if (!plan.ok()) return plan.status();
      DenseSlice unused;
      uint64_t loaded = 0;
      if (absl::Status st = plan->Apply(&unused, &loaded); !st.ok()) return st;
      for (int t = 0; t < config.tables_size(); ++t) {
        const proto::ExpiryConfig& x = config.tables(t).expiry();
        TableWriter& w = *writers[t];
        const uint32_t dim = config.tables(t).dim();
        for (uint32_t s : shards) {
          rows.clear();
          absl::Status st = store.ForEachRow(t, s, generation[t], [&](const uint8_t* row) {
            const RowMeta* meta = reinterpret_cast<const RowMeta*>(row);
            if (pass == 0) {
              now_day[t] = std::max<uint32_t>(now_day[t], meta->last_day);
            } else if (!RowExpired(x, *meta, now_push_seq, now_day[t])) {
              rows.emplace_back(meta->key, row);
            }
          });
          if (!st.ok()) return st;
          if (pass == 0) continue;
          std::sort(rows.begin(), rows.end());
          total[t] += rows.size();
          if (base == nullptr) {
            for (const auto& [key, row] : rows) {
              Encode(TableSpec::Weights(const_cast<uint8_t*>(row)), dim, options.value_type, w.scratch());
              if (absl::Status st2 = w.AddEncoded(key, w.scratch()); !st2.ok()) return st2;
            }
          } else {
            // Against the base's run: new or changed rows, and keys gone.
            const ExportedModel::Run& old = base->run(t, s);
            size_t i = 0;
            for (const auto& [key, row] : rows) {
              while (i < old.rows && old.keys[i] < key) {
                if (absl::Status st2 = w.AddDeleted(old.keys[i++]); !st2.ok()) return st2;
              }
              Encode(TableSpec::Weights(const_cast<uint8_t*>(row)), dim, options.value_type, w.scratch());
              const bool same = i < old.rows && old.keys[i] == key &&
                                std::memcmp(old.values + i * w.value_bytes(), w.scratch(), w.value_bytes()) == 0;
              if (i < old.rows && old.keys[i] == key) ++i;
              if (!same) {
                if (absl::Status st2 = w.AddEncoded(key, w.scratch()); !st2.ok()) return st2;
              }
            }
            while (i < old.rows) {
              if (absl::Status st2 = w.AddDeleted(old.keys[i++]); !st2.ok()) return st2;
            }
          }
          w.EndShard();
        }
      }
    }
  }
  for (int t = 0; t < config.tables_size(); ++t) {
    proto::ExportTable* et = m.add_tables();
    et->set_name(config.tables(t).name());
    et->set_dim(config.tables(t).dim());
    et->set_total_rows(total[t]);
    et->set_default_value(config.tables(t).admission().default_value());
    et->set_generation(generation[t]);
    if (absl::Status st = writers[t]->Finish(dir, &m, et); !st.ok()) return st;
  }
  if (absl::Status st = WriteFramed(dir, kExportFrame, m); !st.ok()) return st;
  guard.Release();
  return m;
}

// ---------------------------------------------------------------------------
// ExportedModel.

absl::StatusOr<std::shared_ptr<const ExportedModel>> ExportedModel::LoadOne(const std::string& dir) {
  absl::StatusOr<std::unique_ptr<Mapped>> b = MapBundle(dir);
  if (!b.ok()) return b.status();
  if ((*b)->manifest.base_version() != 0) {
    return absl::InternalError("LoadOne of a delta");
  }
  auto model = std::shared_ptr<ExportedModel>(new ExportedModel);
  model->manifest_ = (*b)->manifest;
  model->num_shards_ = model->manifest_.num_logical_shards();
  model->dense_ = std::move((*b)->dense);
  for (int t = 0; t < model->manifest_.tables_size(); ++t) {
    const proto::ExportTable& et = model->manifest_.tables(t);
    const Mapped::Table& mt = (*b)->tables[t];
    Table table;
    table.dim = et.dim();
    table.type = et.value_type();
    table.value_bytes = et.dim() * ValueSize(et.value_type());
    table.default_value = et.default_value();
    // One owner for both maps of the table.
    auto owner = std::make_shared<std::pair<std::shared_ptr<const MappedFile>, std::shared_ptr<const MappedFile>>>(
        mt.keys, mt.values);
    table.runs.resize(model->num_shards_);
    const uint64_t* index = mt.Index();
    for (uint32_t s = 0; s < model->num_shards_; ++s) {
      Run& r = table.runs[s];
      r.rows = index[s + 1] - index[s];
      r.keys = mt.keys->data() == nullptr ? nullptr : mt.Keys() + index[s];
      r.values = mt.values->data() == nullptr ? nullptr : mt.values->data() + index[s] * table.value_bytes;
      r.owner = owner;
    }
    if (et.total_rows() != et.rows()) {
      return absl::DataLossError(absl::StrCat(Join(dir, kManifestName), ": table ", t, " has ", et.rows(),
                                              " rows but total_rows ", et.total_rows()));
    }
    model->tables_.push_back(std::move(table));
  }
  return std::shared_ptr<const ExportedModel>(std::move(model));
}

absl::StatusOr<std::shared_ptr<const ExportedModel>> ExportedModel::Load(const std::string& dir) {
  // The chain: this bundle, then its bases back to a full one.
  std::vector<std::string> chain{dir};
  const std::string root = Clean(dir).parent_path().string();
  for (;;) {
    absl::StatusOr<proto::ExportManifest> m = ReadExportManifest(chain.back());
    if (!m.ok()) return m.status();
    if (m->base_version() == 0) break;
    if (m->base_version() >= m->version()) {
      return absl::DataLossError(absl::StrCat(Join(chain.back(), kManifestName), ": base version ",
                                              m->base_version(), " is not older than ", m->version()));
    }
    chain.push_back(Join(root, std::to_string(m->base_version())));
  }
  absl::StatusOr<std::shared_ptr<const ExportedModel>> model = LoadOne(chain.back());
  if (!model.ok()) return model.status();
  for (size_t i = chain.size() - 1; i-- > 0;) {
    model = (*model)->ApplyDelta(chain[i]);
    if (!model.ok()) return model.status();
  }
  return model;
}

absl::StatusOr<std::shared_ptr<const ExportedModel>> ExportedModel::ApplyDelta(const std::string& dir) const {
  absl::StatusOr<std::unique_ptr<Mapped>> b = MapBundle(dir);
  if (!b.ok()) return b.status();
  const Mapped& d = **b;
  const proto::ExportManifest& dm = d.manifest;
  const std::string mpath = Join(dir, kManifestName);
  if (dm.base_version() != version()) {
    return absl::FailedPreconditionError(absl::StrCat(mpath, ": a ", dm.base_version() == 0 ? "full bundle" : "delta on version ",
                                                      dm.base_version() == 0 ? "" : std::to_string(dm.base_version()),
                                                      ", not a delta on version ", version()));
  }
  if (dm.config_fingerprint() != manifest_.config_fingerprint() || dm.num_logical_shards() != num_shards_ ||
      dm.tables_size() != static_cast<int>(tables_.size()) || dm.dense_size() != dense_.size()) {
    return absl::FailedPreconditionError(absl::StrCat(mpath, ": another model layout than version ", version()));
  }
  auto model = std::shared_ptr<ExportedModel>(new ExportedModel);
  model->manifest_ = dm;
  model->num_shards_ = num_shards_;
  model->dense_ = d.dense;
  for (size_t t = 0; t < tables_.size(); ++t) {
    const proto::ExportTable& et = dm.tables(static_cast<int>(t));
    const Table& old = tables_[t];
    if (et.value_type() != old.type) {
      return absl::FailedPreconditionError(absl::StrCat(mpath, ": table ", t, " stores ",
                                                        proto::ValueType_Name(et.value_type()), ", version ",
                                                        version(), " ", proto::ValueType_Name(old.type)));
    }
    Table table = old;  // shares every run; the ones the delta touches are replaced
    table.default_value = et.default_value();
    const Mapped::Table& mt = d.tables[t];
    const uint64_t* index = mt.Index();
    const uint64_t* dkeys = mt.keys->data() == nullptr ? nullptr : mt.Keys();
    const uint8_t* dvals = mt.values->data();
    const uint64_t* del = et.deleted() > 0 ? mt.Deleted() : nullptr;
    uint64_t di = 0;  // next deleted key
    const size_t vb = old.value_bytes;
    for (uint32_t s = 0; s < num_shards_; ++s) {
      const uint64_t lo = index[s], hi = index[s + 1];
      uint64_t dend = di;
      while (dend < et.deleted() && proto::ShardOf(del[dend], num_shards_) == s) ++dend;
      if (lo == hi && dend == di) continue;
      const Run& o = old.runs[s];
      auto heap = std::make_shared<HeapRun>();
      heap->keys.reserve(o.rows + (hi - lo));
      heap->values.reserve((o.rows + (hi - lo)) * vb);
      size_t i = 0;
      uint64_t j = lo;
      auto take_old = [&] {
        heap->keys.push_back(o.keys[i]);
        heap->values.insert(heap->values.end(), o.values + i * vb, o.values + (i + 1) * vb);
        ++i;
      };
      while (i < o.rows || j < hi) {
        if (j < hi && (i == o.rows || dkeys[j] <= o.keys[i])) {
          if (i < o.rows && o.keys[i] == dkeys[j]) ++i;  // replaced
          heap->keys.push_back(dkeys[j]);
          heap->values.insert(heap->values.end(), dvals + j * vb, dvals + (j + 1) * vb);
          ++j;
        } else if (di < dend && del[di] == o.keys[i]) {
          ++di, ++i;
        } else if (di < dend && del[di] < o.keys[i]) {
          return absl::FailedPreconditionError(absl::StrCat(Join(dir, et.deleted_file()), ": deletes key ", del[di],
                                                            " that version ", version(), " does not hold"));
        } else {
          take_old();
        }
      }
      if (di < dend) {
        return absl::FailedPreconditionError(absl::StrCat(Join(dir, et.deleted_file()), ": deletes key ", del[di],
                                                          " that version ", version(), " does not hold"));
      }
      Run r;
      r.rows = heap->keys.size();
      r.keys = heap->keys.data();
      r.values = heap->values.data();
      r.owner = heap;
      table.runs[s] = std::move(r);
    }
    uint64_t rows = 0;
    for (const Run& r : table.runs) rows += r.rows;
    if (rows != et.total_rows()) {
      return absl::FailedPreconditionError(absl::StrCat(mpath, ": table ", t, " should have ", et.total_rows(),
                                                        " rows after the delta, version ", version(), " + delta has ",
                                                        rows, " (the base is not the one it was made on)"));
    }
    model->tables_.push_back(std::move(table));
  }
  return std::shared_ptr<const ExportedModel>(std::move(model));
}

uint64_t ExportedModel::rows(size_t t) const {
  uint64_t n = 0;
  for (const Run& r : tables_[t].runs) n += r.rows;
  return n;
}

bool ExportedModel::Lookup(size_t t, uint64_t key, float* out) const {
  const Table& table = tables_[t];
  const Run& r = table.runs[proto::ShardOf(key, num_shards_)];
  const uint64_t* end = r.keys + r.rows;
  const uint64_t* it = std::lower_bound(r.keys, end, key);
  if (it == end || *it != key) {
    std::fill(out, out + table.dim, table.default_value);
    return false;
  }
  Decode(r.values + (it - r.keys) * table.value_bytes, table.dim, table.type, out);
  return true;
}

// ---------------------------------------------------------------------------
// Inspect.

absl::Status InspectExport(const std::string& dir, int sample_rows, std::ostream& out) {
  absl::StatusOr<proto::ExportManifest> m = ReadExportManifest(dir);
  if (!m.ok()) {
    out << "manifest: " << m.status().message() << "\n";
    return m.status();
  }
  out << "bundle " << dir << "\n"
      << "  version " << m->version() << (m->base_version() ? absl::StrCat(" (delta on ", m->base_version(), ")")
                                                             : std::string(" (full)"))
      << ", chain starts at " << m->full_version() << "\n"
      << "  model '" << m->model_name() << "', " << proto::ModelConfig::Kind_Name(m->config().model().kind())
      << ", from checkpoint " << m->checkpoint_id() << " (" << m->checkpoint_dir() << "), epoch " << m->epoch()
      << ", step " << m->global_step() << "\n"
      << "  dense: " << m->dense_size() << " floats in " << m->dense_file() << "\n"
      << "  logical shards: " << m->num_logical_shards() << "\n";
  for (const auto& t : m->tables()) {
    out << "  table '" << t.name() << "' dim " << t.dim() << " " << proto::ValueType_Name(t.value_type()) << ": "
        << t.rows() << " rows" << (m->base_version() ? absl::StrCat(", ", t.deleted(), " deleted, ") : ", ")
        << t.total_rows() << " in all, default " << t.default_value() << "\n";
  }
  absl::Status first;
  for (const auto& f : m->files()) {
    absl::Status st = VerifyFile(dir, f, /*check_crc=*/true);
    out << "  file " << f.name() << " " << f.size() << " bytes crc " << CrcHex(f.crc32c()) << ": "
        << (st.ok() ? "ok" : std::string(st.message())) << "\n";
    if (!st.ok() && first.ok()) first = st;
  }
  if (!first.ok()) return first;
  absl::StatusOr<std::shared_ptr<const ExportedModel>> model = ExportedModel::Load(dir);
  if (!model.ok()) {
    out << "  load: " << model.status().message() << "\n";
    return model.status();
  }
  out << "  load (with its bases): ok\n";
  for (size_t t = 0; t < (*model)->num_tables(); ++t) {
    out << "  table " << t << " serves " << (*model)->rows(t) << " rows";
    int shown = 0;
    std::vector<float> w((*model)->dim(t));
    for (uint32_t s = 0; s < m->num_logical_shards() && shown < sample_rows; ++s) {
      const ExportedModel::Run& r = (*model)->run(t, s);
      for (size_t i = 0; i < r.rows && shown < sample_rows; ++i, ++shown) {
        (*model)->Lookup(t, r.keys[i], w.data());
        out << (shown == 0 ? ":" : "") << "\n    key " << r.keys[i] << ":";
        for (size_t k = 0; k < std::min<size_t>(8, w.size()); ++k) out << " " << w[k];
      }
    }
    out << "\n";
  }
  return absl::OkStatus();
}

}  // namespace ember::storage
