// `ember inspect`: prints and verifies one checkpoint directory, decoding rows
// from the bytes as docs/checkpoint_format.md lays them out (not through the
// in-memory structs, so that it checks the format itself).
#include "storage/inspect.h"

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "google/protobuf/text_format.h"
#include "proto/checkpoint.pb.h"
#include "storage/checkpoint_files.h"
#include "storage/sparse_table.h"

namespace ember::storage {
namespace {

static_assert(std::endian::native == std::endian::little, "checkpoint files are little-endian");

constexpr size_t kRowMetaBytes = sizeof(RowMeta);
constexpr int kListFirst = 4;       // blocks shown of each kind
constexpr int kPrintProblems = 20;  // block failures printed one by one
constexpr int kSampleFloats = 8;

// The first problem and how many there were; each one is printed.
class Problems {
 public:
  explicit Problems(std::ostream& out) : out_(out) {}

  void Add(const absl::Status& st, bool print = true) {
    if (first_.ok()) first_ = st;
    ++count_;
    if (print) out_ << "  FAILED: " << st.message() << "\n";
  }
  int count() const { return count_; }
  absl::Status Result() const {
    if (count_ <= 1) return first_;
    return absl::Status(first_.code(), absl::StrCat(count_, " problems; the first: ", first_.message()));
  }

