// Checkpoint files: CRC-32C, the MANIFEST frame, listing and pruning of a
// checkpoint root, and the block-wise data file writer and reader.
#include "storage/checkpoint_files.h"

#include <fcntl.h>
#include <nmmintrin.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "storage/fd.h"
#include "storage/sparse_table.h"

namespace ember::storage {
namespace {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------
// CRC-32C.
//
// The SSE4.2 crc32 instruction has a latency of 3 cycles and a throughput of
// one per cycle, so one dependent chain uses a third of the unit. Long inputs
// are cut into three lanes of kLane bytes computed side by side and joined
// with the "append kLane zero bytes" operator, which is linear over GF(2) and
// kept as four byte tables.

constexpr size_t kLane = 4096;

uint64_t CrcRaw(uint64_t c, const uint8_t* p, size_t n) {
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    c = _mm_crc32_u64(c, w);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  while (n > 0) {
    c32 = _mm_crc32_u8(c32, *p++);
    --n;
  }
  return c32;
}

struct LaneShift {
  uint32_t table[4][256];

  LaneShift() {
    // Column i: the raw state 1 << i after kLane zero bytes.
    uint32_t column[32];
    for (int i = 0; i < 32; ++i) {
      uint64_t c = uint32_t{1} << i;
      for (size_t k = 0; k < kLane / 8; ++k) c = _mm_crc32_u64(c, 0);
      column[i] = static_cast<uint32_t>(c);
    }
    for (int byte = 0; byte < 4; ++byte) {
      for (int v = 0; v < 256; ++v) {
        uint32_t r = 0;
        for (int b = 0; b < 8; ++b) {
          if (v & (1 << b)) r ^= column[byte * 8 + b];
        }
        table[byte][v] = r;
      }
    }
  }

  uint32_t Apply(uint32_t c) const {
    return table[0][c & 0xff] ^ table[1][(c >> 8) & 0xff] ^ table[2][(c >> 16) & 0xff] ^ table[3][c >> 24];
  }
};

const LaneShift& Shift() {
  static const LaneShift shift;
  return shift;
}

// ---------------------------------------------------------------------------
// Little-endian fields and file helpers.

void PutU32(std::string* s, uint32_t v) {
  for (int i = 0; i < 4; ++i) s->push_back(static_cast<char>(v >> (8 * i)));
}
void PutU64(std::string* s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s->push_back(static_cast<char>(v >> (8 * i)));
}
uint32_t GetU32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= uint32_t{static_cast<uint8_t>(p[i])} << (8 * i);
  return v;
}
uint64_t GetU64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t{static_cast<uint8_t>(p[i])} << (8 * i);
  return v;
}

// MANIFEST frame: magic, format version, payload CRC-32C, payload length.
constexpr size_t kFrameHeader = 8 + 4 + 4 + 8;

absl::Status ErrnoError(int err, const std::string& path, absl::string_view what) {
  return absl::ErrnoToStatus(err, absl::StrCat(path, ": ", what));
}

absl::Status WriteAll(int fd, const char* p, size_t n, const std::string& path) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(errno, path, "write failed");
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return absl::OkStatus();
}

// Reads n bytes at `offset`; fewer only at end of file (*got tells).
absl::Status PreadAll(int fd, char* p, size_t n, uint64_t offset, const std::string& path, size_t* got) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = ::pread(fd, p + done, n - done, static_cast<off_t>(offset + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(errno, path, "read failed");
    }
    if (r == 0) break;
    done += static_cast<size_t>(r);
  }
  *got = done;
  return absl::OkStatus();
}


// Data file names are plain relative paths inside the checkpoint directory: a
// manifest must not point outside it.
absl::Status CheckFileName(const std::string& dir, const std::string& name) {
  bool bad = name.empty() || name[0] == '/';
  for (const auto& part : fs::path(name)) bad = bad || part == "..";
  if (bad) {
    return absl::InvalidArgumentError(absl::StrCat(dir, ": bad data file name '", name,
                                                   "': must be a relative path inside the checkpoint directory"));
  }
  return absl::OkStatus();
}

std::string JoinPath(const std::string& dir, const std::string& name) { return (fs::path(dir) / name).string(); }

absl::StatusOr<uint64_t> FileSize(int fd, const std::string& path) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return ErrnoError(errno, path, "fstat failed");
  return static_cast<uint64_t>(st.st_size);
}

