#include "ps/routing.h"

#include <algorithm>
#include <numeric>

#include "proto/keys.h"

namespace ember::ps {

KeyRouter::KeyRouter(const proto::ShardMap& shard_map, uint32_t num_servers) : num_servers_(num_servers) {
  const uint32_t L = static_cast<uint32_t>(shard_map.server_rank_size());
  server_of_.assign(shard_map.server_rank().begin(), shard_map.server_rank().end());
  std::vector<uint32_t> order(L);
  std::iota(order.begin(), order.end(), 0u);
  std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return server_of_[a] < server_of_[b]; });
  shard_rank_.resize(L);
  for (uint32_t i = 0; i < L; ++i) shard_rank_[order[i]] = i;
  count_.resize(L + 1);
}

uint32_t KeyRouter::ServerOf(uint64_t key) const {
  return server_of_[proto::ShardOf(key, static_cast<uint32_t>(server_of_.size()))];
}

void KeyRouter::Group(absl::Span<const uint64_t> keys, std::vector<uint64_t>* grouped,
                      std::vector<uint32_t>* server_begin, std::vector<uint32_t>* perm) {
  const uint32_t L = static_cast<uint32_t>(server_of_.size());
  const size_t n = keys.size();
  std::fill(count_.begin(), count_.end(), 0u);
  shard_of_key_.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const uint32_t r = shard_rank_[proto::ShardOf(keys[i], L)];
    shard_of_key_[i] = r;
    ++count_[r + 1];
  }
  // count_[r] becomes the first output position of rank r.
  for (uint32_t r = 0; r < L; ++r) count_[r + 1] += count_[r];
  server_begin->assign(num_servers_ + 1, static_cast<uint32_t>(n));
  // Ranks are ordered by server, so a server's range starts at its first shard's rank.
  for (uint32_t s = 0; s < L; ++s) {
    const uint32_t server = server_of_[s];
    (*server_begin)[server] = std::min((*server_begin)[server], count_[shard_rank_[s]]);
  }
  for (int s = static_cast<int>(num_servers_) - 1; s >= 0; --s) {
    (*server_begin)[s] = std::min((*server_begin)[s], (*server_begin)[s + 1]);
  }
  grouped->resize(n);
  if (perm) perm->resize(n);
  for (size_t i = 0; i < n; ++i) {
    const uint32_t pos = count_[shard_of_key_[i]]++;
    (*grouped)[pos] = keys[i];
    if (perm) (*perm)[pos] = static_cast<uint32_t>(i);
  }
}

}  // namespace ember::ps
