// Transitional forwarder: the key hash and shard function moved to
// proto/keys.h (namespace ember::proto). Only launch/gen_data.cc still
// includes this file; delete it once the data tools move to datasets/ and
// include proto/keys.h.
#ifndef EMBER_PS_KEYS_H_
#define EMBER_PS_KEYS_H_

#include "proto/keys.h"

namespace ember::ps {
using proto::Hash64;
using proto::Mix64;
using proto::ShardOf;
}  // namespace ember::ps

#endif  // EMBER_PS_KEYS_H_