absl::StatusOr<int> OpenForRead(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat(path, ": missing"));
    return ErrnoError(errno, path, "cannot open");
  }
  return fd;
}

std::string TruncatedMessage(const std::string& path, uint64_t have, uint64_t want) {
  return absl::StrCat(path, ": truncated: ", have, " bytes, manifest says ", want);
}

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

uint32_t Crc32c(const void* data, size_t n, uint32_t crc) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  uint64_t c = ~crc;
  if (n >= 3 * kLane) {
    const LaneShift& shift = Shift();
    while (n >= 3 * kLane) {
      uint64_t c0 = c, c1 = 0, c2 = 0;
      for (size_t i = 0; i < kLane; i += 8) {
        uint64_t w0, w1, w2;
        std::memcpy(&w0, p + i, 8);
        std::memcpy(&w1, p + kLane + i, 8);
        std::memcpy(&w2, p + 2 * kLane + i, 8);
        c0 = _mm_crc32_u64(c0, w0);
        c1 = _mm_crc32_u64(c1, w1);
        c2 = _mm_crc32_u64(c2, w2);
      }
      uint32_t joined = shift.Apply(static_cast<uint32_t>(c0)) ^ static_cast<uint32_t>(c1);
      c = shift.Apply(joined) ^ static_cast<uint32_t>(c2);
      p += 3 * kLane;
      n -= 3 * kLane;
    }
  }
  return ~static_cast<uint32_t>(CrcRaw(c, p, n));
}

uint64_t ConfigFingerprint(const proto::JobConfig& config, uint64_t dense_total) {
  // Length-prefixed little-endian fields, so that no two configs share a
  // string; then FNV-1a 64, a fixed function of the bytes.
  std::string s = "ember-config-v1";
  PutU32(&s, static_cast<uint32_t>(config.tables_size()));
  for (const proto::TableConfig& t : config.tables()) {
    PutU32(&s, static_cast<uint32_t>(t.name().size()));
    s += t.name();
    PutU32(&s, t.dim());
    PutU32(&s, static_cast<uint32_t>(t.optimizer().kind()));
  }
  PutU32(&s, config.cluster().num_logical_shards());
  PutU64(&s, dense_total);
  uint64_t h = 0xcbf29ce484222325ULL;
  for (char ch : s) {
    h ^= static_cast<uint8_t>(ch);
    h *= 0x100000001b3ULL;
  }
  return h;
}

std::string CrcHex(uint32_t crc) { return absl::StrCat("0x", absl::Hex(crc, absl::kZeroPad8)); }

std::string CheckpointDirName(uint64_t id) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "ckpt-%08llu", static_cast<unsigned long long>(id));
  return buf;
}

uint64_t CheckpointIdOf(const std::string& dir_name) {
  absl::string_view s = dir_name;
  if (s.size() <= 5 || s.substr(0, 5) != "ckpt-") return 0;
  s.remove_prefix(5);
  for (char c : s) {
    if (c < '0' || c > '9') return 0;
  }
  uint64_t id;
  if (!absl::SimpleAtoi(s, &id)) return 0;
  // Only the exact spelling CheckpointDirName makes ("ckpt-42" is not one).
  return CheckpointDirName(id) == dir_name ? id : 0;
}

absl::Status WriteFramed(const std::string& dir, const FrameKind& kind, const google::protobuf::MessageLite& message) {
  const std::string path = JoinPath(dir, kManifestName);
  std::string payload;
  if (!message.SerializeToString(&payload)) {
    return absl::InternalError(absl::StrCat(path, ": cannot serialize the ", kind.what));
  }
  std::string frame(kind.magic, 8);
  PutU32(&frame, kind.version);
  PutU32(&frame, Crc32c(payload.data(), payload.size()));
  PutU64(&frame, payload.size());
  frame += payload;

  const std::string tmp = path + ".tmp";
  // A temporary left by a crash (or anything planted under its name, a
  // symlink included: unlink does not follow) goes; the new one is created
  // fresh, never opened through a link.
  if (::unlink(tmp.c_str()) != 0 && errno != ENOENT) return ErrnoError(errno, tmp, "cannot remove the old temporary");
  Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644));
  if (fd.get() < 0) return ErrnoError(errno, tmp, "cannot create");
  absl::Status st = WriteAll(fd.get(), frame.data(), frame.size(), tmp);
  if (st.ok() && ::fdatasync(fd.get()) != 0) st = ErrnoError(errno, tmp, "fdatasync failed");
  if (fd.Close() != 0 && st.ok()) st = ErrnoError(errno, tmp, "close failed");
  if (st.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) st = ErrnoError(errno, path, "rename failed");
  if (!st.ok()) {
    ::unlink(tmp.c_str());
    return st;
  }
  // The rename is durable once the directory is.
  Fd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (d.get() < 0) return ErrnoError(errno, dir, "cannot open the directory to fsync it");
  if (::fsync(d.get()) != 0) return ErrnoError(errno, dir, "fsync of the directory failed");
  return absl::OkStatus();
}

