#include "worker/chunk_reader.h"

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
#include "proto/config.h"

namespace ember::worker {
namespace {

class ChunkReaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/ember_chunk_reader_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Write(const std::string& name, const std::string& content) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary) << content;
    return path;
  }

  std::string WriteGzip(const std::string& name, const std::string& content) {
    const std::string path = dir_ + "/" + name;
    gzFile gz = gzopen(path.c_str(), "wb");
    EXPECT_NE(gz, nullptr);
    if (!content.empty()) {
      EXPECT_EQ(gzwrite(gz, content.data(), content.size()), static_cast<int>(content.size()));
    }
    EXPECT_EQ(gzclose(gz), Z_OK);
    return path;
  }

  static std::string ReadRaw(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

  static proto::Chunk Chunk(const std::string& path, uint64_t begin, uint64_t end,
                            uint64_t first_line = 1, bool gzip = false) {
    proto::Chunk c;
    c.set_id(7);
    c.set_path(path);
    c.set_begin(begin);
    c.set_end(end);
    c.set_first_line(first_line);
    c.set_gzip(gzip);
    return c;
  }

  // Every line of `chunk` as (line number, text), and the final status.
  struct Result {
    std::vector<std::pair<uint64_t, std::string>> lines;
    absl::Status status;
    uint64_t bytes = 0;
  };
  static Result ReadAll(const proto::Chunk& chunk,
                        const ChunkReader::Options& options = ChunkReader::Options()) {
    Result r;
    absl::StatusOr<std::unique_ptr<ChunkReader>> reader = ChunkReader::Open(chunk, options);
    if (!reader.ok()) {
      r.status = reader.status();
      return r;
    }
    std::string_view line;
    uint64_t number = 0;
    while ((*reader)->Next(&line, &number)) r.lines.emplace_back(number, std::string(line));
    r.status = (*reader)->status();
    r.bytes = (*reader)->bytes_consumed();
    // Once finished, it stays finished.
    EXPECT_FALSE((*reader)->Next(&line, &number));
    return r;
  }

  // The lines of `text` split on '\n', numbered from 1; a trailing '\n' does
  // not start another line.
  static std::vector<std::pair<uint64_t, std::string>> Split(const std::string& text) {
    std::vector<std::pair<uint64_t, std::string>> lines;
    size_t pos = 0;
    while (pos < text.size()) {
      size_t nl = text.find('\n', pos);
      if (nl == std::string::npos) nl = text.size();
      lines.emplace_back(lines.size() + 1, text.substr(pos, nl - pos));
      pos = nl + 1;
    }
    return lines;
  }

  static std::string RandomText(std::mt19937_64& rng, size_t lines, size_t max_len) {
    std::string text;
    for (size_t i = 0; i < lines; ++i) {
      const size_t len = rng() % (max_len + 1);
      for (size_t k = 0; k < len; ++k) text.push_back("abc\t,|\r x"[rng() % 9]);
      text.push_back('\n');
    }
    return text;
  }

  std::string dir_;
};

using Lines = std::vector<std::pair<uint64_t, std::string>>;

TEST_F(ChunkReaderTest, ExactByteRange) {
  const std::string path = Write("f", "a\nbb\nccc\ndddd\n");
  Result r = ReadAll(Chunk(path, 2, 9, 2));
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.lines, (Lines{{2, "bb"}, {3, "ccc"}}));
  EXPECT_EQ(r.bytes, 7u);
  r = ReadAll(Chunk(path, 9, 14, 4));
  EXPECT_EQ(r.lines, (Lines{{4, "dddd"}}));
  r = ReadAll(Chunk(path, 5, 5, 3));
  ASSERT_TRUE(r.status.ok());
  EXPECT_TRUE(r.lines.empty());
  EXPECT_EQ(r.bytes, 0u);
}

TEST_F(ChunkReaderTest, LastLineWithoutNewlineAndOddLines) {
  const std::string path = Write("f", "x\n\n\r\ny");
  Result r = ReadAll(Chunk(path, 0, 6));
  ASSERT_TRUE(r.status.ok()) << r.status;
  // Empty lines are lines; '\r' is kept for the parser to drop.
  EXPECT_EQ(r.lines, (Lines{{1, "x"}, {2, ""}, {3, "\r"}, {4, "y"}}));
  EXPECT_EQ(r.bytes, 6u);
}

