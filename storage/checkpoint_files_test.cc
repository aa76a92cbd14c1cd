#include "storage/checkpoint_files.h"

#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"
#include "storage/inspect.h"

namespace ember::storage {
namespace {

namespace fs = std::filesystem;

// Whether `text` contains `part`, saying both when not.
::testing::AssertionResult Contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "'" << part << "' not in: " << text;
}

// Bit-at-a-time CRC-32C, the definition the fast path must agree with.
uint32_t SlowCrc32c(const std::string& s, uint32_t crc = 0) {
  crc = ~crc;
  for (unsigned char c : s) {
    crc ^= c;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0x82f63b78u & (0u - (crc & 1u)));
  }
  return ~crc;
}

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

void FlipByte(const std::string& path, uint64_t offset) {
  std::string b = ReadAll(path);
  ASSERT_LT(offset, b.size());
  b[offset] ^= 0x20;
  WriteAll(path, b);
}

// A fresh directory per test, removed afterwards.
class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::path(::testing::TempDir()) / "ckpt_test_XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string Path(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  std::string dir_;
};

// --- CRC-32C ---------------------------------------------------------------

TEST(Crc32cTest, KnownVectors) {
  EXPECT_EQ(Crc32c("123456789", 9), 0xE3069283u);
  EXPECT_EQ(Crc32c("", 0), 0u);
  // RFC 3720 (iSCSI) B.4.
  std::string zeros(32, '\0'), ones(32, '\xff'), ascending(32, '\0');
  for (int i = 0; i < 32; ++i) ascending[i] = static_cast<char>(i);
  EXPECT_EQ(Crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  EXPECT_EQ(Crc32c(ones.data(), ones.size()), 0x62A8AB43u);
  EXPECT_EQ(Crc32c(ascending.data(), ascending.size()), 0x46DD794Eu);
}

TEST(Crc32cTest, MatchesBitwiseDefinitionAtAnyLengthAndAlignment) {
  const std::string data = RandomBytes(3 * 4096 * 3 + 333, 7);
  for (size_t start : {0, 1, 3, 7}) {
    for (size_t n :
         {0, 1, 7, 8, 9, 63, 4096, 3 * 4096 - 1, 3 * 4096, 3 * 4096 + 5, 2 * 3 * 4096 + 17, 3 * 4096 * 3 + 333 - 7}) {
      const std::string s = data.substr(start, n);
      EXPECT_EQ(Crc32c(s.data(), s.size()), SlowCrc32c(s)) << "start " << start << " n " << n;
    }
  }
}

TEST(Crc32cTest, ContinuingEqualsCrcOfConcatenation) {
  const std::string data = RandomBytes(100000, 11);
  const uint32_t whole = Crc32c(data.data(), data.size());
  EXPECT_EQ(whole, SlowCrc32c(data));
  for (size_t cut : {size_t{0}, size_t{1}, size_t{8}, size_t{13}, size_t{12288}, size_t{50001}, data.size()}) {
    const uint32_t first = Crc32c(data.data(), cut);
    EXPECT_EQ(Crc32c(data.data() + cut, data.size() - cut, first), whole) << "cut " << cut;
  }
  // Many small pieces, as DataFileWriter appends rows.
  uint32_t crc = 0;
  for (size_t off = 0; off < data.size(); off += 97)
    crc = Crc32c(data.data() + off, std::min<size_t>(97, data.size() - off), crc);
  EXPECT_EQ(crc, whole);
}

// --- Fingerprint and names -------------------------------------------------

proto::JobConfig TwoTables() {
  proto::JobConfig c;
  proto::TableConfig* a = c.add_tables();
  a->set_name("user");
  a->set_dim(8);
  a->mutable_optimizer()->set_kind(proto::OptimizerConfig::ADAGRAD);
  proto::TableConfig* b = c.add_tables();
  b->set_name("item");
  b->set_dim(16);
  b->mutable_optimizer()->set_kind(proto::OptimizerConfig::ADAM);
  c.mutable_cluster()->set_num_logical_shards(64);
  return c;
}

TEST(ConfigFingerprintTest, DependsOnLayoutOnly) {
  const proto::JobConfig base = TwoTables();
  const uint64_t f = ConfigFingerprint(base, 1000);
  EXPECT_EQ(ConfigFingerprint(base, 1000), f);
  // Pinned: the value is stored in manifests, so it must not drift.
  EXPECT_EQ(f, 0x73e01bd7f287255dull) << std::hex << f;

  // What a job may change and still restore.
  proto::JobConfig same = base;
  same.mutable_cluster()->set_num_servers(7);
  same.mutable_cluster()->set_num_workers(9);
  same.mutable_data()->set_batch_size(77);
  same.mutable_tables(0)->mutable_optimizer()->set_learning_rate(0.5);
  same.mutable_checkpoint()->set_keep(9);
  EXPECT_EQ(ConfigFingerprint(same, 1000), f);

  // What changes the bytes.
  EXPECT_NE(ConfigFingerprint(base, 1001), f);
  proto::JobConfig c = base;
  c.mutable_tables(0)->set_dim(9);
  EXPECT_NE(ConfigFingerprint(c, 1000), f);
  c = base;
  c.mutable_tables(1)->set_name("items");
  EXPECT_NE(ConfigFingerprint(c, 1000), f);
  c = base;
  c.mutable_tables(1)->mutable_optimizer()->set_kind(proto::OptimizerConfig::FTRL);
  EXPECT_NE(ConfigFingerprint(c, 1000), f);
  c = base;
  c.mutable_cluster()->set_num_logical_shards(128);
  EXPECT_NE(ConfigFingerprint(c, 1000), f);
  c = base;
  c.mutable_tables()->SwapElements(0, 1);
  EXPECT_NE(ConfigFingerprint(c, 1000), f);
  // Names are length-prefixed: moving a character between names is a change.
  c = base;
  c.mutable_tables(0)->set_name("use");
  c.mutable_tables(1)->set_name("ritem");
  EXPECT_NE(ConfigFingerprint(c, 1000), f);
}

TEST(CheckpointDirNameTest, RoundTrip) {
  EXPECT_EQ(CheckpointDirName(42), "ckpt-00000042");
  EXPECT_EQ(CheckpointDirName(123456789), "ckpt-123456789");
  for (uint64_t id : {uint64_t{1}, uint64_t{42}, uint64_t{99999999}, uint64_t{123456789}}) {
    EXPECT_EQ(CheckpointIdOf(CheckpointDirName(id)), id);
  }
  EXPECT_LT(CheckpointDirName(9), CheckpointDirName(10));
  for (const char* bad : {"", "ckpt-", "ckpt-42", "ckpt-0000004x", "ckpt-00000042.tmp", "xckpt-00000042",
                          "ckpt--0000042", "ckpt-+0000042", "MANIFEST", "ckpt-00000000"}) {
    EXPECT_EQ(CheckpointIdOf(bad), 0u) << bad;
  }
}

// --- MANIFEST --------------------------------------------------------------

proto::CheckpointManifest SampleManifest(uint64_t id, uint64_t parent) {
  proto::CheckpointManifest m;
  m.set_format_version(kCheckpointFormatVersion);
  m.set_id(id);
  m.set_parent_id(parent);
  m.set_config_fingerprint(0x1234567890abcdefULL);
  m.set_num_logical_shards(16);
  m.set_num_servers(2);
  m.set_created_unix(1700000000);
  m.set_job_name("test");
  proto::CheckpointTable* t = m.add_tables();
  t->set_name("user");
  t->set_dim(4);
  t->set_row_bytes(56);
  t->set_state_floats(4);
  t->set_optimizer("ADAGRAD");
  proto::CheckpointFile* f = m.add_files();
  f->set_name("t0-r0.rows");
  f->set_size(100);
  f->set_crc32c(7);
  proto::ShardBlock* b = m.add_blocks();
  b->set_table(0);
  b->set_shard(3);
  b->set_file("t0-r0.rows");
  b->set_rows(1);
  b->set_delta(parent != 0);
  return m;
}

// The frame by hand, as docs/checkpoint_format.md describes it.
std::string Frame(uint32_t version, const std::string& payload) {
  std::string s = "EMBERCKP";
  auto put = [&s](uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) s.push_back(static_cast<char>(v >> (8 * i)));
  };
  put(version, 4);
  put(Crc32c(payload.data(), payload.size()), 4);
  put(payload.size(), 8);
  return s + payload;
}