absl::StatusOr<CheckpointRoot> CheckpointRoot::Open(const std::string& dir) {
  if (dir.empty()) return absl::InvalidArgumentError("checkpoint root: empty path");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat(dir, ": cannot create the checkpoint root: ", ec.message()));
  const fs::path real = fs::canonical(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat(dir, ": cannot resolve the checkpoint root: ", ec.message()));
  if (!fs::is_directory(real, ec)) return absl::InvalidArgumentError(absl::StrCat(dir, ": not a directory"));
  CheckpointRoot root;
  root.path_ = real.string();
  return root;
}

absl::StatusOr<std::string> CheckpointRoot::Resolve(const std::string& name, bool allow_root) const {
  if (!configured()) {
    return absl::FailedPreconditionError(
        "the job has no checkpoint root (checkpoint.dir is empty): no checkpoint can be saved or restored");
  }
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint path '", name, "': ", why));
  };
  if (name.empty()) {
    if (allow_root) return path_;
    return bad("empty; name a checkpoint relative to the checkpoint root");
  }
  if (name[0] == '/') return bad("absolute; name a checkpoint relative to the checkpoint root");
  std::vector<std::string> parts;
  for (size_t begin = 0;;) {
    const size_t end = name.find('/', begin);
    parts.push_back(name.substr(begin, end == std::string::npos ? std::string::npos : end - begin));
    if (end == std::string::npos) break;
    begin = end + 1;
  }
  for (const std::string& p : parts) {
    if (p.empty()) return bad("has an empty component");
    if (p == "." || p == "..") return bad(absl::StrCat("has a '", p, "' component"));
  }
  Fd dir(::open(path_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir.get() < 0) return ErrnoError(errno, path_, "cannot open the checkpoint root");
  std::string walked;
  for (const std::string& p : parts) {
    walked = walked.empty() ? p : absl::StrCat(walked, "/", p);
    Fd next(::openat(dir.get(), p.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (next.get() < 0) {
      const int err = errno;
      struct stat st;
      if (::fstatat(dir.get(), p.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode)) {
        return bad(absl::StrCat("'", walked, "' is a symlink; symlinks below the checkpoint root are not followed"));
      }
      if (err == ENOENT) {
        return absl::NotFoundError(absl::StrCat("checkpoint path '", name, "': '", walked,
                                                "' does not exist under the checkpoint root"));
      }
      if (err == ENOTDIR) return bad(absl::StrCat("'", walked, "' is not a directory"));
      return ErrnoError(err, absl::StrCat(path_, "/", walked), "cannot open");
    }
    dir = std::move(next);
  }
  return absl::StrCat(path_, "/", name);
}

absl::StatusOr<std::string> NameUnderRoot(const std::string& root, const std::string& path) {
  const fs::path r = fs::absolute(root).lexically_normal();
  const fs::path p = fs::absolute(path).lexically_normal();
  const fs::path rel = p.lexically_relative(r);
  std::string name = rel.generic_string();
  while (!name.empty() && name.back() == '/') name.pop_back();
  if (rel.empty() || name.empty() || name == "." || *rel.begin() == "..") {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not below the checkpoint root ", root));
  }
  return name;
}

absl::Status ReadFramed(const std::string& dir, const FrameKind& kind, google::protobuf::MessageLite* message) {
  const std::string path = JoinPath(dir, kManifestName);
  int raw = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (raw < 0) {
    if (errno == ENOENT) {
      return absl::NotFoundError(
          absl::StrCat(path, ": no MANIFEST: the ", kind.dir_what, " is incomplete or not a ", kind.dir_what));
    }
    return ErrnoError(errno, path, "cannot open");
  }
  Fd fd(raw);
  absl::StatusOr<uint64_t> size = FileSize(fd.get(), path);
  if (!size.ok()) return size.status();
  if (*size > (uint64_t{1} << 30)) {
    return absl::DataLossError(absl::StrCat(path, ": ", *size, " bytes, too large for a ", kind.what));
  }
  std::string bytes(*size, '\0');
  size_t got = 0;
  if (absl::Status st = PreadAll(fd.get(), bytes.data(), bytes.size(), 0, path, &got); !st.ok()) return st;
  bytes.resize(got);

  const size_t magic_seen = std::min<size_t>(bytes.size(), 8);
  if (std::memcmp(bytes.data(), kind.magic, magic_seen) != 0) {
    return absl::DataLossError(absl::StrCat(path, ": bad magic: not an ember ", kind.what));
  }
  if (bytes.size() < kFrameHeader) {
    return absl::DataLossError(
        absl::StrCat(path, ": truncated: ", bytes.size(), " bytes, shorter than the ", kFrameHeader, "-byte header"));
  }
  const uint32_t version = GetU32(bytes.data() + 8);
  const uint32_t crc = GetU32(bytes.data() + 12);
  const uint64_t length = GetU64(bytes.data() + 16);
  if (version != kind.version) {
    return absl::FailedPreconditionError(absl::StrCat(path, ": ", kind.dir_what, " format version ", version,
                                                      ", this build reads version ", kind.version));
  }
  const uint64_t have = bytes.size() - kFrameHeader;
  if (length > have) {
    return absl::DataLossError(absl::StrCat(path, ": truncated: ", have, " payload bytes, header says ", length));
  }
  if (length < have) {
    return absl::DataLossError(
        absl::StrCat(path, ": ", have - length, " unexpected bytes after the ", length, "-byte payload"));
  }
  const char* payload = bytes.data() + kFrameHeader;
  const uint32_t actual = Crc32c(payload, length);
  if (actual != crc) {
    return absl::DataLossError(
        absl::StrCat(path, ": checksum mismatch (crc ", CrcHex(actual), ", header says ", CrcHex(crc), ")"));
  }
  if (!message->ParseFromArray(payload, static_cast<int>(length))) {
    return absl::DataLossError(absl::StrCat(path, ": the payload does not parse as a ", kind.what));
  }
  return absl::OkStatus();
}

namespace {
constexpr FrameKind kCheckpointFrame{"EMBERCKP", kCheckpointFormatVersion, "checkpoint manifest", "checkpoint"};
}  // namespace

absl::Status WriteManifest(const std::string& dir, const proto::CheckpointManifest& manifest) {
  if (manifest.format_version() != kCheckpointFormatVersion) {
    return absl::InvalidArgumentError(absl::StrCat(JoinPath(dir, kManifestName), ": manifest.format_version is ",
                                                   manifest.format_version(), ", this build writes version ",
                                                   kCheckpointFormatVersion));
  }
  return WriteFramed(dir, kCheckpointFrame, manifest);
}

absl::StatusOr<proto::CheckpointManifest> ReadManifest(const std::string& dir) {
  proto::CheckpointManifest manifest;
  if (absl::Status st = ReadFramed(dir, kCheckpointFrame, &manifest); !st.ok()) return st;
  if (manifest.format_version() != kCheckpointFormatVersion) {
    return absl::FailedPreconditionError(absl::StrCat(JoinPath(dir, kManifestName), ": manifest format_version ",
                                                      manifest.format_version(), ", this build reads version ",
                                                      kCheckpointFormatVersion));
  }
  return manifest;
}

std::vector<proto::CheckpointSummary> ListCheckpoints(const std::string& root) {
  std::vector<proto::CheckpointSummary> out;
  std::error_code ec;
  for (fs::directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    const uint64_t id = CheckpointIdOf(name);
    std::error_code type_ec;
    if (id == 0 || !it->is_directory(type_ec)) continue;
    proto::CheckpointSummary s;
    s.set_id(id);
    s.set_dir(it->path().string());
    absl::StatusOr<proto::CheckpointManifest> m = ReadManifest(s.dir());
    if (m.ok() && m->id() != id) {
      m = absl::DataLossError(
          absl::StrCat(s.dir(), "/", kManifestName, ": manifest id ", m->id(), " does not match the directory name"));
    }
    if (m.ok()) {
      s.set_complete(true);
      s.set_parent_id(m->parent_id());
      s.set_created_unix(m->created_unix());
      uint64_t bytes = 0;
      for (const proto::CheckpointFile& f : m->files()) bytes += f.size();
      s.set_bytes(bytes);
    } else {
      s.set_complete(false);
      s.set_problem(std::string(m.status().message()));
      uint64_t bytes = 0;
      std::error_code fec;
      for (fs::directory_iterator f(s.dir(), fec), fend; !fec && f != fend; f.increment(fec)) {
        std::error_code sec;
        if (f->is_regular_file(sec)) {
          const uintmax_t n = f->file_size(sec);
          if (!sec) bytes += n;
        }
      }
      s.set_bytes(bytes);
    }
    out.push_back(std::move(s));
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.id() < b.id(); });
  return out;
}

absl::Status WalkCheckpointChain(const std::string& dir,
                                 absl::FunctionRef<absl::StatusOr<ChainLink>(const std::string& dir)> visit) {
  fs::path here = fs::path(dir).lexically_normal();
  if (!here.has_filename()) here = here.parent_path();  // "ckpt-00000007/"
  const fs::path root = here.parent_path();
  std::string at = dir;
  uint64_t id = 0;  // the id `at` stands for; 0 until the first visit says
  for (;;) {
    absl::StatusOr<ChainLink> link = visit(at);
    if (!link.ok()) return link.status();
    if (id == 0) id = link->id;
    if (link->parent_id == 0) return absl::OkStatus();
    if (link->parent_id >= id) {
      return absl::DataLossError(
          absl::StrCat(at, ": checkpoint ", id, " names parent ", link->parent_id, ", which is not older"));
    }
    id = link->parent_id;
    at = (root / CheckpointDirName(id)).string();
  }
}

absl::StatusOr<std::string> LatestCheckpoint(const std::string& root) {
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return absl::NotFoundError(absl::StrCat(root, ": no such directory"));
  std::vector<proto::CheckpointSummary> all = ListCheckpoints(root);
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    if (it->complete()) return it->dir();
  }
  return absl::NotFoundError(
      absl::StrCat(root, ": no complete checkpoint (", all.size(), " ckpt-* directories without a readable MANIFEST)"));
}