TEST_F(ChunkReaderTest, RandomFilesAndBufferSizes) {
  std::mt19937_64 rng(11);
  for (int round = 0; round < 20; ++round) {
    std::string text = RandomText(rng, rng() % 200, rng() % 2 ? 5 : 300);
    if (round % 3 == 0 && !text.empty()) text.pop_back();  // no final newline
    const std::string path = Write(absl::StrCat("r", round), text);
    for (size_t buffer : {size_t{1}, size_t{7}, size_t{64}, size_t{1} << 20}) {
      ChunkReader::Options options;
      options.buffer_bytes = buffer;
      Result r = ReadAll(Chunk(path, 0, text.size()), options);
      ASSERT_TRUE(r.status.ok()) << r.status;
      EXPECT_EQ(r.lines, Split(text)) << "round " << round << " buffer " << buffer;
      EXPECT_EQ(r.bytes, text.size());
    }
  }
}

TEST_F(ChunkReaderTest, OverlongLineIsAnErrorNamingFileAndLine) {
  const std::string path = Write("long", "ok\n0123456789\n0123456789a\nnever\n");
  ChunkReader::Options options;
  options.max_line_bytes = 10;
  options.buffer_bytes = 4;
  Result r = ReadAll(Chunk(path, 0, 34, 5), options);
  EXPECT_EQ(r.lines, (Lines{{5, "ok"}, {6, "0123456789"}}));
  EXPECT_EQ(r.status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(r.status.message(), path + ":7: line longer than 10 bytes");
  // Also for a last line without '\n', and with a big buffer.
  const std::string tail = Write("tail", "0123456789a");
  options.buffer_bytes = 1 << 20;
  r = ReadAll(Chunk(tail, 0, 11), options);
  EXPECT_EQ(r.status.message(), tail + ":1: line longer than 10 bytes");
}

TEST_F(ChunkReaderTest, FileShorterThanChunk) {
  const std::string path = Write("short", "a\nb\n");
  Result r = ReadAll(Chunk(path, 0, 100));
  EXPECT_EQ(r.lines, (Lines{{1, "a"}, {2, "b"}}));
  EXPECT_EQ(r.status.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(r.status.message().find(path), absl::string_view::npos) << r.status;
}

TEST_F(ChunkReaderTest, OpenErrors) {
  Result r = ReadAll(Chunk(dir_ + "/missing", 0, 10));
  EXPECT_EQ(r.status.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(r.status.message().find(dir_ + "/missing"), absl::string_view::npos) << r.status;
  const std::string path = Write("f", "abc\n");
  EXPECT_EQ(ReadAll(Chunk(path, 3, 2)).status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadAll(Chunk(path, 0, 4, 0)).status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadAll(Chunk(path, 1, 4, 1, true)).status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadAll(Chunk("", 0, 4)).status.code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ChunkReaderTest, GzipRoundTrip) {
  std::mt19937_64 rng(5);
  const std::string text = RandomText(rng, 5000, 80) + "no newline at the end";
  const std::string path = WriteGzip("d.gz", text);
  for (size_t buffer : {size_t{3}, size_t{1} << 20}) {
    ChunkReader::Options options;
    options.buffer_bytes = buffer;
    Result r = ReadAll(Chunk(path, 0, std::filesystem::file_size(path), 1, true), options);
    ASSERT_TRUE(r.status.ok()) << r.status;
    EXPECT_EQ(r.lines, Split(text));
    EXPECT_EQ(r.bytes, text.size());
  }
  // Concatenated members (what `cat a.gz b.gz` gives) read as one stream.
  const std::string second = WriteGzip("e.gz", "tail 1\ntail 2\n");
  const std::string both = Write("both.gz", ReadRaw(path) + ReadRaw(second));
  Result r = ReadAll(Chunk(both, 0, std::filesystem::file_size(both), 1, true));
  ASSERT_TRUE(r.status.ok()) << r.status;
  // The first member's last line has no '\n', so it runs into the second's.
  Lines want = Split(text + "tail 1\ntail 2\n");
  EXPECT_EQ(r.lines, want);
}

TEST_F(ChunkReaderTest, TruncatedOrCorruptGzipIsAnError) {
  std::mt19937_64 rng(6);
  const std::string text = RandomText(rng, 20000, 60);
  const std::string good = ReadRaw(WriteGzip("good.gz", text));
  // Cut in the middle of the data, and cut only the 8-byte trailer (CRC and size).
  for (size_t keep : {good.size() / 2, good.size() - 4}) {
    const std::string path = Write(absl::StrCat("cut", keep, ".gz"), good.substr(0, keep));
    Result r = ReadAll(Chunk(path, 0, keep, 1, true));
    EXPECT_EQ(r.status.code(), absl::StatusCode::kDataLoss) << keep << " " << r.status;
    EXPECT_NE(r.status.message().find(path), absl::string_view::npos) << r.status;
    EXPECT_LT(r.lines.size(), Split(text).size() + (keep == good.size() - 4 ? 1 : 0));
  }
  std::string bad = good;
  for (size_t i = bad.size() / 3; i < bad.size() / 3 + 64; ++i) bad[i] ^= 0x5a;
  const std::string path = Write("bad.gz", bad);
  Result r = ReadAll(Chunk(path, 0, bad.size(), 1, true));
  EXPECT_EQ(r.status.code(), absl::StatusCode::kDataLoss) << r.status;
  EXPECT_NE(r.status.message().find(path), absl::string_view::npos) << r.status;
}

// ReadChunk drives a BatchBuilder over a chunk.
const char kConfig[] = R"(
tables { name: "t" }
data {
  train: "x"
  columns { name: "y" type: LABEL }
  columns { name: "f" type: SPARSE table: "t" }
}
)";

class ReadChunkTest : public ChunkReaderTest {
 protected:
  void SetUp() override {
    ChunkReaderTest::SetUp();
    absl::StatusOr<proto::JobConfig> config = proto::ParseJobConfig(kConfig, "test");
    ASSERT_TRUE(config.ok());
    proto::ShardMap map;
    map.set_num_logical_shards(4);
    for (int i = 0; i < 4; ++i) map.add_server_rank(i % 2);
    builder_ = std::move(*BatchBuilder::Create(*config, map, 2));
  }

  // Runs ReadChunk, recording batches (size, last_of_chunk, chunk_id) and bad lines.
  // With bad_budget >= 0, on_bad refuses the line after that many.
  absl::Status Run(const proto::Chunk& chunk, uint32_t batch_size, int stop_after = -1, int bad_budget = -1) {
    return ReadChunk(
        chunk, *builder_, batch_size,
        [&](models::Batch&& b) {
          batches_.push_back(std::move(b));
          return stop_after < 0 || static_cast<int>(batches_.size()) < stop_after;
        },
        [&](const BadLine& bad) {
          bad_.push_back(bad);
          if (bad_budget >= 0 && static_cast<int>(bad_.size()) > bad_budget) {
            return absl::DataLossError("over budget");
          }
          return absl::OkStatus();
        },
        &stats_);
  }

  std::vector<int> Sizes() const {
    std::vector<int> sizes;
    for (const models::Batch& b : batches_) sizes.push_back(b.size);
    return sizes;
  }

  std::unique_ptr<BatchBuilder> builder_;
  std::vector<models::Batch> batches_;
  std::vector<BadLine> bad_;
  ReadStats stats_;
};

TEST_F(ReadChunkTest, BatchesAndBadLinesWithFileAndLine) {
  // Lines 1-2 belong to another chunk; this one starts at line 3, byte 8.
  const std::string text = "1\tskip\n0\tskip\n1\ta\nbad\n0\tb\n1\tc\n2\td\n0\te\n1\tf";
  const std::string path = Write("data", text);
  const proto::Chunk chunk = Chunk(path, 14, text.size(), 3);
  ASSERT_TRUE(Run(chunk, 2).ok());
  EXPECT_EQ(Sizes(), (std::vector<int>{2, 2, 1}));
  for (size_t i = 0; i < batches_.size(); ++i) {
    EXPECT_EQ(batches_[i].chunk_id, 7u);
    EXPECT_EQ(batches_[i].last_of_chunk, i + 1 == batches_.size());
  }
  EXPECT_EQ(batches_[0].labels, (std::vector<float>{1, 0}));
  EXPECT_EQ(batches_[0].bytes, 4u + 4u);
  ASSERT_EQ(bad_.size(), 2u);
  EXPECT_EQ(bad_[0].path, path);
  EXPECT_EQ(bad_[0].line, 4u);
  EXPECT_EQ(bad_[0].reason, "expected 2 columns, got 1");
  EXPECT_EQ(bad_[1].line, 7u);
  EXPECT_EQ(bad_[1].reason, "column 'y' (#1): label '2' is not in [0, 1]");
  EXPECT_EQ(stats_.lines, 7u);
  EXPECT_EQ(stats_.bad_lines, 2u);
  EXPECT_EQ(stats_.bytes, text.size() - 14);
  EXPECT_EQ(builder_->size(), 0);
}

TEST_F(ReadChunkTest, ChunkEndingAtBatchBoundaryEmitsEmptyLastBatch) {
  const std::string path = Write("data", "1\ta\n0\tb\n1\tc\n0\td\n");
  ASSERT_TRUE(Run(Chunk(path, 0, 16), 2).ok());
  EXPECT_EQ(Sizes(), (std::vector<int>{2, 2, 0}));
  EXPECT_TRUE(batches_.back().last_of_chunk);
  EXPECT_FALSE(batches_[1].last_of_chunk);
  EXPECT_EQ(batches_.back().tables[0].server_begin, (std::vector<uint32_t>{0, 0, 0}));
}

TEST_F(ReadChunkTest, OnlyBadLinesStillFinishTheChunk) {
  const std::string path = Write("data", "x\ny\n");
  ASSERT_TRUE(Run(Chunk(path, 0, 4), 100).ok());
  EXPECT_EQ(Sizes(), (std::vector<int>{0}));
  EXPECT_TRUE(batches_[0].last_of_chunk);
  EXPECT_EQ(bad_.size(), 2u);
}

TEST_F(ReadChunkTest, OnBadCanStopAtOnce) {
  // Every line is bad: with a budget of 2 the third stops the read there.
  const std::string path = Write("data", "x\ny\nz\nw\nv\n");
  absl::Status st = Run(Chunk(path, 0, 10), 100, -1, 2);
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
  EXPECT_EQ(bad_.size(), 3u);
  EXPECT_EQ(stats_.lines, 3u);
  EXPECT_EQ(stats_.bad_lines, 3u);
  EXPECT_TRUE(batches_.empty());  // no final batch: the chunk is not finished
  EXPECT_EQ(builder_->size(), 0);
}

TEST_F(ReadChunkTest, GzipChunk) {
  const std::string path = WriteGzip("d.gz", "1\ta\n0\tb\n1\tc\n");
  ASSERT_TRUE(Run(Chunk(path, 0, std::filesystem::file_size(path), 1, true), 2).ok());
  EXPECT_EQ(Sizes(), (std::vector<int>{2, 1}));
  EXPECT_EQ(stats_.bytes, 12u);
}

TEST_F(ReadChunkTest, EmitCanStop) {
  const std::string path = Write("data", "1\ta\n0\tb\n1\tc\n0\td\n1\te\n");
  EXPECT_EQ(Run(Chunk(path, 0, 20), 1, 2).code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(Sizes(), (std::vector<int>{1, 1}));
  EXPECT_EQ(builder_->size(), 0);
}

TEST_F(ReadChunkTest, IoErrorsEmitNoFinalBatch) {
  EXPECT_EQ(Run(Chunk(dir_ + "/missing", 0, 10), 2).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(batches_.empty());
  std::string gz = ReadRaw(WriteGzip("d.gz", std::string(1 << 16, 'x') + "\n1\ta\n0\tb\n"));
  const std::string path = Write("cut.gz", gz.substr(0, gz.size() - 6));
  absl::Status st = Run(Chunk(path, 0, gz.size() - 6, 1, true), 2);
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
  for (const models::Batch& b : batches_) EXPECT_FALSE(b.last_of_chunk);
  EXPECT_EQ(builder_->size(), 0);
}

TEST_F(ReadChunkTest, RejectsNonEmptyBuilderAndZeroBatch) {
  const std::string path = Write("data", "1\ta\n");
  EXPECT_EQ(Run(Chunk(path, 0, 4), 0).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(builder_->AddLine("1\tq").ok());
  EXPECT_EQ(Run(Chunk(path, 0, 4), 2).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(batches_.empty());
}

}  // namespace
}  // namespace ember::worker