// The walk touches no file itself: the visitor says what each directory holds.
TEST(WalkCheckpointChainTest, FollowsParentsBesideTheFirstDirectory) {
  const std::map<std::string, ChainLink> links = {
      {"root/ckpt-00000009", {9, 7}}, {"root/ckpt-00000007", {7, 3}}, {"root/ckpt-00000003", {3, 0}}};
  std::vector<std::string> seen;
  absl::Status st = WalkCheckpointChain("root/ckpt-00000009/", [&](const std::string& dir) -> absl::StatusOr<ChainLink> {
    seen.push_back(fs::path(dir).lexically_normal().string());
    if (!seen.back().empty() && seen.back().back() == '/') seen.back().pop_back();
    auto it = links.find(seen.back());
    if (it == links.end()) return absl::NotFoundError(dir);
    return it->second;
  });
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(seen, (std::vector<std::string>{"root/ckpt-00000009", "root/ckpt-00000007", "root/ckpt-00000003"}));
}

TEST(WalkCheckpointChainTest, AParentNotOlderIsDataLossAndEndsTheWalk) {
  int visits = 0;
  // Each directory claims a parent newer than itself: without the check this
  // would never end.
  absl::Status st = WalkCheckpointChain("root/ckpt-00000005", [&](const std::string&) -> absl::StatusOr<ChainLink> {
    ++visits;
    return ChainLink{5, 5};
  });
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(std::string(st.message()), "names parent 5, which is not older"));
  EXPECT_EQ(visits, 1);
}

TEST(WalkCheckpointChainTest, AVisitErrorEndsTheWalk) {
  int visits = 0;
  absl::Status st = WalkCheckpointChain("root/ckpt-00000005", [&](const std::string&) -> absl::StatusOr<ChainLink> {
    if (++visits == 2) return absl::NotFoundError("gone");
    return ChainLink{5, 4};
  });
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(visits, 2);
}

using ManifestTest = TempDirTest;