absl::Status PruneCheckpoints(const std::string& root, uint32_t keep) {
  if (keep == 0) return absl::InvalidArgumentError(absl::StrCat(root, ": prune needs keep >= 1"));
  std::vector<proto::CheckpointSummary> all = ListCheckpoints(root);
  std::map<uint64_t, const proto::CheckpointSummary*> by_id;
  for (const auto& s : all) by_id[s.id()] = &s;

  // Walks from the newest complete checkpoint down, keeping each one and its
  // chain of parents, until `keep` of them are restorable. One whose chain is
  // broken (a parent missing or unreadable) is kept with what remains of its
  // chain, for someone to look at, but does not count: the older checkpoints
  // behind it may be the ones a restore falls back to.
  std::set<uint64_t> needed;
  uint64_t newest_complete = 0;
  uint32_t kept = 0;
  for (auto it = all.rbegin(); it != all.rend() && kept < keep; ++it) {
    if (!it->complete()) continue;
    if (newest_complete == 0) newest_complete = it->id();
    // The summaries already hold each manifest's parent: no need to reread.
    const absl::Status chain = WalkCheckpointChain(it->dir(), [&](const std::string& dir) -> absl::StatusOr<ChainLink> {
      const uint64_t id = CheckpointIdOf(fs::path(dir).filename().string());
      needed.insert(id);
      auto p = by_id.find(id);
      if (p == by_id.end() || !p->second->complete()) return absl::NotFoundError(absl::StrCat(dir, ": unusable"));
      return ChainLink{id, p->second->parent_id()};
    });
    if (chain.ok()) ++kept;
  }
  if (newest_complete == 0) return absl::OkStatus();  // nothing complete: maybe a first save in progress

  absl::Status result;
  for (const auto& s : all) {
    if (needed.count(s.id()) > 0) continue;
    // Incomplete directories newer than the newest complete checkpoint may be
    // saves in progress.
    if (!s.complete() && s.id() > newest_complete) continue;
    std::error_code ec;
    // The MANIFEST goes first, so that a crash mid-removal leaves an
    // incomplete directory rather than a complete-looking one without data.
    fs::remove(fs::path(s.dir()) / kManifestName, ec);
    if (!ec) fs::remove_all(s.dir(), ec);
    if (ec && result.ok()) {
      result = absl::ErrnoToStatus(ec.value(), absl::StrCat(s.dir(), ": cannot remove"));
    }
  }
  return result;
}

