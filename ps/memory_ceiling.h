// The default resident ceiling of a server (storage.max_resident_bytes = 0):
// how much memory the host gives this process, and how many of the job's
// servers share it.
#ifndef EMBER_PS_MEMORY_CEILING_H_
#define EMBER_PS_MEMORY_CEILING_H_

#include <cstdint>
#include <string>

#include "proto/wire.pb.h"

namespace ember::ps {

// The memory this process may use: physical memory (sysconf), or the cgroup
// limit on the process if that is smaller. 0 if neither can be read.
uint64_t HostMemoryBytes();

// The smallest memory limit on the path from the process's cgroup up to the
// root, read under `cgroup_root` (normally /sys/fs/cgroup): cgroup v2
// memory.max, or v1 memory/.../memory.limit_in_bytes. `proc_self_cgroup` is
// the text of /proc/self/cgroup. UINT64_MAX when no limit is set ("max",
// missing files, or v1's "unlimited" near 2^63).
uint64_t CgroupMemoryLimit(const std::string& proc_self_cgroup, const std::string& cgroup_root);

// Servers of `cluster` on the same host as server `rank`, itself included
// (>= 1). A server's host is the address of its endpoint (tcp://ADDR:PORT);
// for a wildcard address (0.0.0.0, *, ::) it is NodeInfo.host.
uint32_t ServersOnHost(const proto::ClusterInfo& cluster, uint32_t rank);

// The derived ceiling: half of `host_bytes` per server on the host. The other
// half is headroom for what the row charge leaves out (the hash index beyond
// 16 bytes a row when it has just grown, arena slack, request and reply
// buffers, RocksDB's caches) and for the job's other processes on the host.
inline uint64_t DefaultMaxResidentBytes(uint64_t host_bytes, uint32_t servers_on_host) {
  return host_bytes / 2 / (servers_on_host == 0 ? 1 : servers_on_host);
}

}  // namespace ember::ps

#endif  // EMBER_PS_MEMORY_CEILING_H_