TEST_F(ManifestTest, RoundTrip) {
  const proto::CheckpointManifest m = SampleManifest(5, 4);
  ASSERT_TRUE(WriteManifest(dir_, m).ok());
  EXPECT_FALSE(fs::exists(Path("MANIFEST.tmp")));
  absl::StatusOr<proto::CheckpointManifest> back = ReadManifest(dir_);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(*back, m));
  // Overwriting replaces it whole.
  ASSERT_TRUE(WriteManifest(dir_, SampleManifest(6, 0)).ok());
  back = ReadManifest(dir_);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->id(), 6u);
}

TEST_F(ManifestTest, FrameLayoutIsTheDocumentedOne) {
  const proto::CheckpointManifest m = SampleManifest(5, 4);
  ASSERT_TRUE(WriteManifest(dir_, m).ok());
  const std::string bytes = ReadAll(Path("MANIFEST"));
  ASSERT_GE(bytes.size(), 24u);
  const std::string payload = bytes.substr(24);
  EXPECT_EQ(bytes, Frame(kCheckpointFormatVersion, payload));
  proto::CheckpointManifest parsed;
  ASSERT_TRUE(parsed.ParseFromString(payload));
  EXPECT_EQ(parsed.id(), 5u);
}

TEST_F(ManifestTest, MissingIsNotFoundAndNamesTheFile) {
  absl::StatusOr<proto::CheckpointManifest> r = ReadManifest(dir_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Contains(std::string(r.status().message()), Path("MANIFEST")));
  EXPECT_TRUE(Contains(std::string(r.status().message()), "no MANIFEST"));
}

TEST_F(ManifestTest, FlippedPayloadByteIsAChecksumMismatch) {
  ASSERT_TRUE(WriteManifest(dir_, SampleManifest(5, 4)).ok());
  FlipByte(Path("MANIFEST"), 30);
  absl::StatusOr<proto::CheckpointManifest> r = ReadManifest(dir_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(std::string(r.status().message()), Path("MANIFEST")));
  EXPECT_TRUE(Contains(std::string(r.status().message()), "checksum mismatch"));
}

TEST_F(ManifestTest, TruncatedIsRefused) {
  ASSERT_TRUE(WriteManifest(dir_, SampleManifest(5, 4)).ok());
  const std::string bytes = ReadAll(Path("MANIFEST"));
  for (size_t keep : {bytes.size() - 1, size_t{30}, size_t{24}, size_t{12}, size_t{3}}) {
    WriteAll(Path("MANIFEST"), bytes.substr(0, keep));
    absl::StatusOr<proto::CheckpointManifest> r = ReadManifest(dir_);
    ASSERT_FALSE(r.ok()) << keep;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << keep;
    EXPECT_TRUE(Contains(std::string(r.status().message()), "truncated")) << keep;
    EXPECT_TRUE(Contains(std::string(r.status().message()), Path("MANIFEST"))) << keep;
  }
  // Bytes after the payload are refused too.
  WriteAll(Path("MANIFEST"), bytes + "x");
  EXPECT_EQ(ReadManifest(dir_).status().code(), absl::StatusCode::kDataLoss);
  WriteAll(Path("MANIFEST"), "");
  EXPECT_EQ(ReadManifest(dir_).status().code(), absl::StatusCode::kDataLoss);
}

TEST_F(ManifestTest, BadMagicIsRefused) {
  ASSERT_TRUE(WriteManifest(dir_, SampleManifest(5, 4)).ok());
  FlipByte(Path("MANIFEST"), 2);
  absl::StatusOr<proto::CheckpointManifest> r = ReadManifest(dir_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(std::string(r.status().message()), "bad magic"));
  EXPECT_TRUE(Contains(std::string(r.status().message()), Path("MANIFEST")));
}

