// Validation of received messages: the frame count and frame sizes each
// command implies, checked before any frame is read. Table ids and key
// ownership are checked by the server, which knows its tables and shards.
#ifndef EMBER_NET_VALIDATE_H_
#define EMBER_NET_VALIDATE_H_

#include <cstdint>
#include <string>

#include "net/message.h"

namespace ember::net {

// Largest key count or dense length a message may claim (2^36): guards the
// size arithmetic against overflow from a hostile header.
inline constexpr uint64_t kMaxElements = uint64_t{1} << 36;

struct WireCheck {
  proto::ErrorCode code = proto::OK;
  std::string why;
  bool ok() const { return code == proto::OK; }
};

// Checks `m` (a request or a reply) against the layout in
// docs/wire_format.md: frame count, frame sizes against num_keys, dim,
// dense_length and num_samples, and that the control payload matches the
// command. Aligns the data frames for in-place use when they pass.
WireCheck ValidateMessage(Message& m);

}  // namespace ember::net

#endif  // EMBER_NET_VALIDATE_H_
