#include "scheduler/chunks.h"

#include <stdlib.h>
#include <unistd.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "worker/chunk_reader.h"

namespace ember::scheduler {
namespace {

using Lines = std::vector<std::pair<uint64_t, std::string>>;

class ChunksTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/ember_chunks_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Write(const std::string& name, const std::string& content) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary) << content;
    return path;
  }

  // Lines of `text` split on '\n' and numbered from 1.
  static Lines Split(const std::string& text) {
    Lines lines;
    size_t pos = 0;
    while (pos < text.size()) {
      size_t nl = text.find('\n', pos);
      if (nl == std::string::npos) nl = text.size();
      lines.emplace_back(lines.size() + 1, text.substr(pos, nl - pos));
      pos = nl + 1;
    }
    return lines;
  }

  // All lines of `chunks` as ChunkReader returns them, in chunk order.
  static Lines ReadChunks(const std::vector<proto::Chunk>& chunks) {
    Lines lines;
    for (const proto::Chunk& c : chunks) {
      absl::StatusOr<std::unique_ptr<worker::ChunkReader>> reader = worker::ChunkReader::Open(c);
      EXPECT_TRUE(reader.ok()) << reader.status();
      if (!reader.ok()) return lines;
      std::string_view line;
      uint64_t number;
      while ((*reader)->Next(&line, &number)) lines.emplace_back(number, std::string(line));
      EXPECT_TRUE((*reader)->status().ok()) << (*reader)->status();
    }
    return lines;
  }

  // Checks the chunks of one plain file: contiguous cover of [0, size),
  // each cut just after the first '\n' at or past begin + chunk_bytes - 1,
  // and the lines read back equal a plain split with the right numbers.
  static void CheckPlainFile(const std::string& text, const std::vector<proto::Chunk>& chunks,
                             uint64_t chunk_bytes) {
    if (text.empty()) {
      EXPECT_TRUE(chunks.empty());
      return;
    }
    ASSERT_FALSE(chunks.empty());
    uint64_t begin = 0;
    for (size_t i = 0; i < chunks.size(); ++i) {
      const proto::Chunk& c = chunks[i];
      EXPECT_FALSE(c.gzip());
      EXPECT_EQ(c.begin(), begin) << "chunk " << i;
      ASSERT_GT(c.end(), c.begin()) << "chunk " << i;
      ASSERT_LE(c.end(), text.size());
      const bool last = i + 1 == chunks.size();
      if (!last) {
        EXPECT_EQ(text[c.end() - 1], '\n') << "chunk " << i << " is not line-aligned";
      }
      // No newline between the target size and the cut (the cut is the first
      // one possible); a chunk ends early only at the end of the file.
      const uint64_t from = c.begin() + chunk_bytes - 1;
      if (from < c.end() - 1) {
        EXPECT_EQ(text.find('\n', from),
                  last && text.back() != '\n' ? std::string::npos : c.end() - 1)
            << "chunk " << i;
      }
      if (!last) {
        EXPECT_GE(c.end() - c.begin(), chunk_bytes);
      }
      // first_line: one more than the newlines before the chunk.
      EXPECT_EQ(c.first_line(), 1u + std::count(text.begin(), text.begin() + c.begin(), '\n'))
          << "chunk " << i;
      begin = c.end();
    }
    EXPECT_EQ(begin, text.size());
    EXPECT_EQ(ReadChunks(chunks), Split(text));
  }

  std::string dir_;
};

std::string RandomText(std::mt19937_64& rng, size_t bytes, size_t max_line) {
  std::string text;
  while (text.size() < bytes) {
    const size_t len = rng() % (max_line + 1);
    for (size_t k = 0; k < len; ++k) text.push_back('a' + rng() % 26);
    text.push_back('\n');
  }
  text.resize(bytes);  // may cut the last line short: no final '\n'
  return text;
}

TEST_F(ChunksTest, RandomFilesAreCoveredExactlyOnceAtLineBoundaries) {
  std::mt19937_64 rng(1);
  for (int round = 0; round < 60; ++round) {
    const size_t bytes = rng() % 20000;
    const size_t max_line = rng() % 3 == 0 ? 2 : rng() % 2 ? 80 : 5000;
    const std::string text = RandomText(rng, bytes, max_line);
    const std::string path = Write(absl::StrCat("f", round), text);
    for (uint64_t chunk_bytes : {uint64_t{1}, uint64_t{2}, uint64_t{97}, uint64_t{4096},
                                 uint64_t{1} << 40, ~uint64_t{0}}) {
      SCOPED_TRACE(absl::StrCat("round ", round, " bytes ", bytes, " chunk_bytes ", chunk_bytes));
      absl::StatusOr<std::vector<proto::Chunk>> chunks = CutChunks({path}, chunk_bytes);
      ASSERT_TRUE(chunks.ok()) << chunks.status();
      for (size_t i = 0; i < chunks->size(); ++i) {
        EXPECT_EQ((*chunks)[i].id(), i);
        EXPECT_EQ((*chunks)[i].path(), path);
      }
      CheckPlainFile(text, *chunks, chunk_bytes);
    }
  }
}

TEST_F(ChunksTest, BoundariesAcrossLargeReads) {
  // Larger than the cutter's 4 MiB read buffer, so cuts and line counts cross reads.
  std::mt19937_64 rng(2);
  const std::string text = RandomText(rng, (size_t{9} << 20) + 12345, 300);
  const std::string path = Write("big", text);
  for (uint64_t chunk_bytes : {(uint64_t{1} << 20) + 17, uint64_t{4} << 20}) {
    absl::StatusOr<std::vector<proto::Chunk>> chunks = CutChunks({path}, chunk_bytes);
    ASSERT_TRUE(chunks.ok()) << chunks.status();
    CheckPlainFile(text, *chunks, chunk_bytes);
  }
}

