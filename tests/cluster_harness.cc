#include "tests/cluster_harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

namespace ember::testing {

std::string EmberBinary() { return EMBER_BINARY; }
std::string SourceDir() { return EMBER_SOURCE_DIR; }

TempDir::TempDir() {
  char tmpl[] = "/tmp/ember-test-XXXXXX";
  path_ = mkdtemp(tmpl);
}
TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
}

Process::Process(const std::vector<std::string>& argv, const std::string& log) : log_(log) {
  const pid_t parent = getpid();
  pid_ = fork();
  if (pid_ == 0) {
    // Die with the test, whatever happens to it.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
      close(fd);
    }
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
}

Process::~Process() {
  if (pid_ > 0 && !reaped_) {
    kill(pid_, SIGKILL);
    Wait(absl::Seconds(10));
  }
}

int Process::Wait(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!reaped_) {
    int st;
    pid_t r = waitpid(pid_, &st, WNOHANG);
    if (r == pid_) {
      reaped_ = true;
      status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      break;
    }
    if (absl::Now() > deadline) return -1;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return status_;
}

bool Process::Running() { return Wait(absl::ZeroDuration()) == -1; }

void Process::Kill(int sig) {
  if (!reaped_) kill(pid_, sig);
}

Cluster::Cluster(std::string dir, std::string config, int servers, int workers,
                 std::vector<std::string> scheduler_flags, std::vector<std::vector<std::string>> worker_flags,
                 std::vector<std::string> node_flags)
    : dir_(std::move(dir)) {
  const int port = FreePort();
  endpoint_ = absl::StrCat("tcp://127.0.0.1:", port);
  std::vector<std::string> argv = {EmberBinary(),
                                   "scheduler",
                                   "--config=" + config,
                                   absl::StrCat("--port=", port),
                                   absl::StrCat("--num_servers=", servers),
                                   absl::StrCat("--num_workers=", workers),
                                   "--result_file=" + dir_ + "/result.txt"};
  argv.insert(argv.end(), scheduler_flags.begin(), scheduler_flags.end());
  scheduler_ = std::make_unique<Process>(argv, dir_ + "/scheduler.log");
  for (int i = 0; i < servers; ++i) {
    servers_.push_back(StartNode("server", endpoint_, absl::StrCat(dir_, "/server", i, ".log"), node_flags));
  }
  for (int i = 0; i < workers; ++i) {
    std::vector<std::string> flags = node_flags;
    if (i < static_cast<int>(worker_flags.size())) flags.insert(flags.end(), worker_flags[i].begin(), worker_flags[i].end());
    workers_.push_back(StartNode("worker", endpoint_, absl::StrCat(dir_, "/worker", i, ".log"), flags));
  }
}

std::unique_ptr<Process> StartNode(const std::string& role, const std::string& endpoint, const std::string& log,
                                   const std::vector<std::string>& flags) {
  std::vector<std::string> argv = {EmberBinary(), role, "--scheduler=" + endpoint};
  argv.insert(argv.end(), flags.begin(), flags.end());
  return std::make_unique<Process>(argv, log);
}

bool Cluster::WaitAll(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  bool ok = scheduler_->Wait(timeout) != -1;
  for (auto& p : servers_) ok &= p->Wait(std::max(absl::ZeroDuration(), deadline - absl::Now())) != -1;
  for (auto& p : workers_) ok &= p->Wait(std::max(absl::ZeroDuration(), deadline - absl::Now())) != -1;
  return ok;
}

std::map<std::string, std::string> Cluster::Result() const {
  std::map<std::string, std::string> out;
  for (absl::string_view line : absl::StrSplit(ReadFile(dir_ + "/result.txt"), '\n', absl::SkipEmpty())) {
    if (absl::ConsumePrefix(&line, "final: ")) {
      for (absl::string_view kv : absl::StrSplit(line, ' ', absl::SkipEmpty())) {
        std::pair<std::string, std::string> p = absl::StrSplit(kv, absl::MaxSplits('=', 1));
        out[p.first] = p.second;
      }
    } else {
      std::pair<std::string, std::string> p = absl::StrSplit(line, absl::MaxSplits('=', 1));
      out[p.first] = p.second;
    }
  }
  return out;
}

bool GenerateData(const std::string& dir, const std::vector<std::string>& flags) {
  std::vector<std::string> argv = {EmberBinary(), "gen-data", "--out=" + dir, "--overwrite"};
  argv.insert(argv.end(), flags.begin(), flags.end());
  Process p(argv, dir + ".gen.log");
  return p.Wait(absl::Minutes(5)) == 0;
}

}  // namespace ember::testing