 private:
  std::ostream& out_;
  absl::Status first_;
  int count_ = 0;
};

template <typename T>
T Load(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

std::string Floats(const char* p, uint32_t n) {
  std::string s = "[";
  const uint32_t shown = std::min<uint32_t>(n, kSampleFloats);
  for (uint32_t i = 0; i < shown; ++i) absl::StrAppend(&s, i ? " " : "", Load<float>(p + 4 * i));
  if (n > shown) absl::StrAppend(&s, " ... (", n, ")");
  return s + "]";
}

void PrintChain(const std::string& dir, const proto::CheckpointManifest& m, std::ostream& out, Problems* problems) {
  if (m.parent_id() == 0) {
    out << "chain: full checkpoint (no parent)\n";
    return;
  }
  out << "chain:\n";
  bool first = true;
  uint64_t child = m.id();
  absl::Status st = WalkCheckpointChain(dir, [&](const std::string& at) -> absl::StatusOr<ChainLink> {
    if (first) {  // `m` is dir's manifest, already read
      first = false;
      return ChainLink{m.id(), m.parent_id()};
    }
    absl::StatusOr<proto::CheckpointManifest> pm = ReadManifest(at);
    if (!pm.ok()) {
      out << "  " << at << ": unusable\n";
      return absl::Status(pm.status().code(),
                          absl::StrCat("parent of checkpoint ", child, ": ", pm.status().message()));
    }
    out << "  " << at << ": " << (pm->parent_id() == 0 ? "full" : absl::StrCat("delta on ", pm->parent_id())) << ", "
        << pm->blocks_size() << " blocks\n";
    child = pm->id();
    return ChainLink{pm->id(), pm->parent_id()};
  });
  if (!st.ok()) problems->Add(std::move(st));
}

}  // namespace

absl::Status InspectCheckpoint(const std::string& dir, int sample_rows, std::ostream& out) {
  // A wrong path is not a damaged checkpoint: say which it is.
  std::error_code ec;
  if (!std::filesystem::exists(dir, ec)) return absl::NotFoundError(absl::StrCat("no such directory: ", dir));
  if (!std::filesystem::is_directory(dir, ec)) {
    return absl::InvalidArgumentError(absl::StrCat(dir, " is not a directory (give a checkpoint directory)"));
  }
  absl::StatusOr<proto::CheckpointManifest> read = ReadManifest(dir);
  if (!read.ok()) {
    out << "checkpoint " << dir << "\n  FAILED: " << read.status().message() << "\n";
    // A root given by mistake: say what is in it.
    const std::vector<proto::CheckpointSummary> inside = ListCheckpoints(dir);
    if (!inside.empty()) out << dir << " holds checkpoints; inspect one of them:\n";
    for (const proto::CheckpointSummary& s : inside) {
      out << "  " << s.dir() << "  " << (s.complete() ? "complete" : "incomplete: " + s.problem()) << "\n";
    }
    return read.status();
  }
  const proto::CheckpointManifest& m = *read;
  Problems problems(out);

  // Header fields and tables; the long lists are summarised below.
  proto::CheckpointManifest head = m;
  head.clear_files();
  head.clear_blocks();
  head.clear_dense();
  std::string text;
  google::protobuf::TextFormat::PrintToString(head, &text);
  out << "checkpoint " << dir << "\n" << text;
  out << "config_fingerprint: 0x" << absl::StrCat(absl::Hex(m.config_fingerprint(), absl::kZeroPad16)) << "\n";
  PrintChain(dir, m, out, &problems);

  // Data files: size and whole-file CRC.
  out << "files: " << m.files_size() << "\n";
  for (const proto::CheckpointFile& f : m.files()) {
    absl::Status st = VerifyFile(dir, f, /*check_crc=*/true);
    out << "  " << f.name() << "  " << f.size() << " bytes  crc " << CrcHex(f.crc32c()) << "  "
        << (st.ok() ? "ok" : "FAILED") << "\n";
    if (!st.ok()) problems.Add(st);
  }
  // Shard blocks: a few shown, every one read back and checked.
  struct TableSum {
    uint64_t blocks = 0, delta_blocks = 0, rows = 0, tombstones = 0, bytes = 0;
    int sample_block = -1;  // first verified block with rows
  };
  std::vector<TableSum> sums(m.tables_size());
  int full = 0, delta = 0;
  for (const proto::ShardBlock& b : m.blocks()) (b.delta() ? delta : full)++;
  out << "blocks: " << m.blocks_size() << " (" << full << " full, " << delta << " delta)\n";
  for (int i = 0; i < std::min(m.blocks_size(), kListFirst); ++i) {
    const proto::ShardBlock& b = m.blocks(i);
    out << "  table " << b.table() << " shard " << b.shard() << (b.delta() ? " delta" : " full") << "  " << b.file()
        << " @" << b.offset() << "  rows " << b.rows() << "  tombstones " << b.tombstones() << "  crc "
        << CrcHex(b.crc32c()) << "\n";
  }
  if (m.blocks_size() > kListFirst) out << "  ... " << m.blocks_size() - kListFirst << " more\n";

  std::string buf;
  int blocks_ok = 0, printed = 0;
  for (int i = 0; i < m.blocks_size(); ++i) {
    const proto::ShardBlock& b = m.blocks(i);
    const absl::StatusOr<uint64_t> checked = CheckShardBlock(dir, m, b);
    const uint64_t bytes = checked.ok() ? *checked : 0;
    absl::Status st = checked.status();
    if (st.ok()) st = ReadBlock(dir, b.file(), b.offset(), bytes, b.crc32c(), &buf);
    if (b.table() < sums.size()) {
      TableSum& t = sums[b.table()];
      ++t.blocks;
      t.delta_blocks += b.delta();
      t.rows += b.rows();
      t.tombstones += b.tombstones();
      t.bytes += bytes;
      if (st.ok() && b.rows() > 0 && t.sample_block < 0) t.sample_block = i;
    }
    if (st.ok()) {
      ++blocks_ok;
    } else {
      problems.Add(st, /*print=*/printed < kPrintProblems);
      ++printed;
    }
  }
  if (printed > kPrintProblems) out << "  ... " << printed - kPrintProblems << " more failed blocks\n";
  out << "block verification: " << blocks_ok << " of " << m.blocks_size() << " ok\n";

  // Per table: what the blocks hold, beside what the manifest says.
  for (int t = 0; t < m.tables_size(); ++t) {
    const proto::CheckpointTable& ct = m.tables(t);
    const TableSum& s = sums[t];
    out << "table " << t << " '" << ct.name() << "': dim " << ct.dim() << ", " << ct.optimizer() << ", state_floats "
        << ct.state_floats() << ", row_bytes " << ct.row_bytes() << ", generation " << ct.generation() << "\n"
        << "  blocks " << s.blocks << " (" << s.delta_blocks << " delta), rows " << s.rows << ", tombstones "
        << s.tombstones << ", bytes " << s.bytes;
    if (ct.rows() != s.rows) out << "  (manifest table says rows " << ct.rows() << ")";
    out << "\n";
    if (absl::Status st = CheckTableRowBytes(dir, ct); !st.ok()) {
      problems.Add(st);
      continue;
    }
    if (sample_rows <= 0 || s.sample_block < 0) continue;
    const proto::ShardBlock& b = m.blocks(s.sample_block);
    const absl::StatusOr<uint64_t> bytes = CheckShardBlock(dir, m, b);
    if (!bytes.ok() || !ReadBlock(dir, b.file(), b.offset(), *bytes, b.crc32c(), &buf).ok()) continue;  // reported above
    const uint64_t n = std::min<uint64_t>(b.rows(), static_cast<uint64_t>(sample_rows));
    out << "  sample rows (shard " << b.shard() << ", " << b.file() << " @" << b.offset() << "):\n";
    for (uint64_t r = 0; r < n; ++r) {
      const char* row = buf.data() + r * ct.row_bytes();
      const char* w = row + kRowMetaBytes;
      out << "    key " << Load<uint64_t>(row + offsetof(RowMeta, key)) << " count "
          << Load<uint32_t>(row + offsetof(RowMeta, count)) << " last_push_seq "
          << Load<uint64_t>(row + offsetof(RowMeta, last_push_seq)) << " generation "
          << Load<uint32_t>(row + offsetof(RowMeta, generation)) << " last_day "
          << Load<uint16_t>(row + offsetof(RowMeta, last_day)) << "\n"
          << "      weights " << Floats(w, ct.dim()) << "\n"
          << "      state   " << Floats(w + 4 * ct.dim(), ct.state_floats()) << "\n";
    }
  }

  // Dense blocks.
  uint64_t dense_len = 0;
  int dense_ok = 0;
  for (const proto::DenseBlock& d : m.dense()) dense_len += d.length();
  out << "dense: " << m.dense_size() << " blocks, " << dense_len << " of " << m.dense_total() << " floats\n";
  for (int i = 0; i < std::min(m.dense_size(), kListFirst); ++i) {
    const proto::DenseBlock& d = m.dense(i);
    out << "  [" << d.offset() << ", " << d.offset() + d.length() << ") trained " << d.trained() << "  " << d.file()
        << " @" << d.file_offset() << "  " << d.bytes() << " bytes  crc " << CrcHex(d.crc32c()) << "\n";
  }
  if (m.dense_size() > kListFirst) out << "  ... " << m.dense_size() - kListFirst << " more\n";
  for (const proto::DenseBlock& d : m.dense()) {
    absl::Status st = CheckDenseBlock(dir, m, d);
    if (st.ok()) st = ReadBlock(dir, d.file(), d.file_offset(), d.bytes(), d.crc32c(), &buf);
    if (st.ok()) {
      ++dense_ok;
    } else {
      problems.Add(st);
    }
  }
  if (absl::Status st = CheckDenseOverlaps(dir, m); !st.ok()) problems.Add(st);
  out << "dense verification: " << dense_ok << " of " << m.dense_size() << " ok\n";

  out << (problems.count() == 0 ? "verified: ok\n" : absl::StrCat("verified: ", problems.count(), " problem(s)\n"));
  return problems.Result();
}

}  // namespace ember::storage
