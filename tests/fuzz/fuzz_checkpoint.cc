// libFuzzer target: the checkpoint readers a server's RESTORE and `ember
// inspect` run on a checkpoint directory: the MANIFEST frame
// (storage::ReadManifest), the bounds checks (CheckManifestBounds),
// storage::RestorePlan::Make + Verify + Apply into a server's stores, and
// storage::InspectCheckpoint. A crafted checkpoint must be refused with a
// status; nothing may crash, over-allocate or read past a buffer.
//
// Input layout (little-endian uint32 lengths, each clamped to what is left):
//   [mode byte][len][manifest][len][file 0][len][file 1] ...
// Written into <scratch>/ckpt-00000002/: file i of the manifest's `files`
// gets piece i (under its name when that is a plain file name, else
// skipped). With mode bit 0 set the manifest piece is the whole MANIFEST
// file as is (to fuzz the frame); otherwise it is the payload (a serialized
// proto::CheckpointManifest) and the harness frames it with a correct
// checksum and, with mode bit 1 set, also rewrites the CRC-32C of every file
// and every block that lies within a written file to the correct value, so
// that the fuzzer reaches the block decoders instead of stopping at a
// checksum.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "glog/logging.h"
#include "google/protobuf/text_format.h"
#include "proto/checkpoint.pb.h"
#include "proto/config.pb.h"
#include "storage/checkpoint_files.h"
#include "storage/inspect.h"
#include "storage/optimizer.h"
#include "storage/shard_checkpoint.h"
#include "storage/sparse_table.h"
#include "storage/test_checkpoint.h"
#include "storage/tiered_store.h"
#include "tests/fuzz/fuzz_util.h"

namespace ember::fuzz {
namespace {

constexpr char kConfig[] = R"pb(
  tables { name: "emb" dim: 4 optimizer { kind: ADAGRAD } }
  tables { name: "bias" dim: 1 optimizer { kind: FTRL } }
  model { dense_optimizer { kind: ADAM } }
  cluster { num_logical_shards: 4 }
)pb";
constexpr uint64_t kDenseTotal = 6;

proto::JobConfig Config() {
  proto::JobConfig c;
  CHECK(google::protobuf::TextFormat::ParseFromString(kConfig, &c));
  return c;
}

// What a server restores into: one store that owns every logical shard.
struct Target {
  proto::JobConfig config = Config();
  std::vector<std::unique_ptr<storage::TableSpec>> specs;
  std::unique_ptr<storage::TieredStore> store;
  storage::OptimizerRule dense_rule{config.model().dense_optimizer()};
  ScratchDir scratch;
  std::string dir = scratch.path() + "/" + storage::CheckpointDirName(2);