TEST_F(ChunksTest, SeveralFilesGzipAndEmpty) {
  const std::string a = Write("a", "1\n22\n333\n4444\n");
  const std::string empty = Write("empty", "");
  const std::string gz = dir_ + "/c.gz";
  gzFile f = gzopen(gz.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  gzputs(f, "g1\ng2\n");
  ASSERT_EQ(gzclose(f), Z_OK);
  const std::string empty_gz = Write("d.gz", "");
  const std::string b = Write("b", "x\ny");

  absl::StatusOr<std::vector<proto::Chunk>> chunks = CutChunks({a, empty, gz, empty_gz, b}, 5);
  ASSERT_TRUE(chunks.ok()) << chunks.status();
  // a: [0,5) = lines 1-2 (first '\n' at or after byte 0 + 5 - 1 is byte 4),
  // then [5,14) = lines 3-4 (the '\n' at byte 8 would leave a 4-byte chunk;
  // the first at or after byte 9 is byte 13); c.gz; b.
  ASSERT_EQ(chunks->size(), 4u);
  for (size_t i = 0; i < chunks->size(); ++i) EXPECT_EQ((*chunks)[i].id(), i);
  EXPECT_EQ((*chunks)[0].end(), 5u);
  EXPECT_EQ((*chunks)[1].begin(), 5u);
  EXPECT_EQ((*chunks)[1].end(), 14u);
  EXPECT_EQ((*chunks)[1].first_line(), 3u);
  const proto::Chunk& g = (*chunks)[2];
  EXPECT_EQ(g.path(), gz);
  EXPECT_TRUE(g.gzip());
  EXPECT_EQ(g.begin(), 0u);
  EXPECT_EQ(g.end(), std::filesystem::file_size(gz));
  EXPECT_EQ(g.first_line(), 1u);
  EXPECT_EQ((*chunks)[3].path(), b);
  EXPECT_EQ(ReadChunks({g}), (Lines{{1, "g1"}, {2, "g2"}}));
  EXPECT_EQ(ReadChunks({(*chunks)[3]}), (Lines{{1, "x"}, {2, "y"}}));
}

TEST_F(ChunksTest, Errors) {
  EXPECT_EQ(CutChunks({Write("a", "x\n")}, 0).status().code(), absl::StatusCode::kInvalidArgument);
  const std::string missing = dir_ + "/missing";
  absl::StatusOr<std::vector<proto::Chunk>> chunks = CutChunks({missing}, 10);
  EXPECT_EQ(chunks.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(chunks.status().message().find(missing), absl::string_view::npos) << chunks.status();
  chunks = CutChunks({missing + ".gz"}, 10);
  EXPECT_NE(chunks.status().message().find(missing + ".gz"), absl::string_view::npos)
      << chunks.status();
}

TEST_F(ChunksTest, ListDataFiles) {
  Write("b.txt", "1\n");
  Write("a.txt", "1\n");
  Write("c.gz", "1\n");
  Write(".hidden", "1\n");
  std::filesystem::create_directory(dir_ + "/sub.txt");
  std::filesystem::create_symlink(dir_ + "/a.txt", dir_ + "/link.txt");

  absl::StatusOr<std::vector<std::string>> files = ListDataFiles(dir_);
  ASSERT_TRUE(files.ok()) << files.status();
  EXPECT_EQ(*files, (std::vector<std::string>{dir_ + "/a.txt", dir_ + "/b.txt", dir_ + "/c.gz",
                                              dir_ + "/link.txt"}));
  files = ListDataFiles(dir_ + "/");
  ASSERT_TRUE(files.ok()) << files.status();
  EXPECT_EQ(files->size(), 4u);

  files = ListDataFiles(dir_ + "/*.txt");
  ASSERT_TRUE(files.ok()) << files.status();
  EXPECT_EQ(*files,
            (std::vector<std::string>{dir_ + "/a.txt", dir_ + "/b.txt", dir_ + "/link.txt"}));
  files = ListDataFiles(dir_ + "/[ab].*");
  ASSERT_TRUE(files.ok()) << files.status();
  EXPECT_EQ(files->size(), 2u);

  files = ListDataFiles(dir_ + "/c.gz");
  ASSERT_TRUE(files.ok()) << files.status();
  EXPECT_EQ(*files, (std::vector<std::string>{dir_ + "/c.gz"}));
}

TEST_F(ChunksTest, ListDataFilesErrorsNameTheSpec) {
  for (const std::string& spec : {dir_ + "/nothing", dir_ + "/*.none", dir_ + "/empty"}) {
    if (spec == dir_ + "/empty") std::filesystem::create_directory(spec);
    absl::StatusOr<std::vector<std::string>> files = ListDataFiles(spec);
    EXPECT_EQ(files.status().code(), absl::StatusCode::kNotFound) << spec;
    EXPECT_NE(files.status().message().find(spec), absl::string_view::npos) << files.status();
  }
  // A directory holding only hidden files and subdirectories has no data.
  Write("empty/.x", "1\n");
  std::filesystem::create_directory(dir_ + "/empty/sub");
  EXPECT_EQ(ListDataFiles(dir_ + "/empty").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ListDataFiles("").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ember::scheduler