absl::Status VerifyFile(const std::string& dir, const proto::CheckpointFile& file, bool check_crc) {
  if (absl::Status st = CheckFileName(dir, file.name()); !st.ok()) return st;
  const std::string path = JoinPath(dir, file.name());
  absl::StatusOr<int> raw = OpenForRead(path);
  if (!raw.ok()) return raw.status();
  Fd fd(*raw);
  absl::StatusOr<uint64_t> size = FileSize(fd.get(), path);
  if (!size.ok()) return size.status();
  if (*size < file.size()) return absl::DataLossError(TruncatedMessage(path, *size, file.size()));
  if (*size > file.size()) {
    return absl::DataLossError(absl::StrCat(path, ": size mismatch: ", *size, " bytes, manifest says ", file.size()));
  }
  if (!check_crc) return absl::OkStatus();
  constexpr size_t kChunk = size_t{1} << 20;
  std::string buf(kChunk, '\0');
  uint32_t crc = 0;
  uint64_t offset = 0;
  while (offset < file.size()) {
    const size_t want = static_cast<size_t>(std::min<uint64_t>(kChunk, file.size() - offset));
    size_t got = 0;
    if (absl::Status st = PreadAll(fd.get(), buf.data(), want, offset, path, &got); !st.ok()) return st;
    if (got < want) return absl::DataLossError(TruncatedMessage(path, offset + got, file.size()));
    crc = Crc32c(buf.data(), got, crc);
    offset += got;
  }
  if (crc != file.crc32c()) {
    return absl::DataLossError(absl::StrCat(path, ": checksum mismatch at offset 0 (whole file of ", file.size(),
                                            " bytes: crc ", CrcHex(crc), ", manifest says ", CrcHex(file.crc32c()), ")"));
  }
  return absl::OkStatus();
}

