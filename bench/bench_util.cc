// bench_util: the helpers bench/'s benchmarks share (see bench_util.h).
#include "bench/bench_util.h"

#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "glog/logging.h"
#include "net/transport.h"

namespace ember::bench {

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double MonotonicSeconds() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + ts.tv_nsec * 1e-9;
}

void Print(const std::string& key, double value) {
  // Rates are large and a fraction of a key/s means nothing; ratios are small.
  if (std::fabs(value) >= 1000) {
    std::printf("%s=%.0f\n", key.c_str(), value);
  } else {
    std::printf("%s=%.4g\n", key.c_str(), value);
  }
  std::fflush(stdout);
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

double CpuSeconds(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  const std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // Field 2, the command, may hold spaces; count fields after its ')'.
  const size_t close = stat.rfind(')');
  if (close == std::string::npos || close + 2 >= stat.size()) return 0;
  const std::vector<absl::string_view> f =
      absl::StrSplit(absl::string_view(stat).substr(close + 2), ' ');
  uint64_t utime = 0, stime = 0;  // fields 14 and 15; f[0] is field 3
  if (f.size() < 13 || !absl::SimpleAtoi(f[11], &utime) || !absl::SimpleAtoi(f[12], &stime))
    return 0;
  return static_cast<double>(utime + stime) / sysconf(_SC_CLK_TCK);
}

double StatusBytes(pid_t pid, absl::string_view field) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    absl::string_view v(line);
    if (!absl::ConsumePrefix(&v, field) || !absl::ConsumePrefix(&v, ":")) continue;
    v = absl::StripAsciiWhitespace(v);
    uint64_t kb = 0;
    if (absl::ConsumeSuffix(&v, "kB") && absl::SimpleAtoi(absl::StripAsciiWhitespace(v), &kb)) {
      return static_cast<double>(kb) * 1024;
    }
  }
  return 0;
}

double PeakRssBytes(pid_t pid) { return StatusBytes(pid, "VmHWM"); }

std::string CpuModel() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      return colon == std::string::npos ? line : line.substr(colon + 2);
    }
  }
  return "unknown";
}

// ---------------------------------------------------------------------------
// ZipfSampler.

namespace {
double ExpM1OverX(double t) { return std::fabs(t) < 1e-8 ? 1.0 + t / 2 : std::expm1(t) / t; }
double Log1POverX(double t) { return std::fabs(t) < 1e-8 ? 1.0 - t / 2 : std::log1p(t) / t; }
}  // namespace

ZipfSampler::ZipfSampler(uint64_t n, double s) : n_(static_cast<double>(n)), s_(s) {
  h_first_ = H(1.5) - 1.0;  // the mass of k = 1 is h(1) = 1
  h_last_ = H(n_ + 0.5);
  quick_accept_ = 2.0 - HInv(H(2.5) - h(2.0));
}

uint64_t ZipfSampler::operator()(std::mt19937_64& rng) const {
  for (;;) {
    const double u01 = static_cast<double>(rng() >> 11) * 0x1.0p-53;
    const double u = h_last_ + u01 * (h_first_ - h_last_);
    const double x = HInv(u);
    const double k = std::clamp(std::floor(x + 0.5), 1.0, n_);
    if (k - x <= quick_accept_ || u >= H(k + 0.5) - h(k)) return static_cast<uint64_t>(k);
  }
}

double ZipfSampler::h(double x) const { return std::exp(-s_ * std::log(x)); }

// H(x) = (x^(1-s) - 1) / (1-s), written so that s -> 1 gives log(x).
double ZipfSampler::H(double x) const {
  const double lx = std::log(x);
  return lx * ExpM1OverX((1.0 - s_) * lx);
}

double ZipfSampler::HInv(double y) const { return std::exp(y * Log1POverX((1.0 - s_) * y)); }

// ---------------------------------------------------------------------------
// ServerProcess.

namespace {

void WriteAll(int fd, const std::string& s) {
  size_t done = 0;
  while (done < s.size()) {
    const ssize_t n = write(fd, s.data() + done, s.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    done += static_cast<size_t>(n);
  }
}

// The child's whole life: bind, tell the parent the endpoint through `fd`
// (or "!" and the error), serve until killed.
[[noreturn]] void ServeInChild(ps::ServerOptions options, net::SecurityOptions security, int fd) {
  auto fail = [fd](const absl::Status& st) {
    WriteAll(fd, absl::StrCat("!", st.ToString(), "\n"));
    _exit(1);
  };
  const uint32_t rank = options.rank;
  net::TransportOptions to;
  to.security = std::move(security);
  absl::StatusOr<std::unique_ptr<net::Transport>> transport = net::CreateTransport(to);
  if (!transport.ok()) fail(transport.status());
  absl::StatusOr<std::string> endpoint = (*transport)->Bind("tcp://127.0.0.1:0");
  if (!endpoint.ok()) fail(endpoint.status());
  absl::StatusOr<std::unique_ptr<ps::Server>> server =
      ps::Server::Create(std::move(options), std::move(*transport));
  if (!server.ok()) fail(server.status());
  WriteAll(fd, *endpoint + "\n");
  close(fd);
  const absl::Status st = (*server)->Run();
  if (!st.ok()) LOG(ERROR) << "server " << rank << ": " << st;
  _exit(st.ok() ? 0 : 1);
}

// One '\n'-terminated line from fd, or an error on EOF (the child died) or
// timeout (generous: under valgrind the child starts slowly).
absl::StatusOr<std::string> ReadLine(int fd, int timeout_ms) {
  std::string line;
  const Clock::time_point t0 = Clock::now();
  for (;;) {
    const int left = timeout_ms - static_cast<int>(Since(t0) * 1000);
    if (left <= 0) return absl::DeadlineExceededError("server process did not report its endpoint");
    pollfd p{fd, POLLIN, 0};
    const int r = poll(&p, 1, left);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return absl::InternalError(absl::StrCat("poll: ", std::strerror(errno)));
    if (r == 0) continue;
    char buf[256];
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return absl::InternalError("server process exited before reporting its endpoint");
    line.append(buf, static_cast<size_t>(n));
    const size_t nl = line.find('\n');
    if (nl != std::string::npos) return line.substr(0, nl);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::Start(ps::ServerOptions options,
                                                                    net::SecurityOptions security) {
  int fds[2];
  if (pipe(fds) != 0) return absl::InternalError(absl::StrCat("pipe: ", std::strerror(errno)));
  const uint32_t rank = options.rank;
  const pid_t parent = getpid();
  std::fflush(nullptr);  // or the child's copy of unflushed stdio could be written twice
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  if (pid == 0) {
    close(fds[0]);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);  // the parent died before prctl took effect
    ServeInChild(std::move(options), std::move(security), fds[1]);
  }
  close(fds[1]);
  auto self = std::unique_ptr<ServerProcess>(new ServerProcess(pid));
  absl::StatusOr<std::string> line = ReadLine(fds[0], /*timeout_ms=*/120'000);
  close(fds[0]);
  if (!line.ok()) return line.status();
  if (line->empty() || (*line)[0] == '!') {
    return absl::InternalError(
        absl::StrCat("server ", rank, " failed to start: ", line->substr(1)));
  }
  self->endpoint_ = *line;
  return self;
}

void ServerProcess::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  while (waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
}

}  // namespace ember::bench
