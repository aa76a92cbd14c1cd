// Reads the host's memory and cgroup limits for the default resident ceiling.
#include "ps/memory_ceiling.h"

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace ember::ps {
namespace {

// A limit file's value; UINT64_MAX if absent, "max" or unreadable.
uint64_t ReadLimit(const std::string& path) {
  std::ifstream in(path);
  if (!in) return UINT64_MAX;
  std::string text;
  std::getline(in, text);
  uint64_t v;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &v)) return UINT64_MAX;
  // cgroup v1 writes "unlimited" as the largest page multiple below 2^63.
  return v >= (uint64_t{1} << 62) ? UINT64_MAX : v;
}

// min over `dir` and its parents up to `root` of root + dir + "/" + file.
uint64_t MinUpTo(const std::string& root, std::string dir, const std::string& file) {
  uint64_t limit = UINT64_MAX;
  for (;;) {
    while (!dir.empty() && dir.back() == '/') dir.pop_back();
    limit = std::min(limit, ReadLimit(root + dir + "/" + file));
    if (dir.empty()) return limit;
    dir.resize(dir.rfind('/') == std::string::npos ? 0 : dir.rfind('/'));
  }
}

}  // namespace

uint64_t CgroupMemoryLimit(const std::string& proc_self_cgroup, const std::string& cgroup_root) {
  uint64_t limit = UINT64_MAX;
  for (absl::string_view line : absl::StrSplit(proc_self_cgroup, '\n', absl::SkipEmpty())) {
    // hierarchy-id:controllers:path
    std::vector<absl::string_view> f = absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (f.size() != 3 || !absl::StartsWith(f[2], "/")) continue;
    if (f[0] == "0" && f[1].empty()) {
      limit = std::min(limit, MinUpTo(cgroup_root, std::string(f[2]), "memory.max"));
    } else {
      for (absl::string_view c : absl::StrSplit(f[1], ',')) {
        if (c == "memory") {
          limit = std::min(
              limit, MinUpTo(cgroup_root + "/memory", std::string(f[2]), "memory.limit_in_bytes"));
        }
      }
    }
  }
  return limit;
}

uint64_t HostMemoryBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  uint64_t bytes =
      pages > 0 && page > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) : 0;
  std::ifstream in("/proc/self/cgroup");
  std::stringstream s;
  s << in.rdbuf();
  const uint64_t cgroup = CgroupMemoryLimit(s.str(), "/sys/fs/cgroup");
  if (cgroup != UINT64_MAX && (bytes == 0 || cgroup < bytes)) bytes = cgroup;
  return bytes;
}

uint32_t ServersOnHost(const proto::ClusterInfo& cluster, uint32_t rank) {
  auto host_of = [](const proto::NodeInfo& n) {
    absl::string_view a = n.endpoint();
    absl::ConsumePrefix(&a, "tcp://");
    if (const size_t colon = a.rfind(':'); colon != absl::string_view::npos) a = a.substr(0, colon);
    absl::ConsumePrefix(&a, "[");
    absl::ConsumeSuffix(&a, "]");
    if (a.empty() || a == "0.0.0.0" || a == "*" || a == "::") return n.host();
    return std::string(a);
  };
  std::string mine;
  bool found = false;
  for (const proto::NodeInfo& n : cluster.nodes()) {
    if (n.role() == proto::SERVER && n.rank() == static_cast<int32_t>(rank)) {
      mine = host_of(n);
      found = true;
    }
  }
  if (!found) return 1;
  uint32_t count = 0;
  for (const proto::NodeInfo& n : cluster.nodes()) {
    if (n.role() == proto::SERVER && host_of(n) == mine) ++count;
  }
  return std::max<uint32_t>(count, 1);
}

}  // namespace ember::ps