TEST_F(ManifestTest, OtherFrameVersionIsRefused) {
  const std::string payload = SampleManifest(5, 4).SerializeAsString();
  WriteAll(Path("MANIFEST"), Frame(kCheckpointFormatVersion + 1, payload));
  absl::StatusOr<proto::CheckpointManifest> r = ReadManifest(dir_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  const std::string msg(r.status().message());
  EXPECT_TRUE(Contains(msg, Path("MANIFEST")));
  EXPECT_TRUE(Contains(msg, "version " + std::to_string(kCheckpointFormatVersion + 1)));
  EXPECT_TRUE(Contains(msg, "version " + std::to_string(kCheckpointFormatVersion)));
}

TEST_F(ManifestTest, OtherManifestVersionIsRefused) {
  proto::CheckpointManifest m = SampleManifest(5, 4);
  m.set_format_version(kCheckpointFormatVersion + 1);
  WriteAll(Path("MANIFEST"), Frame(kCheckpointFormatVersion, m.SerializeAsString()));
  absl::StatusOr<proto::CheckpointManifest> r = ReadManifest(dir_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(
      Contains(std::string(r.status().message()), "format_version " + std::to_string(kCheckpointFormatVersion + 1)));
  // Nor may one be written.
  absl::Status w = WriteManifest(dir_, m);
  EXPECT_EQ(w.code(), absl::StatusCode::kInvalidArgument);
  m.clear_format_version();
  EXPECT_EQ(WriteManifest(dir_, m).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ManifestTest, UnparsablePayloadIsRefused) {
  WriteAll(Path("MANIFEST"), Frame(kCheckpointFormatVersion, "\xff\xff\xff\xff\xff"));
  absl::StatusOr<proto::CheckpointManifest> r = ReadManifest(dir_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(std::string(r.status().message()), "does not parse"));
}

TEST_F(ManifestTest, WriteIntoMissingDirectoryFails) {
  absl::Status st = WriteManifest(Path("nope"), SampleManifest(1, 0));
  EXPECT_FALSE(st.ok());
  EXPECT_TRUE(Contains(std::string(st.message()), Path("nope")));
}

// --- Data files -------------------------------------------------------------

using DataFileTest = TempDirTest;

struct Written {
  proto::CheckpointFile file;
  std::vector<std::string> blocks;
  std::vector<uint64_t> offsets;
  std::vector<uint32_t> crcs;
};

// Blocks of various sizes, one spanning several 1 MiB buffers.
Written WriteBlocks(const std::string& dir, const std::string& name, uint64_t bytes_per_sec = 0) {
  Written w;
  auto writer = DataFileWriter::Create(dir, name, bytes_per_sec);
  EXPECT_TRUE(writer.ok()) << writer.status();
  if (!writer.ok()) return w;
  const std::vector<size_t> sizes = {100, (5u << 20) / 2, 0, 7, 56 * 1000};
  for (size_t i = 0; i < sizes.size(); ++i) {
    const std::string data = RandomBytes(sizes[i], static_cast<uint32_t>(i + 1));
    w.offsets.push_back((*writer)->BeginBlock());
    // In row-sized pieces and one big one, as servers do.
    size_t off = 0;
    for (; off + 56 <= data.size() && off < 56 * 20; off += 56)
      EXPECT_TRUE((*writer)->Append(data.data() + off, 56).ok());
    EXPECT_TRUE((*writer)->Append(data.data() + off, data.size() - off).ok());
    w.crcs.push_back((*writer)->EndBlock());
    w.blocks.push_back(data);
  }
  absl::StatusOr<proto::CheckpointFile> f = (*writer)->Finish();
  EXPECT_TRUE(f.ok()) << f.status();
  if (f.ok()) w.file = *f;
  return w;
}

TEST_F(DataFileTest, BlocksReadBackAndVerify) {
  const Written w = WriteBlocks(dir_, "t0-r0.rows");
  std::string all;
  for (const std::string& b : w.blocks) all += b;
  EXPECT_EQ(w.file.name(), "t0-r0.rows");
  EXPECT_EQ(w.file.size(), all.size());
  EXPECT_EQ(w.file.crc32c(), Crc32c(all.data(), all.size()));
  EXPECT_EQ(ReadAll(Path("t0-r0.rows")), all);
  EXPECT_TRUE(VerifyFile(dir_, w.file, true).ok());
  uint64_t expect_offset = 0;
  for (size_t i = 0; i < w.blocks.size(); ++i) {
    EXPECT_EQ(w.offsets[i], expect_offset);
    expect_offset += w.blocks[i].size();
    EXPECT_EQ(w.crcs[i], Crc32c(w.blocks[i].data(), w.blocks[i].size()));
    std::string out;
    absl::Status st = ReadBlock(dir_, "t0-r0.rows", w.offsets[i], w.blocks[i].size(), w.crcs[i], &out);
    ASSERT_TRUE(st.ok()) << st;
    EXPECT_EQ(out, w.blocks[i]);
  }
}

TEST_F(DataFileTest, FlippedByteInABlockIsRefusedNamingTheFile) {
  const Written w = WriteBlocks(dir_, "t1-r2.rows");
  const uint64_t bad = w.offsets[1] + 12345;
  FlipByte(Path("t1-r2.rows"), bad);
  std::string out;
  absl::Status st = ReadBlock(dir_, "t1-r2.rows", w.offsets[1], w.blocks[1].size(), w.crcs[1], &out);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(std::string(st.message()), Path("t1-r2.rows")));
  EXPECT_TRUE(Contains(std::string(st.message()), "checksum mismatch at offset " + std::to_string(w.offsets[1])));
  // The neighbours are intact.
  EXPECT_TRUE(ReadBlock(dir_, "t1-r2.rows", w.offsets[0], w.blocks[0].size(), w.crcs[0], &out).ok());
  EXPECT_TRUE(ReadBlock(dir_, "t1-r2.rows", w.offsets[4], w.blocks[4].size(), w.crcs[4], &out).ok());
  // The whole-file check sees it; the size check alone does not.
  st = VerifyFile(dir_, w.file, true);
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(std::string(st.message()), "checksum mismatch"));
  EXPECT_TRUE(Contains(std::string(st.message()), Path("t1-r2.rows")));
  EXPECT_TRUE(VerifyFile(dir_, w.file, false).ok());
}

TEST_F(DataFileTest, TruncatedFileIsRefused) {
  const Written w = WriteBlocks(dir_, "dense-r0.bin");
  ASSERT_EQ(::truncate(Path("dense-r0.bin").c_str(), static_cast<off_t>(w.file.size() - 10)), 0);
  for (bool crc : {false, true}) {
    absl::Status st = VerifyFile(dir_, w.file, crc);
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
    EXPECT_TRUE(Contains(std::string(st.message()), Path("dense-r0.bin")));
    EXPECT_TRUE(Contains(std::string(st.message()), "truncated: " + std::to_string(w.file.size() - 10) +
                                                        " bytes, manifest says " + std::to_string(w.file.size())));
  }
  std::string out;
  absl::Status st = ReadBlock(dir_, "dense-r0.bin", w.offsets[4], w.blocks[4].size(), w.crcs[4], &out);
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(std::string(st.message()), "truncated"));
  EXPECT_TRUE(ReadBlock(dir_, "dense-r0.bin", w.offsets[0], w.blocks[0].size(), w.crcs[0], &out).ok());
  // A longer file is refused as well.
  WriteAll(Path("dense-r0.bin"), std::string(w.file.size() + 1, 'x'));
  EXPECT_EQ(VerifyFile(dir_, w.file, false).code(), absl::StatusCode::kDataLoss);
}

