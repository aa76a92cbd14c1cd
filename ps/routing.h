// Routing keys to servers: ordering a key list by (server rank, logical
// shard) so that each server's keys form one contiguous range, grouped by
// shard inside it — the layout PULL and PUSH requests use.
#ifndef EMBER_PS_ROUTING_H_
#define EMBER_PS_ROUTING_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "proto/wire.pb.h"

namespace ember::ps {

class KeyRouter {
 public:
  // `shard_map` must be valid (num_logical_shards entries, ranks < num_servers).
  KeyRouter(const proto::ShardMap& shard_map, uint32_t num_servers);

  // Counting sort of `keys` by (server, shard), O(n + L). Fills `grouped`
  // (same keys, reordered), `server_begin` (num_servers + 1 offsets: server
  // s gets grouped[server_begin[s] .. server_begin[s+1])), and, if not null,
  // `perm` with perm[i] = index in `keys` of grouped[i]. Not thread-safe
  // (reuses a counting buffer); one router per thread.
  void Group(absl::Span<const uint64_t> keys, std::vector<uint64_t>* grouped, std::vector<uint32_t>* server_begin,
             std::vector<uint32_t>* perm);

  uint32_t num_servers() const { return num_servers_; }
  uint32_t num_shards() const { return static_cast<uint32_t>(server_of_.size()); }
  uint32_t ServerOf(uint64_t key) const;

 private:
  uint32_t num_servers_;
  std::vector<uint32_t> server_of_;   // per shard
  std::vector<uint32_t> shard_rank_;  // position of each shard in (server, shard) order
  std::vector<uint32_t> count_;       // scratch, one per shard + 1
  std::vector<uint32_t> shard_of_key_;
};

}  // namespace ember::ps

#endif  // EMBER_PS_ROUTING_H_
