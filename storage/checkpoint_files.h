// Checkpoint files on disk: the checksummed MANIFEST (written last, by atomic
// rename), the data files servers write block by block, listing and pruning
// of a checkpoint root. The layout is in docs/checkpoint_format.md; the
// manifest's fields are in proto/checkpoint.proto.
//
// Every error names the file and what is wrong with it (missing, truncated,
// checksum mismatch, another format version), so that a refused restore says
// why.
//
// Thread safety: free functions are thread-safe; a DataFileWriter is used by
// one thread at a time.
#ifndef EMBER_STORAGE_CHECKPOINT_FILES_H_
#define EMBER_STORAGE_CHECKPOINT_FILES_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "google/protobuf/message_lite.h"
#include "proto/checkpoint.pb.h"
#include "proto/config.pb.h"

namespace ember::storage {

// Bumped whenever a file's byte layout changes; a manifest of another version
// is refused.
inline constexpr uint32_t kCheckpointFormatVersion = 2;  // 2: 32-byte RowMeta, 64-bit last push_seq
inline constexpr char kManifestName[] = "MANIFEST";

// CRC-32C (Castagnoli) of data[0, n), continuing from `crc` (0 to start).
// Same values as RocksDB's and ext4's crc32c. Hardware (SSE4.2) path.
uint32_t Crc32c(const void* data, size_t n, uint32_t crc = 0);
// A checksum as errors and `ember inspect` print it: "0x0000abcd".
std::string CrcHex(uint32_t crc);

// A fingerprint of what a checkpoint's bytes depend on: each table's name,
// dim and optimizer kind (the row layout), num_logical_shards and the dense
// vector's length. Batch size, server counts, learning rates and the like do
// not enter it, so a job may change them and still restore.
uint64_t ConfigFingerprint(const proto::JobConfig& config, uint64_t dense_total);

// "ckpt-00000042" for id 42: ids sort as names.
std::string CheckpointDirName(uint64_t id);
// The id in a directory name made by CheckpointDirName, or 0.
uint64_t CheckpointIdOf(const std::string& dir_name);

// The frame a MANIFEST is written in, checkpoint's and export's alike:
// 8 bytes of magic, uint32 format version, uint32 CRC-32C of the payload,
// uint64 payload length, the payload (a serialized protobuf message).
struct FrameKind {
  const char* magic;    // exactly 8 characters, e.g. "EMBERCKP"
  uint32_t version;     // the format version this build reads and writes
  const char* what;     // for errors: "checkpoint manifest"
  const char* dir_what; // for errors: "checkpoint"
};
// Writes `message` framed as `kind` to dir/MANIFEST, atomically (as
// WriteManifest below); errors name the file.
[[nodiscard]] absl::Status WriteFramed(const std::string& dir, const FrameKind& kind,
                                       const google::protobuf::MessageLite& message);
// Reads dir/MANIFEST framed as `kind` into *message: NOT_FOUND without one,
// DATA_LOSS if damaged (magic, length, checksum, parse), FAILED_PRECONDITION
// for another frame version; the message names the file.
[[nodiscard]] absl::Status ReadFramed(const std::string& dir, const FrameKind& kind,
                                      google::protobuf::MessageLite* message);

// Writes dir/MANIFEST: to a temporary file, fdatasync, rename, fsync of the
// directory. A reader sees the old state or the whole new manifest.
// manifest.format_version must be kCheckpointFormatVersion (else
// INVALID_ARGUMENT, nothing written). Errors name the file.
[[nodiscard]] absl::Status WriteManifest(const std::string& dir, const proto::CheckpointManifest& manifest);
// Reads dir/MANIFEST and checks its magic, length, checksum and format
// version. NOT_FOUND without a MANIFEST, DATA_LOSS for a damaged one,
// FAILED_PRECONDITION for another format version; the message names the file.
[[nodiscard]] absl::StatusOr<proto::CheckpointManifest> ReadManifest(const std::string& dir);

// The job's checkpoint root (checkpoint.dir) as a server confines what the
// network names to it: SAVE, RESTORE and LIST_CHECKPOINTS name a checkpoint
// by a path RELATIVE to the root. The root itself is whatever the operator
// configured (symlinks in it are resolved once, at Open); below it a name
// must not be absolute, must not have an empty, "." or ".." component, and
// must not pass through a symlink: each component is opened with
// openat(O_NOFOLLOW | O_DIRECTORY) from the one before. (A process that can
// swap a checked directory for a symlink between the check and the use
// already writes inside the root; files are created O_EXCL | O_NOFOLLOW.)
// Thread-safe (immutable after Open).
class CheckpointRoot {
 public:
  // No root: every Resolve is refused with FAILED_PRECONDITION.
  CheckpointRoot() = default;
  // Creates `dir` if it is missing and resolves it. INVALID_ARGUMENT if `dir`
  // is empty, else the filesystem's error naming `dir`.
  [[nodiscard]] static absl::StatusOr<CheckpointRoot> Open(const std::string& dir);
  bool configured() const { return !path_.empty(); }
  // The resolved root; empty without one.
  const std::string& path() const { return path_; }
  // path()/name once `name` passes the checks above and every component
  // exists as a directory. INVALID_ARGUMENT naming the reason (and the
  // component) for a bad name or a symlink, NOT_FOUND for a missing
  // component, FAILED_PRECONDITION without a root. An empty `name` is the
  // root itself if `allow_root`, else refused.
  [[nodiscard]] absl::StatusOr<std::string> Resolve(const std::string& name, bool allow_root = false) const;