  Target() {
    std::vector<const storage::TableSpec*> s;
    for (const auto& t : config.tables()) {
      specs.push_back(std::make_unique<storage::TableSpec>(t));
      s.push_back(specs.back().get());
    }
    store = std::make_unique<storage::TieredStore>(s, std::vector<uint32_t>{0, 1, 2, 3}, 4, 0, nullptr);
    std::filesystem::create_directories(dir);
  }
  storage::RestoreTarget Restore() const {
    storage::RestoreTarget t;
    t.config = &config;
    t.dense_total = kDenseTotal;
    for (const auto& s : specs) t.specs.push_back(s.get());
    t.stores = {store.get()};
    t.dense_rule = &dense_rule;
    t.dense_offset = 0;
    t.dense_length = kDenseTotal;
    t.dense_trained = kDenseTotal;
    return t;
  }
};

Target& TheTarget() {
  static Target* t = new Target();
  return *t;
}

bool PlainName(const std::string& n) {
  return !n.empty() && n.size() < 64 && n.find('/') == std::string::npos && n != "." && n != ".." &&
         n.rfind("MANIFEST", 0) != 0;
}

void PutU32(std::string* s, uint32_t v) { s->append(reinterpret_cast<const char*>(&v), 4); }
void PutU64(std::string* s, uint64_t v) { s->append(reinterpret_cast<const char*>(&v), 8); }

// The MANIFEST frame (storage/checkpoint_files.h: magic, version, CRC,
// length, payload), written without the fsyncs of storage::WriteManifest.
std::string Frame(const std::string& payload) {
  std::string f("EMBERCKP", 8);
  PutU32(&f, storage::kCheckpointFormatVersion);
  PutU32(&f, storage::Crc32c(payload.data(), payload.size()));
  PutU64(&f, payload.size());
  return f + payload;
}

uint32_t CrcOf(const std::map<std::string, std::string>& files, const std::string& name, uint64_t offset,
               uint64_t bytes, uint32_t otherwise) {
  auto it = files.find(name);
  if (it == files.end() || offset > it->second.size() || bytes > it->second.size() - offset) return otherwise;
  return storage::Crc32c(it->second.data() + offset, bytes);
}

// Sets every CRC that covers bytes the harness wrote to their true value.
void FixChecksums(const std::map<std::string, std::string>& files, proto::CheckpointManifest* m) {
  for (proto::CheckpointFile& f : *m->mutable_files()) {
    auto it = files.find(f.name());
    if (it != files.end()) f.set_crc32c(storage::Crc32c(it->second.data(), it->second.size()));
  }
  for (proto::ShardBlock& b : *m->mutable_blocks()) {
    if (b.table() >= static_cast<uint32_t>(m->tables_size())) continue;
    const uint64_t row_bytes = m->tables(b.table()).row_bytes();
    if (b.rows() > (uint64_t{1} << 32) || b.tombstones() > (uint64_t{1} << 32)) continue;
    const uint64_t bytes = b.rows() * row_bytes + b.tombstones() * 8;
    b.set_crc32c(CrcOf(files, b.file(), b.offset(), bytes, b.crc32c()));
  }
  for (proto::DenseBlock& d : *m->mutable_dense()) {
    d.set_crc32c(CrcOf(files, d.file(), d.file_offset(), d.bytes(), d.crc32c()));
  }
}

void Run(std::string_view input) {
  Target& t = TheTarget();
  Cutter in(reinterpret_cast<const uint8_t*>(input.data()), input.size());
  const uint8_t mode = in.U8();
  const std::string_view manifest = in.Piece();
  std::error_code ec;
  std::filesystem::remove_all(t.dir, ec);
  std::filesystem::create_directories(t.dir);

  proto::CheckpointManifest m;
  const bool parsed = m.ParseFromArray(manifest.data(), static_cast<int>(manifest.size()));
  std::map<std::string, std::string> files;
  if (parsed) {
    for (const proto::CheckpointFile& f : m.files()) {
      if (in.empty()) break;
      const std::string_view bytes = in.Piece();
      if (PlainName(f.name()) && !files.count(f.name())) files.emplace(f.name(), std::string(bytes));
    }
  }
  for (const auto& [name, bytes] : files) WriteFile(t.dir + "/" + name, bytes);
  if (mode & 1) {
    WriteFile(t.dir + "/MANIFEST", manifest);
  } else {
    if (!parsed) return;
    if (mode & 2) FixChecksums(files, &m);
    WriteFile(t.dir + "/MANIFEST", Frame(m.SerializeAsString()));
  }

  absl::StatusOr<proto::CheckpointManifest> read = storage::ReadManifest(t.dir);
  if (read.ok()) (void)storage::CheckManifestBounds(t.dir, *read);
  absl::StatusOr<storage::RestorePlan> plan = storage::RestorePlan::Make(t.dir, t.Restore());
  if (plan.ok()) {
    uint64_t rows = 0, bytes = 0;
    if (plan->Verify(&rows, &bytes).ok()) {
      storage::DenseSlice dense;
      (void)plan->Apply(&dense, &rows);
    }
  }
  std::ostringstream report;
  (void)storage::InspectCheckpoint(t.dir, 3, report);
}

// Seeds: real checkpoints of the target's layout (empty, a few rows, rows
// and erased keys), each with checksums fixed (mode 2) and as raw MANIFEST
// frames (mode 1).
void WriteSeeds(const std::string& out) {
  ScratchDir root;
  const proto::JobConfig config = Config();
  int n = 0;
  for (int rows : {0, 3, 40}) {
    storage::testing::CheckpointWriter w(config, kDenseTotal);
    for (int i = 0; i < rows; ++i) {
      w.Set(0, 1000 + i, 0.1f * i);
      w.Set(1, 7 * i + 1, -0.2f * i);
    }
    if (rows > 0) w.Erase(0, 1000);
    const std::string dir = w.Save(root.path(), 2);
    absl::StatusOr<proto::CheckpointManifest> m = storage::ReadManifest(dir);
    CHECK(m.ok()) << m.status();
    for (int mode : {2, 1}) {
      std::string input(1, static_cast<char>(mode));
      if (mode == 1) {
        std::ifstream f(dir + "/MANIFEST", std::ios::binary);
        AppendPiece(&input, std::string(std::istreambuf_iterator<char>(f), {}));
      } else {
        AppendPiece(&input, m->SerializeAsString());
      }
      for (const proto::CheckpointFile& file : m->files()) {
        std::ifstream f(dir + "/" + file.name(), std::ios::binary);
        AppendPiece(&input, std::string(std::istreambuf_iterator<char>(f), {}));
      }
      WriteFile(out + "/seed-" + std::to_string(n++), input);
    }
    std::filesystem::remove_all(dir);
  }
}

}  // namespace
}  // namespace ember::fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = ember::fuzz::SeedDir()) {
    ember::fuzz::WriteSeeds(dir);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ember::fuzz::Run(std::string_view(reinterpret_cast<const char*>(data), size));
  return 0;
}