absl::Status ReadBlock(const std::string& dir, const std::string& file, uint64_t offset, uint64_t bytes, uint32_t crc,
                       std::string* out) {
  if (absl::Status st = CheckFileName(dir, file); !st.ok()) return st;
  const std::string path = JoinPath(dir, file);
  absl::StatusOr<int> raw = OpenForRead(path);
  if (!raw.ok()) return raw.status();
  Fd fd(*raw);
  absl::StatusOr<uint64_t> size = FileSize(fd.get(), path);
  if (!size.ok()) return size.status();
  if (bytes > *size || offset > *size - bytes) {
    return absl::DataLossError(absl::StrCat(path, ": truncated: ", *size, " bytes, manifest says a block at offset ",
                                            offset, " of ", bytes, " bytes"));
  }
  out->resize(bytes);
  size_t got = 0;
  if (absl::Status st = PreadAll(fd.get(), out->data(), bytes, offset, path, &got); !st.ok()) return st;
  if (got < bytes) {
    return absl::DataLossError(absl::StrCat(path, ": truncated: ", offset + got,
                                            " bytes, manifest says a block at offset ", offset, " of ", bytes,
                                            " bytes"));
  }
  const uint32_t actual = Crc32c(out->data(), out->size());
  if (actual != crc) {
    return absl::DataLossError(absl::StrCat(path, ": checksum mismatch at offset ", offset, " (block of ", bytes,
                                            " bytes: crc ", CrcHex(actual), ", manifest says ", CrcHex(crc), ")"));
  }
  return absl::OkStatus();
}

namespace {

// The size m lists for `file`, or DATA_LOSS naming what refers to it.
absl::StatusOr<uint64_t> ListedSize(const std::string& dir, const proto::CheckpointManifest& m,
                                    const std::string& file, const std::string& what) {
  for (const proto::CheckpointFile& f : m.files()) {
    if (f.name() == file) return f.size();
  }
  return absl::DataLossError(absl::StrCat(dir, ": ", what, " is in ", file, ", which the manifest does not list"));
}

// True if [offset, offset + bytes) lies within [0, size).
bool Within(uint64_t offset, uint64_t bytes, uint64_t size) { return bytes <= size && offset <= size - bytes; }

}  // namespace

