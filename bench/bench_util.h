// bench_util: what the benchmarks in bench/ share: timing and figure output,
// /proc readings (CPU time, peak RSS), a Zipf sampler, and a forked ps::Server
// child process.
#ifndef EMBER_BENCH_BENCH_UTIL_H_
#define EMBER_BENCH_BENCH_UTIL_H_

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "net/security.h"
#include "ps/server.h"

namespace ember::bench {

using Clock = std::chrono::steady_clock;

// Seconds of wall time since t0.
double Since(Clock::time_point t0);

// CLOCK_MONOTONIC in seconds: the clock `perf record -k CLOCK_MONOTONIC`
// stamps samples with, so that a logged phase interval can cut a profile.
double MonotonicSeconds();

// Prints one figure "key=value" to stdout and flushes. Values of 1000 or more
// are printed as integers (rates), smaller ones with 4 significant digits
// (ratios).
void Print(const std::string& key, double value);

// The median of v (the mean of the two middle values for an even count);
// v must not be empty.
double Median(std::vector<double> v);

// CPU seconds (user + system, all threads) `pid` has used so far, from
// /proc/<pid>/stat (clock-tick resolution, 10 ms); 0 if unreadable.
double CpuSeconds(pid_t pid);

// A "<field>: <n> kB" line of /proc/<pid>/status in bytes, or 0.
double StatusBytes(pid_t pid, absl::string_view field);

// Peak resident memory of `pid` (VmHWM), or 0.
double PeakRssBytes(pid_t pid);

// The first "model name" of /proc/cpuinfo, or "unknown".
std::string CpuModel();

// Zipf(s) over {1..n} by rejection-inversion (Hörmann and Derflinger, 1996):
// invert the integral H of the continuous hat x^-s, round to the nearest
// integer, and accept unless the point fell in the sliver where the hat
// exceeds the true mass. O(1) per draw for any n, no tables. Requires n >= 1
// and s > 0.
class ZipfSampler {
 public:
  ZipfSampler(uint64_t n, double s);

  // A value in [1, n]. The sequence depends only on rng's state.
  uint64_t operator()(std::mt19937_64& rng) const;

 private:
  double h(double x) const;
  double H(double x) const;
  double HInv(double y) const;

  double n_, s_;
  double h_first_, h_last_, quick_accept_;
};

// One ps::Server in a forked child process, on tcp://127.0.0.1:<free port>.
// Start() must run while the calling process has no other thread and no
// ZeroMQ context: fork copies only the calling thread, so a lock or a context
// held elsewhere would be broken in the child. The destructor kills and reaps
// the child; PR_SET_PDEATHSIG covers the exits that skip it (a CHECK failure,
// a fatal signal), so no server outlives the bench.
class ServerProcess {
 public:
  // Forks; the child creates the server from `options` on its own transport,
  // reports the bound endpoint through a pipe and serves until killed. Returns
  // once the endpoint is known, or the child's error ("server <rank> failed
  // to start: ...") if it could not start.
  // `security`: the child's transport keys (CURVE when enabled).
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(ps::ServerOptions options,
                                                              net::SecurityOptions security = {});

  ~ServerProcess() { Kill(); }
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  const std::string& endpoint() const { return endpoint_; }
  pid_t pid() const { return pid_; }

  // Kills and reaps the child. Idempotent.
  void Kill();

 private:
  explicit ServerProcess(pid_t pid) : pid_(pid) {}

  pid_t pid_;
  std::string endpoint_;
};

}  // namespace ember::bench

#endif  // EMBER_BENCH_BENCH_UTIL_H_