TEST_F(DataFileTest, MissingFileIsNotFound) {
  proto::CheckpointFile f;
  f.set_name("t0-r9.rows");
  f.set_size(10);
  absl::Status st = VerifyFile(dir_, f, true);
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Contains(std::string(st.message()), Path("t0-r9.rows") + ": missing"));
  std::string out;
  EXPECT_EQ(ReadBlock(dir_, "t0-r9.rows", 0, 1, 0, &out).code(), absl::StatusCode::kNotFound);
  // Names leading out of the directory are refused outright.
  f.set_name("../etc/passwd");
  EXPECT_EQ(VerifyFile(dir_, f, false).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(DataFileWriter::Create(dir_, "/tmp/x", 0).ok());
}

TEST_F(DataFileTest, WriteErrorNamesTheFileAndIsSticky) {
  // A file size limit of 1 MiB makes the write past it fail (EFBIG), as a
  // full disk would: the writer must report it and stay failed.
  struct rlimit old_limit;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  void (*old_handler)(int) = std::signal(SIGXFSZ, SIG_IGN);
  struct rlimit limit = old_limit;
  limit.rlim_cur = 1 << 20;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &limit), 0);
  auto w = DataFileWriter::Create(dir_, "full.rows", 0);
  ASSERT_TRUE(w.ok()) << w.status();
  const std::string data(3 << 20, 'x');  // crosses the buffer: the write happens here
  absl::Status st = (*w)->Append(data.data(), data.size());
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &old_limit), 0);
  std::signal(SIGXFSZ, old_handler);
  ASSERT_FALSE(st.ok());
  EXPECT_TRUE(Contains(std::string(st.message()), Path("full.rows")));
  EXPECT_EQ((*w)->Append("y", 1).code(), st.code());
  EXPECT_EQ((*w)->Finish().status().code(), st.code());
}

TEST_F(DataFileTest, CreateRefusesAnExistingFileOrASymlink) {
  // A symlink planted under a data file's name is not written through...
  const std::string target = Path("elsewhere");
  fs::create_symlink(target, Path("t0-r0.rows"));
  auto w = DataFileWriter::Create(dir_, "t0-r0.rows", 0);
  ASSERT_FALSE(w.ok());
  EXPECT_TRUE(Contains(std::string(w.status().message()), Path("t0-r0.rows"))) << w.status();
  EXPECT_FALSE(fs::exists(target));
  // ... and an existing file is not truncated.
  { std::ofstream(Path("t1-r0.rows")) << "keep"; }
  w = DataFileWriter::Create(dir_, "t1-r0.rows", 0);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(fs::file_size(Path("t1-r0.rows")), 4u);
}

TEST_F(DataFileTest, CheckpointRootConfinesNames) {
  fs::create_directories(Path("root/a/ckpt-00000001"));
  fs::create_directories(Path("outside"));
  fs::create_directory_symlink(Path("outside"), Path("root/link"));
  fs::create_directory_symlink(Path("outside"), Path("root/a/inner"));
  absl::StatusOr<CheckpointRoot> root = CheckpointRoot::Open(Path("root"));
  ASSERT_TRUE(root.ok()) << root.status();
  EXPECT_EQ(*root->Resolve("a/ckpt-00000001"), root->path() + "/a/ckpt-00000001");
  EXPECT_EQ(*root->Resolve("", /*allow_root=*/true), root->path());
  const std::pair<std::string, std::string> refused[] = {
      {"", "empty"},
      {Path("root/a"), "absolute"},
      {"../outside", "'..'"},
      {"a/../a", "'..'"},
      {"./a", "'.'"},
      {"a//ckpt-00000001", "empty component"},
      {"a/", "empty component"},
      {"link", "'link' is a symlink"},
      {"a/inner/x", "'a/inner' is a symlink"},
  };
  for (const auto& [name, why] : refused) {
    absl::StatusOr<std::string> r = root->Resolve(name);
    ASSERT_FALSE(r.ok()) << name;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << name << ": " << r.status();
    EXPECT_TRUE(Contains(std::string(r.status().message()), why)) << name << ": " << r.status();
  }
  EXPECT_EQ(root->Resolve("a/missing").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(CheckpointRoot().Resolve("a").status().code(), absl::StatusCode::kFailedPrecondition);
  // The root itself may be a symlink: the operator chose it.
  fs::create_directory_symlink(Path("root"), Path("root-link"));
  root = CheckpointRoot::Open(Path("root-link"));
  ASSERT_TRUE(root.ok()) << root.status();
  EXPECT_TRUE(root->Resolve("a/ckpt-00000001").ok());

  EXPECT_EQ(*NameUnderRoot("/x/root", "/x/root/ckpt-00000007"), "ckpt-00000007");
  EXPECT_EQ(*NameUnderRoot("/x/root/", "/x/root/a/../b/ckpt-1/"), "b/ckpt-1");
  EXPECT_FALSE(NameUnderRoot("/x/root", "/x/root").ok());
  EXPECT_FALSE(NameUnderRoot("/x/root", "/x/rootother/c").ok());
  EXPECT_FALSE(NameUnderRoot("/x/root", "/x/root/../c").ok());
}

TEST_F(DataFileTest, AbandonedWriterRemovesItsFile) {
  {
    auto w = DataFileWriter::Create(dir_, "t0-r0.rows", 0);
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->Append("abc", 3).ok());
    EXPECT_TRUE(fs::exists(Path("t0-r0.rows")));
  }
  EXPECT_FALSE(fs::exists(Path("t0-r0.rows")));
  auto w = DataFileWriter::Create(dir_, "t0-r0.rows", 0);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->Finish().ok());
  EXPECT_EQ((*w)->Finish().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*w)->Append("a", 1).code(), absl::StatusCode::kFailedPrecondition);
  w->reset();
  EXPECT_TRUE(fs::exists(Path("t0-r0.rows")));  // finished files stay
}

