// libFuzzer target: the log parser and the batch builder (worker/), with the
// schemas of a few example jobs: generated data (examples/local.conf: labels,
// sparse, sequences, dense), MovieLens with DIN (movielens_din.conf:
// multi-value and sequence columns, attention on positional columns),
// long-interest SIM (long_interest_sim.conf: time columns) and census MMoE
// (census_mmoe.conf: several labels).
//
// Input: one byte picks the schema (modulo their number); the rest is log
// text, cut at '\n' into lines, each given to BatchBuilder::AddLine; the
// batch is finished every 32 lines and at the end. A malformed line must be
// refused with a status and leave the batch as it was; nothing may crash.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "glog/logging.h"
#include "models/batch.h"
#include "proto/config.h"
#include "tests/fuzz/fuzz_util.h"
#include "worker/batch_builder.h"
#include "worker/log_parser.h"

namespace ember::fuzz {
namespace {

struct Schema {
  proto::JobConfig config;
  std::unique_ptr<worker::BatchBuilder> builder;
  worker::LogParser parser;
};

std::vector<std::unique_ptr<Schema>>& Schemas() {
  static std::vector<std::unique_ptr<Schema>> schemas = [] {
    std::vector<std::unique_ptr<Schema>> v;
    for (const char* name : {"local.conf", "movielens_din.conf", "long_interest_sim.conf", "census_mmoe.conf"}) {
      absl::StatusOr<proto::JobConfig> config =
          proto::LoadJobConfig(std::string(EMBER_SOURCE_DIR) + "/examples/" + name);
      CHECK(config.ok()) << config.status();
      proto::ShardMap map;
      map.set_num_logical_shards(8);
      for (int s = 0; s < 8; ++s) map.add_server_rank(s % 2);
      absl::StatusOr<std::unique_ptr<worker::BatchBuilder>> builder = worker::BatchBuilder::Create(*config, map, 2);
      CHECK(builder.ok()) << name << ": " << builder.status();
      absl::StatusOr<worker::LogParser> parser = worker::LogParser::Create(*config);
      CHECK(parser.ok()) << parser.status();
      v.push_back(std::make_unique<Schema>(Schema{*config, std::move(*builder), std::move(*parser)}));
    }
    return v;
  }();
  return schemas;
}

}  // namespace
}  // namespace ember::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ember;
  fuzz::Cutter in(data, size);
  auto& schemas = fuzz::Schemas();
  fuzz::Schema& s = *schemas[in.U8() % schemas.size()];
  std::string_view text = in.Rest();
  worker::ParsedLine parsed;
  models::Batch batch;
  s.builder->Clear();
  int lines = 0;
  while (!text.empty()) {
    const size_t end = text.find('\n');
    const std::string_view line = text.substr(0, end);
    text = end == std::string_view::npos ? std::string_view() : text.substr(end + 1);
    // The parser alone (what `ember predict` and the serving path use) ...
    (void)s.parser.Parse(line, &parsed);
    // ... and the builder, which parses again and must leave the batch as it
    // was when the line is refused.
    const int before = s.builder->size();
    absl::Status st = s.builder->AddLine(line);
    CHECK_EQ(s.builder->size(), before + (st.ok() ? 1 : 0));
    if (++lines % 32 == 0) s.builder->Finish(&batch);
  }
  s.builder->Finish(&batch);
  return 0;
}
