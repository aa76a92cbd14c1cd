// Helpers shared by the libFuzzer targets of tests/fuzz (docs/fuzzing.md):
// cutting an input into length-prefixed pieces, a scratch directory, and
// writing seed files.
#ifndef EMBER_TESTS_FUZZ_FUZZ_UTIL_H_
#define EMBER_TESTS_FUZZ_FUZZ_UTIL_H_

#include <stdlib.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

namespace ember::fuzz {

// Reads an input front to back. Take(n) returns the next min(n, left) bytes;
// Piece() returns a piece prefixed by a little-endian uint32 length (clamped
// to what is left), so that any input cuts into pieces.
class Cutter {
 public:
  Cutter(const uint8_t* data, size_t size) : p_(reinterpret_cast<const char*>(data)), left_(size) {}
  bool empty() const { return left_ == 0; }
  size_t left() const { return left_; }
  std::string_view Take(size_t n) {
    n = n < left_ ? n : left_;
    std::string_view v(p_, n);
    p_ += n;
    left_ -= n;
    return v;
  }
  uint32_t U32() {
    uint32_t v = 0;
    std::string_view b = Take(4);
    std::memcpy(&v, b.data(), b.size());
    return v;
  }
  uint8_t U8() {
    std::string_view b = Take(1);
    return b.empty() ? 0 : static_cast<uint8_t>(b[0]);
  }
  std::string_view Piece() { return Take(U32()); }
  std::string_view Rest() { return Take(left_); }

 private:
  const char* p_;
  size_t left_;
};

// Appends `piece` with its uint32 length prefix (the inverse of Piece()).
inline void AppendPiece(std::string* out, std::string_view piece) {
  const uint32_t n = static_cast<uint32_t>(piece.size());
  out->append(reinterpret_cast<const char*>(&n), 4);
  out->append(piece);
}

// A fresh directory under $TMPDIR (or /tmp), removed by the destructor. The
// targets keep theirs in objects never destroyed (libFuzzer exits from any
// thread), so run.sh points TMPDIR into its scratch directory and removes it.
class ScratchDir {
 public:
  ScratchDir() {
    const char* tmp = getenv("TMPDIR");
    std::string tmpl = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/ember_fuzz.XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) {
      std::perror("mkdtemp");
      std::abort();
    }
    path_ = tmpl;
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

inline void WriteFile(const std::string& path, std::string_view bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// If EMBER_FUZZ_WRITE_SEEDS names a directory, the target writes its seed
// corpus there (name -> bytes) at start-up and exits: how the committed
// corpora of the targets with binary inputs were made.
inline const char* SeedDir() { return getenv("EMBER_FUZZ_WRITE_SEEDS"); }

}  // namespace ember::fuzz

#endif  // EMBER_TESTS_FUZZ_FUZZ_UTIL_H_