TEST_F(DataFileTest, RateLimitHoldsTheWriterBack) {
  const auto start = std::chrono::steady_clock::now();
  auto w = DataFileWriter::Create(dir_, "slow.rows", 16u << 20);  // 16 MiB/s
  ASSERT_TRUE(w.ok());
  const std::string mib(1 << 20, 'z');
  for (int i = 0; i < 8; ++i) ASSERT_TRUE((*w)->Append(mib.data(), mib.size()).ok());
  ASSERT_TRUE((*w)->Finish().ok());
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_GE(seconds, 0.45);  // 8 MiB at 16 MiB/s
  EXPECT_LT(seconds, 5.0);
}

// --- Listing, latest, pruning -------------------------------------------------

class CheckpointRootTest : public TempDirTest {
 protected:
  // A complete checkpoint `id` (a delta on `parent` if nonzero).
  void Complete(uint64_t id, uint64_t parent) {
    const std::string d = Path(CheckpointDirName(id));
    fs::create_directories(d);
    WriteAll((fs::path(d) / "t0-r0.rows").string(), std::string(100 * id, 'r'));
    ASSERT_TRUE(WriteManifest(d, SampleManifest(id, parent)).ok());
  }
  void Incomplete(uint64_t id) {
    const std::string d = Path(CheckpointDirName(id));
    fs::create_directories(d);
    WriteAll((fs::path(d) / "t0-r0.rows").string(), "partial");
  }
  std::vector<uint64_t> Present() const {
    std::vector<uint64_t> ids;
    for (const auto& s : ListCheckpoints(dir_)) ids.push_back(s.id());
    return ids;
  }
  // 1 full, 2 delta of 1, 3 delta of 2, 4 full, 5 delta of 4.
  void Chain() {
    Complete(1, 0);
    Complete(2, 1);
    Complete(3, 2);
    Complete(4, 0);
    Complete(5, 4);
  }
};

TEST_F(CheckpointRootTest, ListReportsCompleteAndIncomplete) {
  Chain();
  Incomplete(6);
  WriteAll(Path("notes.txt"), "not a checkpoint");
  fs::create_directories(Path("ckpt-abc"));
  std::vector<proto::CheckpointSummary> all = ListCheckpoints(dir_);
  ASSERT_EQ(all.size(), 6u);
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(all[i].id(), i + 1);
    EXPECT_TRUE(all[i].complete()) << all[i].problem();
    EXPECT_EQ(all[i].dir(), Path(CheckpointDirName(i + 1)));
    EXPECT_EQ(all[i].created_unix(), 1700000000);
  }
  EXPECT_EQ(all[1].parent_id(), 1u);
  EXPECT_EQ(all[3].parent_id(), 0u);
  EXPECT_FALSE(all[5].complete());
  EXPECT_TRUE(Contains(all[5].problem(), "no MANIFEST"));
  EXPECT_EQ(all[5].bytes(), 7u);
  EXPECT_TRUE(ListCheckpoints(Path("no-such-root")).empty());
}

TEST_F(CheckpointRootTest, DamagedManifestIsListedIncomplete) {
  Complete(1, 0);
  Complete(2, 0);
  FlipByte(Path(CheckpointDirName(2)) + "/MANIFEST", 40);
  std::vector<proto::CheckpointSummary> all = ListCheckpoints(dir_);
  ASSERT_EQ(all.size(), 2u);
  EXPECT_TRUE(all[0].complete());
  EXPECT_FALSE(all[1].complete());
  EXPECT_TRUE(Contains(all[1].problem(), "checksum mismatch"));
  absl::StatusOr<std::string> latest = LatestCheckpoint(dir_);
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ(*latest, Path(CheckpointDirName(1)));
}

TEST_F(CheckpointRootTest, ManifestOfAnotherIdIsIncomplete) {
  Complete(1, 0);
  fs::rename(Path(CheckpointDirName(1)), Path(CheckpointDirName(3)));
  std::vector<proto::CheckpointSummary> all = ListCheckpoints(dir_);
  ASSERT_EQ(all.size(), 1u);
  EXPECT_FALSE(all[0].complete());
  EXPECT_TRUE(Contains(all[0].problem(), "does not match"));
}

