// libFuzzer target: the job config text parser and its validation, as
// `ember` loads a config (proto::ParseJobConfig, then
// proto::ValidateJobConfig; launch/main.cc). The input is the config text.
// Bad text must be refused with a status, never a crash.
#include <cstddef>
#include <cstdint>
#include <string>

#include "proto/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<ember::proto::JobConfig> config = ember::proto::ParseJobConfig(text, "fuzz.conf");
  if (!config.ok()) return 0;
  absl::Status st = ember::proto::ValidateJobConfig(*config);
  if (st.ok()) {
    // What the rest of a node reads first from a valid config.
    for (int i = 0; i < config->data().columns_size(); ++i) (void)ember::proto::ColumnSlot(*config, i);
  }
  return 0;
}
