// Test harness for multi-process tests: starts real `ember` processes on
// 127.0.0.1 and guarantees they stop. Every child gets PR_SET_PDEATHSIG, so
// it is killed even if the test binary crashes; Process and Cluster kill
// what is still running when they are destroyed.
#ifndef EMBER_TESTS_CLUSTER_HARNESS_H_
#define EMBER_TESTS_CLUSTER_HARNESS_H_

#include <sys/types.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace ember::testing {

// The `ember` binary and the source tree, fixed at build time.
std::string EmberBinary();
std::string SourceDir();

// A fresh directory under /tmp, removed by the destructor.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A free TCP port on 127.0.0.1 (bound and released; the race is small).
int FreePort();

std::string ReadFile(const std::string& path);
void WriteFile(const std::string& path, const std::string& text);

class Process {
 public:
  // Starts argv[0] with argv, stdout and stderr appended to `log`.
  Process(const std::vector<std::string>& argv, const std::string& log);
  ~Process();  // SIGKILL if still running, then reap
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }
  // Waits up to `timeout`; returns the exit code (128 + signal if killed),
  // or -1 on timeout.
  int Wait(absl::Duration timeout);
  bool Running();
  void Kill(int sig);
  const std::string& log() const { return log_; }

 private:
  pid_t pid_ = -1;
  int status_ = -1;
  bool reaped_ = false;
  std::string log_;
};

// One scheduler, servers and workers of a job, with logs in `dir`. Worker i
// gets the extra flags worker_flags[i] when there are that many; every
// server and worker gets node_flags (e.g. --keys_dir).
class Cluster {
 public:
  Cluster(std::string dir, std::string config, int servers, int workers,
          std::vector<std::string> scheduler_flags = {},
          std::vector<std::vector<std::string>> worker_flags = {}, std::vector<std::string> node_flags = {});
  Process& scheduler() { return *scheduler_; }
  std::vector<std::unique_ptr<Process>>& servers() { return servers_; }
  std::vector<std::unique_ptr<Process>>& workers() { return workers_; }
  std::string endpoint() const { return endpoint_; }
  // Waits for every process; true if all exited within the timeout.
  bool WaitAll(absl::Duration timeout);
  // key=value lines of the scheduler's --result_file, plus "final" parsed
  // into auc, oracle_auc, logloss, samples, samples_per_sec.
  std::map<std::string, std::string> Result() const;

 private:
  std::string dir_;
  std::string endpoint_;
  std::unique_ptr<Process> scheduler_;
  std::vector<std::unique_ptr<Process>> servers_, workers_;
};

// Starts `ember <role> --scheduler=endpoint` plus `flags`, logging to `log`:
// a server or worker that joins a running job (a replacement).
std::unique_ptr<Process> StartNode(const std::string& role, const std::string& endpoint,
                                   const std::string& log,
                                   const std::vector<std::string>& flags = {});

// Runs `ember gen-data --out=dir` with extra flags; true on success.
bool GenerateData(const std::string& dir, const std::vector<std::string>& flags);

}  // namespace ember::testing

#endif  // EMBER_TESTS_CLUSTER_HARNESS_H_