TEST_F(CheckpointRootTest, LatestIsTheNewestComplete) {
  EXPECT_EQ(LatestCheckpoint(Path("no-such-root")).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(LatestCheckpoint(dir_).status().code(), absl::StatusCode::kNotFound);
  Incomplete(1);
  absl::StatusOr<std::string> latest = LatestCheckpoint(dir_);
  EXPECT_EQ(latest.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Contains(std::string(latest.status().message()), dir_));
  Chain();
  Incomplete(6);
  latest = LatestCheckpoint(dir_);
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ(*latest, Path(CheckpointDirName(5)));
}

TEST_F(CheckpointRootTest, PruneKeepsTheNewestAndTheirAncestors) {
  Chain();
  Incomplete(6);  // newer than every complete one: a save in progress
  WriteAll(Path("notes.txt"), "x");
  ASSERT_TRUE(PruneCheckpoints(dir_, 2).ok());
  EXPECT_EQ(Present(), (std::vector<uint64_t>{4, 5, 6}));
  EXPECT_TRUE(fs::exists(Path("notes.txt")));
  ASSERT_TRUE(PruneCheckpoints(dir_, 1).ok());
  EXPECT_EQ(Present(), (std::vector<uint64_t>{4, 5, 6}));  // 5 needs 4
  EXPECT_TRUE(ReadManifest(Path(CheckpointDirName(4))).ok());
}

TEST_F(CheckpointRootTest, PruneKeepsTheWholeChainOfADelta) {
  Complete(1, 0);
  Complete(2, 1);
  Complete(3, 2);
  ASSERT_TRUE(PruneCheckpoints(dir_, 1).ok());
  EXPECT_EQ(Present(), (std::vector<uint64_t>{1, 2, 3}));
  Complete(4, 0);
  ASSERT_TRUE(PruneCheckpoints(dir_, 1).ok());
  EXPECT_EQ(Present(), (std::vector<uint64_t>{4}));
}

TEST_F(CheckpointRootTest, PruneRemovesOldIncompleteDirectories) {
  Complete(1, 0);
  Incomplete(2);
  Complete(3, 0);
  Incomplete(4);
  ASSERT_TRUE(PruneCheckpoints(dir_, 2).ok());
  EXPECT_EQ(Present(), (std::vector<uint64_t>{1, 3, 4}));
  ASSERT_TRUE(PruneCheckpoints(dir_, 1).ok());
  EXPECT_EQ(Present(), (std::vector<uint64_t>{3, 4}));
  EXPECT_EQ(PruneCheckpoints(dir_, 0).code(), absl::StatusCode::kInvalidArgument);
  // Nothing complete: nothing is touched.
  fs::remove_all(Path(CheckpointDirName(3)));
  ASSERT_TRUE(PruneCheckpoints(dir_, 1).ok());
  EXPECT_EQ(Present(), (std::vector<uint64_t>{4}));
}

TEST_F(CheckpointRootTest, BrokenChainIsKeptButDoesNotCount) {
  Complete(1, 0);
  Complete(2, 1);
  Complete(3, 2);
  FlipByte(Path(CheckpointDirName(2)) + "/MANIFEST", 40);
  ASSERT_TRUE(PruneCheckpoints(dir_, 1).ok());
  // 3 cannot be restored (its parent is damaged): it stays with 2 for a
  // post-mortem, and 1, the newest restorable checkpoint, stays as well.
  EXPECT_EQ(Present(), (std::vector<uint64_t>{1, 2, 3}));
  Complete(4, 0);
  ASSERT_TRUE(PruneCheckpoints(dir_, 1).ok());
  EXPECT_EQ(Present(), (std::vector<uint64_t>{4}));
  // A parent that is gone altogether.
  Complete(5, 4);
  Complete(6, 5);
  fs::remove_all(Path(CheckpointDirName(5)));
  ASSERT_TRUE(PruneCheckpoints(dir_, 1).ok());
  EXPECT_EQ(Present(), (std::vector<uint64_t>{4, 6}));
}

// --- Inspect ----------------------------------------------------------------

class InspectCheckpointTest : public TempDirTest {
 protected:
  // One table (dim 2, Adagrad: 2 state floats, row_bytes 32 + 16 = 48), a
  // block of 3 rows and 1 tombstone, an empty block, and a dense block.
  void SetUp() override {
    TempDirTest::SetUp();
    ckpt_ = Path(CheckpointDirName(1));
    fs::create_directories(ckpt_);
    m_.set_format_version(kCheckpointFormatVersion);
    m_.set_id(1);
    m_.set_num_logical_shards(4);
    m_.set_num_servers(1);
    m_.set_dense_total(3);
    proto::CheckpointTable* t = m_.add_tables();
    t->set_name("user");
    t->set_dim(2);
    t->set_state_floats(2);
    t->set_row_bytes(48);
    t->set_optimizer("ADAGRAD");
    t->set_rows(3);

    auto w = DataFileWriter::Create(ckpt_, "t0-r0.rows", 0);
    ASSERT_TRUE(w.ok());
    proto::ShardBlock* empty = m_.add_blocks();
    empty->set_file("t0-r0.rows");
    empty->set_offset((*w)->BeginBlock());
    empty->set_crc32c((*w)->EndBlock());
    proto::ShardBlock* b = m_.add_blocks();
    b->set_shard(2);
    b->set_file("t0-r0.rows");
    b->set_offset((*w)->BeginBlock());
    for (int r = 0; r < 3; ++r) {
      // The row layout of docs/checkpoint_format.md, spelled out.
      char row[48] = {0};
      const uint64_t key = 42 + r, last_push_seq = (uint64_t{1} << 32) + 100 + r;
      const uint32_t count = 10 + r, generation = 0;
      const uint16_t flags = 0, last_day = 19000;
      const float f[4] = {0.5f + r, -1.25f, 0.1f, 0.2f};
      std::memcpy(row, &key, 8);
      std::memcpy(row + 8, &count, 4);
      std::memcpy(row + 12, &generation, 4);
      std::memcpy(row + 16, &last_push_seq, 8);
      std::memcpy(row + 24, &flags, 2);
      std::memcpy(row + 26, &last_day, 2);
      std::memcpy(row + 32, f, 16);
      ASSERT_TRUE((*w)->Append(row, sizeof(row)).ok());
    }
    const uint64_t tomb = 7;
    ASSERT_TRUE((*w)->Append(&tomb, 8).ok());
    b->set_rows(3);
    b->set_tombstones(1);
    b->set_crc32c((*w)->EndBlock());
    auto f = (*w)->Finish();
    ASSERT_TRUE(f.ok());
    *m_.add_files() = *f;

    auto dw = DataFileWriter::Create(ckpt_, "dense-r0.bin", 0);
    ASSERT_TRUE(dw.ok());
    proto::DenseBlock* d = m_.add_dense();
    d->set_length(3);
    d->set_trained(3);
    d->set_file("dense-r0.bin");
    d->set_file_offset((*dw)->BeginBlock());
    const float dense[6] = {1, 2, 3, 0.1f, 0.1f, 0.1f};  // weights, Adagrad accum
    ASSERT_TRUE((*dw)->Append(dense, sizeof(dense)).ok());
    d->set_bytes(sizeof(dense));
    d->set_crc32c((*dw)->EndBlock());
    auto df = (*dw)->Finish();
    ASSERT_TRUE(df.ok());
    *m_.add_files() = *df;
    ASSERT_TRUE(WriteManifest(ckpt_, m_).ok());
  }

  std::string ckpt_;
  proto::CheckpointManifest m_;
};

TEST_F(InspectCheckpointTest, PrintsAndVerifies) {
  std::ostringstream out;
  absl::Status st = InspectCheckpoint(ckpt_, 2, out);
  const std::string text = out.str();
  ASSERT_TRUE(st.ok()) << st << "\n" << text;
  EXPECT_TRUE(Contains(text, "t0-r0.rows"));
  EXPECT_TRUE(Contains(text, "blocks: 2 (2 full, 0 delta)"));
  EXPECT_TRUE(Contains(text, "rows 3, tombstones 1, bytes 152"));
  EXPECT_TRUE(Contains(text, "key 42 count 10 last_push_seq 4294967396 generation 0 last_day 19000"));
  EXPECT_TRUE(Contains(text, "weights [0.5 -1.25]"));
  EXPECT_TRUE(Contains(text, "state   [0.1 0.2]"));
  EXPECT_TRUE(Contains(text, "key 43"));
  EXPECT_FALSE(Contains(text, "key 44"));  // sample_rows = 2
  EXPECT_TRUE(Contains(text, "dense verification: 1 of 1 ok"));
  EXPECT_TRUE(Contains(text, "verified: ok"));
}

TEST_F(InspectCheckpointTest, ReportsDamageAndFails) {
  FlipByte(ckpt_ + "/t0-r0.rows", 50);
  std::ostringstream out;
  absl::Status st = InspectCheckpoint(ckpt_, 3, out);
  const std::string text = out.str();
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(std::string(st.message()), "t0-r0.rows"));
  EXPECT_TRUE(Contains(text, "FAILED"));
  EXPECT_TRUE(Contains(text, "checksum mismatch at offset 0"));
  EXPECT_TRUE(Contains(text, "block verification: 1 of 2 ok"));
  EXPECT_TRUE(Contains(text, "dense verification: 1 of 1 ok"));  // the rest is still checked
}

TEST_F(InspectCheckpointTest, MissingParentFails) {
  m_.set_id(2);
  m_.set_parent_id(1);
  const std::string d = Path(CheckpointDirName(2));
  fs::create_directories(d);
  for (const char* f : {"t0-r0.rows", "dense-r0.bin"}) fs::copy_file(ckpt_ + "/" + f, d + "/" + f);
  ASSERT_TRUE(WriteManifest(d, m_).ok());
  std::ostringstream out;
  EXPECT_TRUE(InspectCheckpoint(d, 1, out).ok()) << out.str();  // ckpt 1 is there
  fs::remove(ckpt_ + "/MANIFEST");
  out.str("");
  absl::Status st = InspectCheckpoint(d, 1, out);
  EXPECT_FALSE(st.ok());
  EXPECT_TRUE(Contains(std::string(st.message()), "parent of checkpoint 2"));
  // And the incomplete one itself.
  out.str("");
  EXPECT_EQ(InspectCheckpoint(ckpt_, 1, out).code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace ember::storage