absl::Status CheckTableRowBytes(const std::string& dir, const proto::CheckpointTable& t) {
  const uint64_t need = sizeof(RowMeta) + 4 * (uint64_t{t.dim()} + t.state_floats());
  if (t.row_bytes() < need || t.row_bytes() % 8 != 0) {
    return absl::DataLossError(absl::StrCat(dir, ": table ", t.name(), ": field row_bytes: ", t.row_bytes(),
                                            " does not hold ", sizeof(RowMeta), " + 4 x (dim ", t.dim(), " + state ",
                                            t.state_floats(), ") bytes in multiples of 8"));
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> CheckShardBlock(const std::string& dir, const proto::CheckpointManifest& m,
                                         const proto::ShardBlock& b) {
  const std::string what = absl::StrCat("block of table ", b.table(), " shard ", b.shard());
  if (b.table() >= static_cast<uint32_t>(m.tables_size())) {
    return absl::DataLossError(absl::StrCat(dir, ": ", what, " in ", b.file(), ": field table: ", b.table(),
                                            ", the manifest has ", m.tables_size(), " tables"));
  }
  if (b.shard() >= m.num_logical_shards()) {
    return absl::DataLossError(absl::StrCat(dir, ": ", what, " in ", b.file(), ": field shard: ", b.shard(),
                                            ", the manifest has ", m.num_logical_shards(), " logical shards"));
  }
  const proto::CheckpointTable& t = m.tables(b.table());
  if (absl::Status st = CheckTableRowBytes(dir, t); !st.ok()) return st;
  uint64_t rows_bytes = 0, tomb_bytes = 0, bytes = 0;
  if (__builtin_mul_overflow(b.rows(), uint64_t{t.row_bytes()}, &rows_bytes) ||
      __builtin_mul_overflow(b.tombstones(), uint64_t{8}, &tomb_bytes) ||
      __builtin_add_overflow(rows_bytes, tomb_bytes, &bytes)) {
    return absl::DataLossError(absl::StrCat(dir, ": ", what, " in ", b.file(), ": fields rows ", b.rows(),
                                            " and tombstones ", b.tombstones(), ": the size overflows"));
  }
  absl::StatusOr<uint64_t> size = ListedSize(dir, m, b.file(), what);
  if (!size.ok()) return size.status();
  if (!Within(b.offset(), bytes, *size)) {
    return absl::DataLossError(absl::StrCat(dir, ": ", what, " in ", b.file(), ": fields offset ", b.offset(),
                                            ", rows ", b.rows(), " and tombstones ", b.tombstones(), ": ", bytes,
                                            " bytes do not fit in the file's ", *size));
  }
  return bytes;
}

absl::Status CheckDenseBlock(const std::string& dir, const proto::CheckpointManifest& m, const proto::DenseBlock& d) {
  const std::string what = absl::StrCat("dense block at ", d.offset());
  if (d.length() > m.dense_total() || d.offset() > m.dense_total() - d.length()) {
    return absl::DataLossError(absl::StrCat(dir, ": ", what, " in ", d.file(), ": fields offset ", d.offset(),
                                            " and length ", d.length(), ": outside the ", m.dense_total(),
                                            " dense parameters"));
  }
  if (d.trained() > d.length()) {
    return absl::DataLossError(absl::StrCat(dir, ": ", what, " in ", d.file(), ": field trained: ", d.trained(),
                                            " of ", d.length(), " entries"));
  }
  if (d.bytes() / 4 < d.length()) {
    return absl::DataLossError(absl::StrCat(dir, ": ", what, " in ", d.file(), ": field bytes: ", d.bytes(),
                                            " cannot hold ", d.length(), " weights"));
  }
  absl::StatusOr<uint64_t> size = ListedSize(dir, m, d.file(), what);
  if (!size.ok()) return size.status();
  if (!Within(d.file_offset(), d.bytes(), *size)) {
    return absl::DataLossError(absl::StrCat(dir, ": ", what, " in ", d.file(), ": fields file_offset ",
                                            d.file_offset(), " and bytes ", d.bytes(), ": do not fit in the file's ",
                                            *size));
  }
  return absl::OkStatus();
}

absl::Status CheckDenseOverlaps(const std::string& dir, const proto::CheckpointManifest& m) {
  std::vector<std::pair<uint64_t, uint64_t>> spans;  // [begin, end), each checked by CheckDenseBlock
  for (const proto::DenseBlock& d : m.dense()) {
    if (d.length() > m.dense_total() || d.offset() > m.dense_total() - d.length()) continue;
    spans.emplace_back(d.offset(), d.offset() + d.length());
  }
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size(); ++i) {
    if (spans[i].first < spans[i - 1].second) {
      return absl::DataLossError(absl::StrCat(dir, ": dense blocks [", spans[i - 1].first, ", ", spans[i - 1].second,
                                              ") and [", spans[i].first, ", ", spans[i].second, ") overlap"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckManifestBounds(const std::string& dir, const proto::CheckpointManifest& m) {
  for (const proto::ShardBlock& b : m.blocks()) {
    if (absl::StatusOr<uint64_t> bytes = CheckShardBlock(dir, m, b); !bytes.ok()) return bytes.status();
  }
  for (const proto::DenseBlock& d : m.dense()) {
    if (absl::Status st = CheckDenseBlock(dir, m, d); !st.ok()) return st;
  }
  return CheckDenseOverlaps(dir, m);
}

// ---------------------------------------------------------------------------
// DataFileWriter.

namespace {
constexpr size_t kBufferBytes = size_t{1} << 20;
}  // namespace

absl::StatusOr<std::unique_ptr<DataFileWriter>> DataFileWriter::Create(const std::string& dir, const std::string& name,
                                                                       uint64_t bytes_per_sec) {
  if (absl::Status st = CheckFileName(dir, name); !st.ok()) return st;
  std::string path = JoinPath(dir, name);
  // Always a new file: an existing one (or a symlink planted under the name)
  // is refused, never truncated or written through.
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0) return ErrnoError(errno, path, errno == EEXIST ? "cannot create: already exists" : "cannot create");
  return std::unique_ptr<DataFileWriter>(new DataFileWriter(std::move(path), name, fd, bytes_per_sec));
}

DataFileWriter::DataFileWriter(std::string path, std::string name, int fd, uint64_t bytes_per_sec)
    : path_(std::move(path)), name_(std::move(name)), fd_(fd), bytes_per_sec_(bytes_per_sec), start_ns_(NowNs()) {
  buffer_.reserve(kBufferBytes);
}

DataFileWriter::~DataFileWriter() {
  if (!finished_) {
    // Abandoned (an error, or the caller gave up): the partial file is of no
    // use to anyone and may be what filled the disk.
    if (fd_ >= 0) ::close(fd_);
    ::unlink(path_.c_str());
  }
}

uint64_t DataFileWriter::BeginBlock() {
  block_crc_ = 0;
  return size_;
}

absl::Status DataFileWriter::Append(const void* data, size_t n) {
  if (!error_.ok()) return error_;
  if (finished_) return absl::FailedPreconditionError(absl::StrCat(path_, ": Append after Finish"));
  block_crc_ = Crc32c(data, n, block_crc_);
  const char* p = static_cast<const char*>(data);
  size_ += n;
  while (n > 0) {
    const size_t take = std::min(n, kBufferBytes - buffer_.size());
    buffer_.append(p, take);
    p += take;
    n -= take;
    if (buffer_.size() == kBufferBytes) {
      if (absl::Status st = Flush(); !st.ok()) return st;
    }
  }
  return absl::OkStatus();
}

uint32_t DataFileWriter::EndBlock() { return block_crc_; }

absl::Status DataFileWriter::Flush() {
  if (buffer_.empty()) return absl::OkStatus();
  file_crc_ = Crc32c(buffer_.data(), buffer_.size(), file_crc_);
  error_ = WriteAll(fd_, buffer_.data(), buffer_.size(), path_);
  if (!error_.ok()) return error_;
  written_ += buffer_.size();
  buffer_.clear();
  if (bytes_per_sec_ > 0) {
    // Sleep until written_ / elapsed <= bytes_per_sec_.
    const long double min_ns = static_cast<long double>(written_) * 1e9L / static_cast<long double>(bytes_per_sec_);
    const int64_t ahead = static_cast<int64_t>(min_ns) - (NowNs() - start_ns_);
    if (ahead > 0) std::this_thread::sleep_for(std::chrono::nanoseconds(ahead));
  }
  return absl::OkStatus();
}

absl::StatusOr<proto::CheckpointFile> DataFileWriter::Finish() {
  if (!error_.ok()) return error_;
  if (finished_) return absl::FailedPreconditionError(absl::StrCat(path_, ": Finish called twice"));
  if (absl::Status st = Flush(); !st.ok()) return st;
  if (::fdatasync(fd_) != 0) {
    error_ = ErrnoError(errno, path_, "fdatasync failed");
    return error_;
  }
  const int r = ::close(fd_);
  fd_ = -1;
  if (r != 0) {
    error_ = ErrnoError(errno, path_, "close failed");
    return error_;
  }
  finished_ = true;
  proto::CheckpointFile f;
  f.set_name(name_);
  f.set_size(size_);
  f.set_crc32c(file_crc_);
  return f;
}

}  // namespace ember::storage
