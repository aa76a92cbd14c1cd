// Export bundles: a trained model as serving reads it (docs/export_format.md).
// ExportCheckpoint writes a bundle from a checkpoint: the dense vector and,
// per table, the embeddings without optimizer state, sorted by (logical
// shard, key) so that they are served straight from a memory map. A delta
// bundle holds only what changed since its base bundle. ExportedModel loads
// a bundle (and the chain of bases a delta needs) for lookups, and applies
// deltas to make the next model.
//
// Thread safety: free functions are thread-safe for distinct output
// directories. An ExportedModel is immutable once made: any number of threads
// may read it; ApplyDelta returns a new one and leaves the old one intact.
#ifndef EMBER_STORAGE_EXPORT_H_
#define EMBER_STORAGE_EXPORT_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "proto/config.pb.h"
#include "proto/export.pb.h"
#include "proto/keys.h"

namespace ember::storage {

// Bumped whenever a bundle file's byte layout changes; another version is
// refused.
inline constexpr uint32_t kExportFormatVersion = 1;

// The version a bundle directory's name spells ("17" -> 17): plain decimal,
// no sign or leading zero, as TensorFlow Serving numbers model versions; 0
// for any other name.
uint64_t ExportVersionOf(const std::string& name);

// "fp32" or "fp16" (ExportConfig.value_type, `ember export --dtype`) as a
// ValueType; InvalidArgument otherwise.
[[nodiscard]] absl::StatusOr<proto::ValueType> ParseValueType(const std::string& name);

// True if dir/MANIFEST is an export bundle's (by its magic); false for a
// checkpoint's MANIFEST, none, or anything else.
bool IsExportBundle(const std::string& dir);
// The export root `dir` belongs to: its parent if it is a bundle
// (IsExportBundle), else `dir` itself (taken for a root).
std::string ExportRootOf(const std::string& dir);

// A bundle directory under an export root, as ListExports finds it.
struct ExportEntry {
  uint64_t version = 0;
  uint64_t base_version = 0;  // 0: full
  std::string dir;
  bool complete = false;  // has a readable MANIFEST
  std::string problem;    // why not, when !complete
};
// The version directories under `root`, by version; empty if `root` does not
// exist.
std::vector<ExportEntry> ListExports(const std::string& root);

// Reads and checks dir/MANIFEST (frame, checksum, format version).
[[nodiscard]] absl::StatusOr<proto::ExportManifest> ReadExportManifest(const std::string& dir);

struct ExportOptions {
  std::string checkpoint_dir;  // a checkpoint directory (ckpt-<id>)
  std::string out_root;        // the export root; created if missing
  proto::ValueType value_type = proto::FP32;
  // Empty: a full bundle. Else a bundle in out_root (full or delta): the new
  // bundle is a delta on it and must have its value type.
  std::string base_dir;
  // The job config, for a checkpoint that holds none (written before export
  // existed); if both are present they must agree on the layout.
  const proto::JobConfig* config = nullptr;
  // Memory bound: the rows of this many logical shards (with their
  // optimizer state) are held at once.
  uint32_t shards_per_pass = 64;
};

// Writes a new bundle <out_root>/<version> (one above the largest version
// there) from the checkpoint: the dense vector, every table's live rows of
// the checkpoint's generation that are not expired under the table's
// expiry rules at the checkpoint's cut (push_seq: the manifest's; log day:
// the newest last_day among the table's rows), and the manifest last. Reads
// and checks every block it uses (CRC-32C). Never touches an existing
// bundle; on error removes the directory it made. Returns the manifest.
[[nodiscard]] absl::StatusOr<proto::ExportManifest> ExportCheckpoint(const ExportOptions& options);

// A model loaded from a bundle chain: its dense vector and, per table and
// logical shard, a sorted run of keys with their values, in the bundle's
// value type. Runs of a full bundle point into read-only memory maps of its
// files; runs a delta changed live on the heap.
class ExportedModel {
 public:
  // Loads the bundle in `dir` and, for a delta, its bases (by version, in
  // the same root) down to a full bundle. Checks every file's size and
  // CRC-32C, and every table's index and key order, first; errors name the
  // file.
  [[nodiscard]] static absl::StatusOr<std::shared_ptr<const ExportedModel>> Load(const std::string& dir);

  // The model after applying the delta bundle in `dir`, whose base must be
  // this model's version and whose layout (config fingerprint, tables, value
  // type, shards) must be this model's. Refused with the reason otherwise
  // (also if a deleted key has no row or the row counts disagree with its
  // manifest); this model is unchanged either way.
  [[nodiscard]] absl::StatusOr<std::shared_ptr<const ExportedModel>> ApplyDelta(const std::string& dir) const;

  // The manifest of the newest bundle applied.
  const proto::ExportManifest& manifest() const { return manifest_; }
  const proto::JobConfig& config() const { return manifest_.config(); }
  uint64_t version() const { return manifest_.version(); }
  const std::vector<float>& dense() const { return dense_; }
  size_t num_tables() const { return tables_.size(); }
  uint32_t dim(size_t t) const { return tables_[t].dim; }
  uint64_t rows(size_t t) const;

  // Writes table t's row of `key` as dim(t) floats into out and returns
  // true; false (out filled with the table's default value) if it has none.
  bool Lookup(size_t t, uint64_t key, float* out) const;

  // A sorted run of one logical shard of one table.
  struct Run {
    const uint64_t* keys = nullptr;
    const uint8_t* values = nullptr;  // rows x dim, in the value type
    size_t rows = 0;
    std::shared_ptr<const void> owner;  // keeps the memory alive
  };
  const Run& run(size_t t, uint32_t shard) const { return tables_[t].runs[shard]; }
  // Bytes per row value in the bundle's value type (4 * dim or 2 * dim).
  size_t value_bytes(size_t t) const { return tables_[t].value_bytes; }

 private:
  struct Table {
    uint32_t dim = 0;
    size_t value_bytes = 0;
    proto::ValueType type = proto::FP32;
    float default_value = 0;
    std::vector<Run> runs;  // per logical shard
  };
  ExportedModel() = default;
  static absl::StatusOr<std::shared_ptr<const ExportedModel>> LoadOne(const std::string& dir);

  proto::ExportManifest manifest_;
  uint32_t num_shards_ = 0;
  std::vector<float> dense_;
  std::vector<Table> tables_;
};

// `ember inspect` of a bundle directory: the manifest (version, base,
// checkpoint, tables), the verification of every file, and up to
// `sample_rows` rows per table. OK if everything verified, else the first
// problem (named), after the report.
[[nodiscard]] absl::Status InspectExport(const std::string& dir, int sample_rows, std::ostream& out);

}  // namespace ember::storage

#endif  // EMBER_STORAGE_EXPORT_H_