 private:
  std::string path_;
};

// `path` as a name relative to `root`, lexically (both made absolute against
// the working directory, "." and ".." folded, no filesystem access): what a
// coordinator that knows the root puts in SAVE and RESTORE. INVALID_ARGUMENT
// if `path` is not strictly below `root`.
[[nodiscard]] absl::StatusOr<std::string> NameUnderRoot(const std::string& root, const std::string& path);

// One checkpoint of a chain, as a visitor of WalkCheckpointChain reports it.
struct ChainLink {
  uint64_t id = 0;         // the checkpoint's id
  uint64_t parent_id = 0;  // the next one to visit; 0 ends the walk
};
// Follows a checkpoint's chain of parents: the one walk that restore, pruning
// and `ember inspect` share. Calls visit(dir) on `dir`, then on the directory
// of each parent it names (ckpt-<parent_id> beside `dir`), until a visit
// returns parent_id 0. A visit's error ends the walk and is returned. A parent
// that is not older than its child (by directory name; for `dir` itself, by
// the id its visit reports) ends the walk with DATA_LOSS naming both, so the
// walk always ends. Blocking (as long as the visits); thread-safe if `visit` is.
[[nodiscard]] absl::Status WalkCheckpointChain(
    const std::string& dir, absl::FunctionRef<absl::StatusOr<ChainLink>(const std::string& dir)> visit);

// The ckpt-* directories under `root`, by id. Those without a readable
// manifest are listed with complete = false and the reason.
std::vector<proto::CheckpointSummary> ListCheckpoints(const std::string& root);
// The directory of the newest complete checkpoint under `root`; NOT_FOUND if
// there is none.
[[nodiscard]] absl::StatusOr<std::string> LatestCheckpoint(const std::string& root);
// Removes every ckpt-* directory under `root` except the newest `keep`
// complete checkpoints and the ancestors their restore needs. Incomplete
// directories older than the newest complete one go too; newer ones (saves in
// progress) stay. A complete checkpoint whose chain of ancestors is broken is
// kept, with what is left of its chain, but does not count toward `keep`.
// Each directory loses its MANIFEST first. INVALID_ARGUMENT if keep == 0;
// else the first removal error, after trying the others.
[[nodiscard]] absl::Status PruneCheckpoints(const std::string& root, uint32_t keep);

// Checks that dir/file.name exists with file.size bytes and, if
// `check_crc`, that its CRC-32C is file.crc32c. NOT_FOUND if missing,
// DATA_LOSS if truncated, of another size or of another checksum.
[[nodiscard]] absl::Status VerifyFile(const std::string& dir, const proto::CheckpointFile& file, bool check_crc);

// Reads `bytes` bytes at `offset` of dir/file into *out and checks their
// CRC-32C against `crc`. NOT_FOUND if the file is missing, DATA_LOSS if it
// ends before offset + bytes or the checksum differs.
[[nodiscard]] absl::Status ReadBlock(const std::string& dir, const std::string& file, uint64_t offset,
                                     uint64_t bytes, uint32_t crc, std::string* out);

// Bounds checks on a manifest's numbers, shared by restore (RestorePlan),
// export and `ember inspect`, made before any block is read or any buffer
// sized from them: a crafted manifest with valid checksums must not make a
// reader overflow, over-allocate or read past a buffer. Each error is
// DATA_LOSS naming the checkpoint directory, the file and the field.
//
// Table t's row_bytes holds a row: RowMeta + 4 x (dim + state_floats)
// bytes, a multiple of 8.
[[nodiscard]] absl::Status CheckTableRowBytes(const std::string& dir, const proto::CheckpointTable& t);
// Shard block b of manifest m: its table exists and passes
// CheckTableRowBytes; its
// shard is below m.num_logical_shards(); rows x row_bytes + tombstones x 8
// does not overflow; its file is one m.files() lists, and the block ends
// within that file's size. Returns the block's bytes.
[[nodiscard]] absl::StatusOr<uint64_t> CheckShardBlock(const std::string& dir, const proto::CheckpointManifest& m,
                                                       const proto::ShardBlock& b);
// Dense block d of m: [offset, offset + length) lies within m.dense_total(),
// trained <= length, bytes >= 4 x length, and its file is listed and holds
// [file_offset, file_offset + bytes).
[[nodiscard]] absl::Status CheckDenseBlock(const std::string& dir, const proto::CheckpointManifest& m,
                                           const proto::DenseBlock& d);
// No two dense blocks of m overlap.
[[nodiscard]] absl::Status CheckDenseOverlaps(const std::string& dir, const proto::CheckpointManifest& m);
// All of the above, for every block of m.
[[nodiscard]] absl::Status CheckManifestBounds(const std::string& dir, const proto::CheckpointManifest& m);

// Writes one data file sequentially, as a series of blocks, through a 1 MiB
// buffer; keeps the CRC of each block and of the whole file. Finish()
// flushes and fdatasyncs. If `bytes_per_sec` > 0 the writer sleeps to keep
// under that rate. After a write error (ENOSPC, EIO) every later call returns
// that error. A writer destroyed before a successful Finish() closes and
// removes its partial file.
class DataFileWriter {
 public:
  // Creates (truncates) dir/name; `name` is a relative path without "..".
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<DataFileWriter>> Create(const std::string& dir,
                                                                              const std::string& name,
                                                                              uint64_t bytes_per_sec);
  ~DataFileWriter();
  DataFileWriter(const DataFileWriter&) = delete;
  DataFileWriter& operator=(const DataFileWriter&) = delete;

  // Starts a block; returns its offset in the file.
  uint64_t BeginBlock();
  [[nodiscard]] absl::Status Append(const void* data, size_t n);
  // Ends the block started last; returns its CRC-32C.
  uint32_t EndBlock();
  // Bytes appended so far.
  uint64_t size() const { return size_; }
  // Flushes, fdatasyncs and closes; the entry for the manifest.
  [[nodiscard]] absl::StatusOr<proto::CheckpointFile> Finish();

 private:
  DataFileWriter(std::string path, std::string name, int fd, uint64_t bytes_per_sec);
  absl::Status Flush();

  std::string path_, name_;
  int fd_ = -1;
  uint64_t bytes_per_sec_;
  std::string buffer_;
  uint64_t size_ = 0;     // appended
  uint64_t written_ = 0;  // handed to the kernel
  bool finished_ = false;
  absl::Status error_;    // the first write error; sticky
  uint32_t file_crc_ = 0, block_crc_ = 0;
  int64_t start_ns_ = 0;
};

}  // namespace ember::storage

#endif  // EMBER_STORAGE_CHECKPOINT_FILES_H_
