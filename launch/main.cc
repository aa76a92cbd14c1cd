// ember: one binary, a sub-command per role and per tool. Only this file
// reads flags; the libraries take Options structs.
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "datasets/convert.h"
#include "datasets/gen_data.h"
#include "gflags/gflags.h"
#include "glog/logging.h"
#include "launch/k8s.h"
#include "models/model.h"
#include "net/memory.h"
#include "net/transport.h"
#include "proto/config.h"
#include "ps/memory_ceiling.h"
#include "ps/server.h"
#include "scheduler/scheduler.h"
#include "scheduler/scheduler_client.h"
#include "scheduler/chunks.h"
#include "serving/http_server.h"
#include "serving/predict_files.h"
#include "serving/predictor.h"
#include "storage/export.h"
#include "storage/inspect.h"
#include "worker/ps_client.h"
#include "worker/worker.h"

// Every role.
DEFINE_string(host, "127.0.0.1", "Address this node listens on (binds): an interface's address, or 0.0.0.0 for "
                                  "every interface (`scheduler`, `server`, `serve`).");
DEFINE_string(advertise_host, "", "Address other nodes reach this one at: the endpoint a server gives the scheduler "
                                  "at registration (`scheduler`, `server`). Empty: --host, or this machine's "
                                  "hostname when --host is the wildcard 0.0.0.0 (set it behind NAT or in a pod).");
DEFINE_int32(port, 0, "Port to listen on: the scheduler's port (fixed, required for `scheduler`), or a server's "
                      "port (0 = any free port, which the server reports at registration). `k8s`: the scheduler's port in the "
                      "pods, default 27100.");
DEFINE_string(scheduler, "", "Scheduler endpoint for `server` and `worker`, e.g. tcp://127.0.0.1:7000.");
// Scheduler.
DEFINE_string(config, "", "Job config, protobuf text format (`scheduler`, `k8s`); see examples/ and docs/.");
DEFINE_string(data_dir, "", "Overrides data.train/test/meta with DIR/train, DIR/test, DIR/meta.txt (`scheduler`).");
DEFINE_int32(num_servers, 0, "Overrides cluster.num_servers when > 0 (`scheduler`, `k8s`).");
DEFINE_int32(num_workers, 0, "Overrides cluster.num_workers when > 0 (`scheduler`, `k8s`).");
DEFINE_int64(max_message_bytes, int64_t{1} << 30,
             "The largest message part this node accepts from the network (ZMQ_MAXMSGSIZE); a peer that sends "
             "a larger one is disconnected before it is allocated. -1: no limit (`scheduler`, `server`, `worker`).");
DEFINE_int32(epochs, 0, "Overrides train.epochs when > 0 (`scheduler`, `k8s`).");
DEFINE_string(result_file, "", "If set, the scheduler writes the final line here too (`scheduler`).");
DEFINE_uint32(debug_step_delay_ms, 0, "Fault injection: the worker sleeps this long after each training step, as a "
                                      "straggler would (`worker`; tests and benchmarks).");
DEFINE_bool(resume, false, "Continue the job from the newest complete checkpoint under checkpoint.dir (`scheduler`).");
DEFINE_string(checkpoint_dir, "", "Overrides checkpoint.dir: where the job's checkpoints go (`scheduler`).");
DEFINE_uint32(checkpoint_every_seconds, 0, "Overrides checkpoint.every_seconds when > 0 (`scheduler`, `k8s`).");
DEFINE_string(export_dir, "", "Overrides export.dir: the export root the job writes serving bundles to (`scheduler`).");
DEFINE_uint32(export_every_seconds, 0, "Overrides export.every_seconds when > 0: live-serving exports (`scheduler`).");
DEFINE_string(metrics_file, "", "Append JSON lines of progress, evaluations, checkpoints and recoveries here; "
                                "launch/plot.py draws them (`scheduler`).");
DEFINE_string(eval_scores_out, "", "Write the last evaluation's scores to this new file (`scheduler`): one line per "
                                   "test sample, its task scores tab-separated (%.9g), in the order the scheduler "
                                   "received them (one worker: the test files' order; several: the workers' runs "
                                   "in arrival order). The job refuses to start if the file exists.");
// gen-data.
DEFINE_string(out, "", "Output directory (`gen-data`, `convert`), export root (`export`: the bundle goes into "
                      "OUT/<version>), or output file (`predict`: must not exist), or the manifests' directory (`k8s`; "
                      "empty: stdout).");
// These mirror GenDataOptions fields of the same name; unset ones keep the
// generator's defaults (datasets/gen_data.h), which the demo config is tuned for.
DEFINE_uint64(seed, 1, "Random seed (`gen-data`).");
DEFINE_uint64(train_rows, 1000000, "Training rows (`gen-data`).");
DEFINE_uint64(test_rows, 100000, "Test rows (`gen-data`).");
DEFINE_uint32(train_files, 4, "Training files (`gen-data`).");
DEFINE_uint32(test_files, 2, "Test files (`gen-data`).");
DEFINE_uint64(num_users, 10000, "Distinct users (`gen-data`).");
DEFINE_uint64(num_items, 5000, "Distinct items (`gen-data`).");
DEFINE_bool(gzip, false, "Write .tsv.gz files (`gen-data`).");
DEFINE_bool(overwrite, false, "Replace a data set that gen-data (or, for `convert`, convert) wrote in --out "
                             "(`gen-data`, `convert`).");
// convert.
DEFINE_string(input, "", "Input of `convert`: the movielens directory (ratings.csv, movies.csv), or the census, "
                         "criteo or avazu file (.gz accepted). Of `predict`: log files, as data.train names them (a "
                         "file, a directory or a glob), several separated by commas; default: the job's data.test.");
DEFINE_uint32(max_history, 50, "Longest behaviour sequence `convert` writes (movielens).");
DEFINE_uint64(max_bad_lines, 100, "Malformed input lines `convert` skips before it fails.");
DEFINE_string(gen_options, "", "More gen-data options as name=value,name=value (any GenDataOptions field, "
                               "see datasets/gen_data.h), e.g. max_history=50,item_zipf=1.1 (`gen-data`).");
// export, predict.
DEFINE_string(checkpoint, "", "Checkpoint directory to export (`export`), e.g. CKPT_ROOT/ckpt-00000007.");
DEFINE_string(dtype, "fp32", "Embedding value type of the bundle: fp32 or fp16 (`export`).");
DEFINE_string(base, "", "Make a delta bundle on this bundle (a version directory in --out) (`export`).");
// inspect.
DEFINE_int32(sample_rows, 3, "Rows decoded and printed per table (`inspect`).");
// serve.
DEFINE_string(bundle, "", "Export bundle directory, or an export root (its newest complete bundle) (`predict`, `serve`).");
DEFINE_string(model_name, "", "The <name> of /v1/models/<name>; empty = the bundle's job name (`serve`).");
DEFINE_bool(watch, false, "Poll the export root (--bundle if it is a root, else its parent) and apply newer full or "
                          "delta bundles live (`serve`).");
DEFINE_int32(watch_interval_ms, 1000, "How often --watch polls, in ms, 10..3600000 (`serve`).");
DEFINE_int32(threads, 0, "Request threads, i.e. connections served at once; 0 = max(8, 2 x cores) (`serve`).");
DEFINE_uint64(max_body_bytes, 64ull << 20, "Largest request body; a larger one gets 413 (`serve`).");
DEFINE_uint64(max_instances, 100000, "Most instances in one predict request (`serve`).");
// Security (docs/security.md).
DEFINE_string(keys_dir, "", "Directory written by `ember keygen`: this node loads <dir>/<role>.key and "
                            "<dir>/authorized_keys and runs every link with CURVE (`scheduler`, `server`, `worker`). "
                            "Empty: plain TCP, which only a loopback --host allows unless --insecure.");
DEFINE_string(key_file, "", "This node's key pair, instead of <keys_dir>/<role>.key (`scheduler`, `server`, `worker`).");
DEFINE_bool(insecure, false, "Allow plain, unauthenticated TCP on a non-loopback --host (`scheduler`, `server`; `k8s`: "
                              "every pod, no keys).");
DEFINE_int32(rank, -1, "The rank this server or worker must get (a launcher that fixes ranks, e.g. from a pod "
                       "ordinal); registration is refused if it is taken. -1: the scheduler assigns one.");
// Launchers.
DEFINE_bool(exit_with_parent, false, "Die with the process that started this one, even if it is killed with "
                                     "SIGKILL (`scheduler`, `server`, `worker`; launch/local.sh sets it).");

// k8s (launch/k8s.h); also --config, --num_servers, --num_workers, --epochs,
// --port, --checkpoint_every_seconds, --insecure and --out.
DEFINE_string(name, "", "The job's name in Kubernetes: a DNS label of at most 40 characters; default: the config's "
                        "name, lowercase (`k8s`).");
DEFINE_string(k8s_namespace, "default", "Namespace of the job's objects (`k8s`).");
DEFINE_string(image, "", "Container image with the ember binary (--binary) and /bin/sh (`k8s`).");
DEFINE_string(binary, "/usr/local/bin/ember", "Path of `ember` in the image (`k8s`).");
DEFINE_int32(server_port, 27200, "Port every server listens on in its pod (`k8s`).");
DEFINE_string(cluster_domain, "cluster.local", "The cluster's DNS domain (`k8s`).");
DEFINE_string(job_claim, "", "A ReadWriteMany PersistentVolumeClaim for checkpoints, exports, metrics and the "
                             "result, shared by every pod (`k8s`; required).");
DEFINE_string(data_claim, "", "A PersistentVolumeClaim holding train/, test/ and meta.txt, mounted read-only on the "
                              "scheduler and the workers; empty: the config's data paths, inside the image (`k8s`).");
DEFINE_string(secret, "", "The Secret with key job-token and the files of `ember keygen`; default <name>-secrets "
                          "(`k8s`).");
DEFINE_string(spill_size, "10Gi", "Each server's volume for the RocksDB tier, made when storage.memory_budget_bytes "
                                  "> 0 (`k8s`).");
DEFINE_string(spill_storage_class, "", "Storage class of the servers' RocksDB volumes; empty: the default (`k8s`).");
DEFINE_int32(worker_restarts, 6, "Pod failures allowed per worker before the workers' Job fails (`k8s`).");

namespace ember {
namespace {

// Prints the error once, as "error: <message>" on stderr, and returns the
// exit code 1. (Not through glog too: the console would show it twice.)
// Each command's own flags, for `ember <command> --help`.
struct CommandHelp {
  const char* command;
  const char* usage;    // the synopsis
  const char* summary;  // what it does, for `ember --help`
  std::vector<const char*> flags;
};

const std::vector<CommandHelp>& Commands() {
  static const std::vector<CommandHelp> commands = {
      {"scheduler", "ember scheduler --config=JOB.conf --port=P [flags]",
       "run a job: waits for the servers and workers, drives epochs and evaluation, prints the final line",
       {"config", "port", "host", "advertise_host", "data_dir", "num_servers", "num_workers", "epochs", "result_file",
        "resume",
        "checkpoint_dir", "checkpoint_every_seconds", "export_dir", "export_every_seconds", "metrics_file",
        "eval_scores_out", "max_message_bytes", "keys_dir", "key_file", "insecure", "exit_with_parent", "log_dir"}},
      {"server", "ember server --scheduler=tcp://HOST:P [flags]", "serve sparse tables and dense slices",
       {"scheduler", "host", "advertise_host", "port", "rank", "max_message_bytes", "keys_dir", "key_file", "insecure",
        "exit_with_parent", "log_dir"}},
      {"worker", "ember worker --scheduler=tcp://HOST:P [flags]", "train a model replica",
       {"scheduler", "rank", "debug_step_delay_ms", "max_message_bytes", "keys_dir", "key_file", "exit_with_parent",
        "log_dir"}},
      {"keygen", "ember keygen --out=DIR",
       "write CURVE key pairs for a cluster (scheduler, server, worker, admin) and their authorized_keys",
       {"out"}},
      {"k8s", "ember k8s --config=JOB.conf --image=IMG --job_claim=PVC [--out=DIR] [flags]",
       "write the Kubernetes manifests of a job (ConfigMap, scheduler Deployment, server StatefulSet, worker "
       "Indexed Job); docs/launch.md",
       {"config", "image", "job_claim", "out", "name", "k8s_namespace", "num_servers", "num_workers", "epochs", "port",
        "server_port", "data_claim", "secret", "insecure", "checkpoint_every_seconds", "spill_size",
        "spill_storage_class", "binary", "cluster_domain", "worker_restarts"}},
      {"gen-data", "ember gen-data --out=DIR [flags]", "write a synthetic click log with its oracle AUC",
       {"out", "seed", "train_rows", "test_rows", "train_files", "test_files", "num_users", "num_items", "gzip",
        "overwrite", "gen_options"}},
      {"convert", "ember convert FORMAT --input=PATH --out=DIR [flags]   (FORMAT: movielens, census, criteo, avazu)",
       "turn a public data set into ember's log files and a job config (DIR/job.conf)",
       {"input", "out", "max_history", "max_bad_lines", "seed", "overwrite"}},
      {"export", "ember export --checkpoint=CKPT_DIR --out=EXPORT_ROOT [--dtype=fp16] [--base=EXPORT_ROOT/V]",
       "write a serving bundle (embeddings without optimizer state, dense weights, config) from a checkpoint",
       {"checkpoint", "out", "dtype", "base", "config"}},
      {"predict", "ember predict --bundle=DIR [--input=FILES] --out=FILE",
       "score log lines with an exported model: one line of task scores per input line", {"bundle", "input", "out"}},
      {"inspect", "ember inspect DIR [flags]",
       "print a checkpoint or an export bundle and verify every byte; exit code 0 if it all verifies, 1 otherwise",
       {"sample_rows"}},
      {"serve", "ember serve --bundle=DIR [--port=P] [flags]",
       "answer predict requests over HTTP (TF Serving's REST API, /healthz, /metrics); docs/serving.md",
       {"bundle", "port", "host", "model_name", "watch", "watch_interval_ms", "threads", "max_body_bytes",
        "max_instances", "exit_with_parent", "log_dir"}},
  };
  return commands;
}

// `ember --help`: every command's synopsis and summary, from Commands().
const std::string& Usage() {
  static const std::string usage = [] {
    std::string u =
        "distributed parameter server for sparse recommendation models.\n\n"
        "Usage: ember <command> [--flags]\n\nCommands:\n";
    for (const CommandHelp& c : Commands()) absl::StrAppend(&u, "  ", c.usage, "\n      ", c.summary, "\n");
    absl::StrAppend(&u, "\n`ember <command> --help` lists that command's flags.");
    return u;
  }();
  return usage;
}

// Prints `command`'s usage and its flags (name, type, default, meaning).
// False if there is no such command.
bool PrintCommandHelp(const std::string& command) {
  for (const CommandHelp& c : Commands()) {
    if (command != c.command) continue;
    std::printf("usage: %s\n\nflags:\n", c.usage);
    for (const char* name : c.flags) {
      gflags::CommandLineFlagInfo info;
      if (!gflags::GetCommandLineFlagInfo(name, &info)) continue;
      std::printf("  --%s (%s; default: %s)\n      %s\n", name, info.type.c_str(),
                  info.default_value.empty() ? "\"\"" : info.default_value.c_str(), info.description.c_str());
    }
    return true;
  }
  return false;
}

int ErrorExit(const absl::Status& st) {
  std::fprintf(stderr, "error: %s\n", std::string(st.message()).c_str());
  std::fflush(stderr);
  return 1;
}

// This process's CURVE keys (--keys_dir), loaded once for its role.
absl::StatusOr<net::SecurityOptions> Security(proto::Role role) {
  static absl::StatusOr<net::SecurityOptions> loaded = [role]() -> absl::StatusOr<net::SecurityOptions> {
    if (FLAGS_keys_dir.empty()) {
      if (!FLAGS_key_file.empty()) return absl::InvalidArgumentError("flag --key_file: needs --keys_dir");
      return net::SecurityOptions{};
    }
    absl::StatusOr<net::SecurityOptions> s = net::LoadSecurity(FLAGS_keys_dir, role, FLAGS_key_file);
    if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat("flag --keys_dir: ", s.status().message()));
    return s;
  }();
  return loaded;
}

absl::StatusOr<std::unique_ptr<net::Transport>> NewTransport(proto::Role role) {
  if (FLAGS_max_message_bytes != -1 && FLAGS_max_message_bytes < (int64_t{1} << 20)) {
    return absl::InvalidArgumentError(absl::StrCat("flag --max_message_bytes: ", FLAGS_max_message_bytes,
                                                   ": must be -1 (no limit) or at least 1048576"));
  }
  absl::StatusOr<net::SecurityOptions> security = Security(role);
  if (!security.ok()) return security.status();
  net::TransportOptions o;
  o.max_message_bytes = FLAGS_max_message_bytes;
  o.security = *security;
  return net::CreateTransport(o);
}

// A node that listens on a non-loopback address without keys would let
// anyone who reaches the port read and change the model.
absl::Status CheckExposure(proto::Role role) {
  if (!FLAGS_keys_dir.empty() || FLAGS_insecure) return absl::OkStatus();
  const std::string& h = FLAGS_host;
  if (absl::StartsWith(h, "127.") || h == "localhost" || h == "::1" || h == "[::1]") return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "flag --host: ", h, " is not a loopback address and no --keys_dir is given: the ", net::RoleName(role),
      " would accept anyone's requests. Create keys with `ember keygen --out DIR` and pass --keys_dir=DIR to every "
      "process, or pass --insecure on a network you trust (docs/security.md)"));
}

// The job's registration token: EMBER_JOB_TOKEN in the environment (an
// environment variable, not a flag, so `ps` does not show it). Empty: none.
std::string JobToken() {
  const char* t = std::getenv("EMBER_JOB_TOKEN");
  return t == nullptr ? std::string() : std::string(t);
}

int RunKeygen() {
  if (FLAGS_out.empty()) return ErrorExit(absl::InvalidArgumentError("flag --out: required (a new directory)"));
  if (absl::Status st = net::WriteClusterKeys(FLAGS_out); !st.ok()) return ErrorExit(st);
  std::printf("keys: %s (scheduler.key server.key worker.key admin.key authorized_keys); pass --keys_dir=%s to "
              "every scheduler, server and worker\n",
              FLAGS_out.c_str(), FLAGS_out.c_str());
  return 0;
}

std::string Hostname() {
  char buf[256] = {0};
  gethostname(buf, sizeof(buf) - 1);
  return buf;
}

bool IsWildcardHost(const std::string& h) { return h == "0.0.0.0" || h == "*"; }

// The host other nodes reach this one at: --advertise_host, else --host
// unless it is a wildcard, else this machine's hostname.
absl::StatusOr<std::string> AdvertisedHost() {
  if (!FLAGS_advertise_host.empty()) {
    if (IsWildcardHost(FLAGS_advertise_host)) {
      return absl::InvalidArgumentError(absl::StrCat("flag --advertise_host: ", FLAGS_advertise_host,
                                                     " is a wildcard; give an address the other nodes can reach"));
    }
    return FLAGS_advertise_host;
  }
  if (!IsWildcardHost(FLAGS_host)) return FLAGS_host;
  const std::string h = Hostname();
  if (h.empty() || h == "localhost") {
    return absl::InvalidArgumentError(absl::StrCat(
        "flag --advertise_host: required with --host=", FLAGS_host,
        " (a wildcard) on a machine without a usable hostname: give the address the other nodes reach this one at"));
  }
  return h;
}

// Listens on tcp://--host:--port and returns the endpoint others reach it
// at (--advertise_host, the port bound). A failure names the flags.
absl::StatusOr<std::string> BindFromFlags(net::Transport& transport) {
  absl::StatusOr<std::string> advertised = AdvertisedHost();
  if (!advertised.ok()) return advertised.status();
  absl::StatusOr<std::string> bound = transport.Bind(absl::StrCat("tcp://", FLAGS_host, ":", FLAGS_port));
  if (!bound.ok()) {
    if (absl::StrContains(bound.status().message(), "in use")) {
      return absl::UnavailableError(absl::StrCat("flag --port: port ", FLAGS_port, " on ", FLAGS_host,
                                                 " is already in use by another process; choose another --port",
                                                 FLAGS_port != 0 ? " (a server may take 0, any free port)" : ""));
    }
    return absl::UnavailableError(
        absl::StrCat("flags --host/--port: cannot listen on ", FLAGS_host, ":", FLAGS_port, ": ",
                     bound.status().message()));
  }
  const size_t colon = bound->rfind(':');
  if (colon == std::string::npos) return absl::InternalError(absl::StrCat("bound to ", *bound, ": no port"));
  LOG(INFO) << "listening on " << *bound << ", reachable at " << *advertised << bound->substr(colon);
  return absl::StrCat("tcp://", *advertised, bound->substr(colon));
}

absl::Status CheckPort(bool required) {
  if (FLAGS_port < 0 || FLAGS_port > 65535) return absl::InvalidArgumentError("flag --port: must be in [0, 65535]");
  if (required && FLAGS_port == 0) return absl::InvalidArgumentError("flag --port: the scheduler needs a fixed port");
  return absl::OkStatus();
}

std::atomic<bool> g_stop_requested{false};

void OnStopSignal(int) {
  g_stop_requested.store(true);
  // The next one is not caught.
  signal(SIGTERM, SIG_DFL);
  signal(SIGINT, SIG_DFL);
}

void InstallStopHandler() {
  struct sigaction sa;
  std::memset(&sa, 0, sizeof(sa));
  sa.sa_handler = OnStopSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
}

int RunScheduler() {
  if (FLAGS_config.empty()) return ErrorExit(absl::InvalidArgumentError("flag --config: required"));
  if (absl::Status st = CheckPort(true); !st.ok()) return ErrorExit(st);
  absl::StatusOr<proto::JobConfig> config = proto::LoadJobConfig(FLAGS_config);
  if (!config.ok()) return ErrorExit(config.status());
  if (!FLAGS_data_dir.empty()) {
    config->mutable_data()->set_train(FLAGS_data_dir + "/train");
    config->mutable_data()->set_test(FLAGS_data_dir + "/test");
    config->mutable_data()->set_meta(FLAGS_data_dir + "/meta.txt");
  }
  if (FLAGS_num_servers < 0 || FLAGS_num_workers < 0 || FLAGS_epochs < 0)
    return ErrorExit(absl::InvalidArgumentError("flags --num_servers, --num_workers, --epochs: must be >= 0"));
  if (FLAGS_num_servers > 0) config->mutable_cluster()->set_num_servers(FLAGS_num_servers);
  if (FLAGS_num_workers > 0) config->mutable_cluster()->set_num_workers(FLAGS_num_workers);
  if (FLAGS_epochs > 0) config->mutable_train()->set_epochs(FLAGS_epochs);
  if (!FLAGS_checkpoint_dir.empty()) config->mutable_checkpoint()->set_dir(FLAGS_checkpoint_dir);
  if (FLAGS_checkpoint_every_seconds > 0) {
    config->mutable_checkpoint()->set_every_seconds(FLAGS_checkpoint_every_seconds);
  }
  if (!FLAGS_export_dir.empty()) config->mutable_export_()->set_dir(FLAGS_export_dir);
  if (FLAGS_export_every_seconds > 0) config->mutable_export_()->set_every_seconds(FLAGS_export_every_seconds);
  if (absl::Status st = proto::ValidateJobConfig(*config); !st.ok()) return ErrorExit(st);
  absl::StatusOr<std::unique_ptr<models::Model>> model = models::Model::Create(*config);
  if (!model.ok()) return ErrorExit(model.status());
  if (absl::Status st = CheckExposure(proto::SCHEDULER); !st.ok()) return ErrorExit(st);

  auto transport = NewTransport(proto::SCHEDULER);
  if (!transport.ok()) return ErrorExit(transport.status());
  absl::StatusOr<std::string> ep = BindFromFlags(**transport);
  if (!ep.ok()) return ErrorExit(ep.status());
  LOG(INFO) << "scheduler at " << *ep;
  scheduler::SchedulerOptions so;
  so.config = *config;
  so.dense_size = (*model)->dense_size();
  so.tasks = (*model)->tasks();
  so.new_transport = [] { return NewTransport(proto::SCHEDULER); };
  so.job_token = JobToken();
  so.resume = FLAGS_resume;
  so.metrics_file = FLAGS_metrics_file;
  so.eval_scores_file = FLAGS_eval_scores_out;
  // SIGTERM or SIGINT: checkpoint at the next step boundary and stop every
  // node cleanly. A second one ends the scheduler at once.
  InstallStopHandler();
  so.stop_requested = [] { return g_stop_requested.load(); };
  auto sched = scheduler::Scheduler::Create(std::move(so), std::move(*transport));
  if (!sched.ok()) return ErrorExit(sched.status());
  absl::StatusOr<scheduler::JobResult> result = (*sched)->Run();
  if (!result.ok()) return ErrorExit(result.status());
  if (result->stopped) {
    const std::string line =
        result->last_checkpoint.empty()
            ? std::string("stopped: nothing was saved (no checkpoint.dir), so the job cannot be resumed")
            : absl::StrCat("stopped: checkpoint ", result->last_checkpoint,
                           "; resume with the same command plus --resume");
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
    return 0;
  }
  const std::string line = scheduler::FinalLine(*result);
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
  if (!FLAGS_result_file.empty()) {
    FILE* f = std::fopen(FLAGS_result_file.c_str(), "w");
    if (f == nullptr) return ErrorExit(absl::UnavailableError("cannot write --result_file " + FLAGS_result_file));
    std::fprintf(f, "%s\nbad_lines=%llu\nlines=%llu\n", line.c_str(),
                 static_cast<unsigned long long>(result->bad_lines), static_cast<unsigned long long>(result->lines));
    // Measured under SSP only (ASP and BSP send no clocks).
    if (config->train().consistency() == proto::TrainConfig::SSP) {
      std::fprintf(f, "max_clock_gap=%llu\n", static_cast<unsigned long long>(result->max_clock_gap));
    }
    std::fprintf(f, "dense_staleness_max=%llu\ndense_staleness_mean=%.3f\n",
                 static_cast<unsigned long long>(result->dense_staleness_max),
                 result->dense_pushes ? static_cast<double>(result->dense_staleness_sum) / result->dense_pushes : 0.0);
    std::fclose(f);
  }
  if (!result->diverged.empty()) {
    // Trained to the end (train.divergence.stop is off), but not a model to use.
    return ErrorExit(absl::AbortedError(absl::StrCat("training diverged: ", result->diverged)));
  }
  return 0;
}

// Registration common to servers and workers.
absl::StatusOr<std::unique_ptr<scheduler::SchedulerClient>> Join(proto::Role role, const std::string& endpoint,
                                                                  proto::RegisterReply* reply) {
  if (FLAGS_scheduler.empty()) return absl::InvalidArgumentError("flag --scheduler: required (tcp://HOST:PORT)");
  auto transport = NewTransport(role);
  if (!transport.ok()) return transport.status();
  scheduler::SchedulerClientOptions o;
  o.scheduler_endpoint = FLAGS_scheduler;
  o.self.set_role(role);
  o.self.set_endpoint(endpoint);
  o.self.set_host(Hostname());
  o.self.set_pid(getpid());
  if (FLAGS_rank < -1) return absl::InvalidArgumentError("flag --rank: must be >= 0, or -1 for any");
  o.rank = FLAGS_rank;
  o.job_token = JobToken();
  // The scheduler holds workers' replies while it restores a checkpoint
  // (--resume), and nodes may start before the scheduler does.
  o.register_timeout = absl::Minutes(10);
  auto control = scheduler::SchedulerClient::Create(o, std::move(*transport));
  if (!control.ok()) return control.status();
  absl::StatusOr<proto::RegisterReply> r = (*control)->Register();
  if (!r.ok()) return r.status();
  *reply = *r;
  const proto::ClusterConfig& cc = r->cluster().config().cluster();
  (*control)->StartHeartbeats(absl::Milliseconds(cc.heartbeat_interval_ms()),
                              absl::Milliseconds(cc.heartbeat_timeout_ms()));
  return control;
}

int RunServer() {
  if (absl::Status st = CheckPort(false); !st.ok()) return ErrorExit(st);
  if (absl::Status st = CheckExposure(proto::SERVER); !st.ok()) return ErrorExit(st);
  auto transport = NewTransport(proto::SERVER);
  if (!transport.ok()) return ErrorExit(transport.status());
  absl::StatusOr<std::string> ep = BindFromFlags(**transport);
  if (!ep.ok()) return ErrorExit(ep.status());
  proto::RegisterReply reg;
  auto control = Join(proto::SERVER, *ep, &reg);
  if (!control.ok()) return ErrorExit(control.status());
  const proto::ClusterInfo& cluster = reg.cluster();

  ps::ServerOptions so;
  so.config = cluster.config();
  so.shard_map = cluster.shard_map();
  so.rank = reg.rank();
  so.node_id = reg.node_id();
  so.job_id = cluster.job_id();
  so.incarnation = cluster.incarnation();
  // The default resident ceiling shares the host's memory between the job's servers on it.
  so.servers_on_host = ps::ServersOnHost(cluster, reg.rank());
  // The dense parameters start from the model's own initialisation.
  absl::StatusOr<std::unique_ptr<models::Model>> model = models::Model::Create(cluster.config());
  if (!model.ok()) return ErrorExit(model.status());
  std::vector<float> dense((*model)->dense_size());
  (*model)->InitDense(absl::MakeSpan(dense));
  so.dense_state_begin = (*model)->num_params();
  so.dense_state_rate = (*model)->state_rate();
  const proto::DenseLayout& dl = cluster.dense();
  if (dl.offset_size() <= reg.rank() + 1 || dl.total() != dense.size())
    return ErrorExit(absl::InvalidArgumentError("the scheduler's dense layout does not match the model"));
  so.dense_offset = dl.offset(reg.rank());
  so.dense_total = dl.total();
  so.dense_init.assign(dense.begin() + dl.offset(reg.rank()), dense.begin() + dl.offset(reg.rank() + 1));

  auto server = ps::Server::Create(std::move(so), std::move(*transport));
  if (!server.ok()) return ErrorExit(server.status());
  LOG(INFO) << "server rank " << reg.rank() << " serving on " << *ep;
  absl::Status run_status;
  std::thread serving([&] { run_status = (*server)->Run(); });
  absl::Status job = (*control)->WaitForShutdown();
  (*server)->Stop();
  serving.join();
  const ps::ServerStats s = (*server)->stats();
  LOG(INFO) << "server rank " << reg.rank() << " done: " << s.pulls << " pulls, " << s.pushes << " pushes, " << s.rows
            << " rows, " << s.errors << " rejected requests, resident_bytes=" << s.resident_bytes
            << " hits=" << s.hits << " misses=" << s.misses << " evictions=" << s.evictions;
  (*control)->Leave("server stopped", !run_status.ok());
  if (!run_status.ok()) return ErrorExit(run_status);
  if (!job.ok()) return ErrorExit(job);
  return 0;
}

int RunWorker() {
  proto::RegisterReply reg;
  auto control = Join(proto::WORKER, "", &reg);
  if (!control.ok()) return ErrorExit(control.status());
  auto transport = NewTransport(proto::WORKER);
  if (!transport.ok()) return ErrorExit(transport.status());
  worker::PsClientOptions po;
  po.cluster = reg.cluster();
  po.node_id = reg.node_id();
  scheduler::SchedulerClient* control_ptr = control->get();
  // Calls in flight give up when the job stops or a recovery begins (a lost
  // server would never answer them).
  po.stop_requested = [control_ptr] { return control_ptr->Stopped() || control_ptr->RecoverRequested(); };
  auto ps = worker::PsClient::Create(po, std::move(*transport));
  if (!ps.ok()) return ErrorExit(ps.status());
  worker::WorkerOptions wo;
  wo.registration = reg;
  wo.step_delay = absl::Milliseconds(FLAGS_debug_step_delay_ms);
  auto w = worker::Worker::Create(wo, control->get(), ps->get());
  if (!w.ok()) {
    (*control)->Leave(std::string(w.status().message()), true);
    return ErrorExit(w.status());
  }
  absl::Status st = (*w)->Run();
  (*control)->Leave(st.ok() ? "worker finished" : std::string(st.message()), !st.ok());
  if (!st.ok()) return ErrorExit(st);
  return 0;
}

// `ember k8s`: the manifests to --out (a directory) or stdout.
int RunK8s() {
  launch::K8sOptions o;
  o.config_path = FLAGS_config;
  o.num_servers = FLAGS_num_servers;
  o.num_workers = FLAGS_num_workers;
  o.epochs = FLAGS_epochs;
  o.name = FLAGS_name;
  o.namespace_name = FLAGS_k8s_namespace;
  o.image = FLAGS_image;
  o.binary = FLAGS_binary;
  // --port's default (0) is for the other commands.
  if (!gflags::GetCommandLineFlagInfoOrDie("port").is_default) o.scheduler_port = FLAGS_port;
  o.server_port = FLAGS_server_port;
  o.cluster_domain = FLAGS_cluster_domain;
  o.job_claim = FLAGS_job_claim;
  o.data_claim = FLAGS_data_claim;
  o.secret = FLAGS_secret;
  o.insecure = FLAGS_insecure;
  o.spill_size = FLAGS_spill_size;
  o.spill_storage_class = FLAGS_spill_storage_class;
  o.checkpoint_every_seconds = FLAGS_checkpoint_every_seconds;
  o.worker_restarts = FLAGS_worker_restarts;
  absl::StatusOr<std::vector<launch::K8sManifest>> m = launch::GenerateK8sManifests(o);
  if (!m.ok()) return ErrorExit(m.status());
  if (absl::Status st = launch::WriteK8sManifests(*m, FLAGS_out); !st.ok()) return ErrorExit(st);
  if (!FLAGS_out.empty()) {
    std::fprintf(stderr, "k8s: %zu manifests in %s; create the Secret first (docs/launch.md), then kubectl apply -f %s\n",
                 m->size(), FLAGS_out.c_str(), FLAGS_out.c_str());
  }
  return 0;
}

int RunGenData() {
  datasets::GenDataOptions o;
  o.out_dir = FLAGS_out;
  for (const char* name : {"seed", "train_rows", "test_rows", "train_files", "test_files", "num_users", "num_items",
                           "gzip", "overwrite"}) {
    gflags::CommandLineFlagInfo info = gflags::GetCommandLineFlagInfoOrDie(name);
    if (info.is_default) continue;
    absl::Status st = datasets::SetGenDataOption(name, info.current_value, &o);
    if (!st.ok()) return ErrorExit(absl::InvalidArgumentError(absl::StrCat("flag --", name, ": ", st.message())));
  }
  if (!FLAGS_gen_options.empty()) {
    for (absl::string_view kv : absl::StrSplit(FLAGS_gen_options, ',', absl::SkipEmpty())) {
      std::pair<std::string, std::string> p = absl::StrSplit(kv, absl::MaxSplits('=', 1));
      absl::Status st = datasets::SetGenDataOption(p.first, p.second, &o);
      if (!st.ok()) return ErrorExit(absl::InvalidArgumentError(absl::StrCat("flag --gen_options: ", st.message())));
    }
  }
  if (o.out_dir.empty()) return ErrorExit(absl::InvalidArgumentError("flag --out: required"));
  datasets::GenDataSummary s;
  absl::Status st = datasets::GenerateData(o, &s);
  if (!st.ok()) return ErrorExit(st);
  std::printf("gen-data: %llu train rows, %llu test rows, positive_rate=%.4f oracle_auc=%.4f in %.1fs -> %s\n",
              static_cast<unsigned long long>(s.train_rows), static_cast<unsigned long long>(s.test_rows),
              s.positive_rate, s.oracle_auc, s.seconds, o.out_dir.c_str());
  return 0;
}

int RunConvert(const std::string& format) {
  datasets::ConvertOptions o;
  o.format = format;
  o.input = FLAGS_input;
  o.out_dir = FLAGS_out;
  o.max_history = FLAGS_max_history;
  o.max_bad_lines = FLAGS_max_bad_lines;
  o.overwrite = FLAGS_overwrite;
  if (!gflags::GetCommandLineFlagInfoOrDie("seed").is_default) o.seed = FLAGS_seed;
  datasets::ConvertSummary s;
  absl::Status st = datasets::Convert(o, &s);
  if (!st.ok()) return ErrorExit(st);
  std::printf("convert %s: %llu train, %llu valid, %llu test rows, %llu bad lines -> %s (job config: %s/job.conf)\n",
              format.c_str(), static_cast<unsigned long long>(s.train_rows),
              static_cast<unsigned long long>(s.valid_rows), static_cast<unsigned long long>(s.test_rows),
              static_cast<unsigned long long>(s.bad_lines), o.out_dir.c_str(), o.out_dir.c_str());
  for (const std::string& e : s.bad_line_examples) std::printf("  skipped %s\n", e.c_str());
  return 0;
}

int RunExport() {
  storage::ExportOptions o;
  o.checkpoint_dir = FLAGS_checkpoint;
  o.out_root = FLAGS_out;
  o.base_dir = FLAGS_base;
  if (o.checkpoint_dir.empty()) return ErrorExit(absl::InvalidArgumentError("flag --checkpoint: required"));
  if (o.out_root.empty()) return ErrorExit(absl::InvalidArgumentError("flag --out: required (the export root)"));
  absl::StatusOr<proto::ValueType> type = storage::ParseValueType(FLAGS_dtype);
  if (!type.ok()) return ErrorExit(absl::InvalidArgumentError(absl::StrCat("flag --dtype: ", type.status().message())));
  o.value_type = *type;
  proto::JobConfig config;
  if (!FLAGS_config.empty()) {
    absl::StatusOr<proto::JobConfig> c = proto::LoadJobConfig(FLAGS_config);
    if (!c.ok()) return ErrorExit(c.status());
    config = *std::move(c);
    o.config = &config;
  }
  absl::StatusOr<proto::ExportManifest> m = storage::ExportCheckpoint(o);
  if (!m.ok()) return ErrorExit(m.status());
  std::printf("export: version %llu (%s) of checkpoint %llu -> %s/%llu\n",
              static_cast<unsigned long long>(m->version()),
              m->base_version() ? absl::StrCat("delta on ", m->base_version()).c_str() : "full",
              static_cast<unsigned long long>(m->checkpoint_id()), o.out_root.c_str(),
              static_cast<unsigned long long>(m->version()));
  return 0;
}

int RunPredict() {
  if (FLAGS_bundle.empty()) return ErrorExit(absl::InvalidArgumentError("flag --bundle: required"));
  if (FLAGS_out.empty()) return ErrorExit(absl::InvalidArgumentError("flag --out: required"));
  absl::StatusOr<std::unique_ptr<serving::Predictor>> predictor = serving::Predictor::Load(FLAGS_bundle);
  if (!predictor.ok()) return ErrorExit(predictor.status());
  serving::PredictFilesOptions o;
  // Without --input: the job's test split, as its config (in the bundle) names it.
  const std::string input = FLAGS_input.empty() ? (*predictor)->config().data().test() : FLAGS_input;
  if (input.empty()) {
    return ErrorExit(absl::InvalidArgumentError("flag --input: required (the bundle's config names no data.test)"));
  }
  for (absl::string_view spec : absl::StrSplit(input, ',', absl::SkipEmpty())) {
    absl::StatusOr<std::vector<std::string>> files = scheduler::ListDataFiles(std::string(spec));
    if (!files.ok()) return ErrorExit(absl::InvalidArgumentError(absl::StrCat("flag --input: ", files.status().message())));
    o.inputs.insert(o.inputs.end(), files->begin(), files->end());
  }
  o.out = FLAGS_out;
  const proto::DataConfig& data = (*predictor)->config().data();
  o.max_bad_lines = data.max_bad_lines();
  o.max_bad_fraction = data.max_bad_fraction();
  o.log_bad_lines_limit = data.log_bad_lines_limit();
  o.on_bad = [](const std::string& what) { std::fprintf(stderr, "bad line: %s\n", what.c_str()); };
  absl::StatusOr<serving::PredictFilesSummary> s = serving::PredictFiles(**predictor, o);
  if (!s.ok()) return ErrorExit(s.status());
  const serving::ModelVersion v = (*predictor)->version();
  std::string line = absl::StrCat("predict: version=", v.version, " lines=", s->lines, " bad_lines=", s->bad_lines);
  // Figures that are undefined (no labels, one class) are left out.
  for (size_t k = 0; k < s->tasks.size(); ++k) {
    const serving::TaskSummary& t = s->tasks[k];
    const std::string suffix = k == 0 ? "" : absl::StrCat("_", t.name);
    if (!std::isnan(t.auc)) absl::StrAppend(&line, " auc", suffix, "=", absl::StrFormat("%.4f", t.auc));
    if (!std::isnan(t.logloss)) absl::StrAppend(&line, " logloss", suffix, "=", absl::StrFormat("%.4f", t.logloss));
  }
  absl::StrAppend(&line, " seconds=", absl::StrFormat("%.2f", s->seconds), " -> ", o.out);
  std::printf("%s\n", line.c_str());
  return 0;
}


// Prints and verifies one checkpoint or bundle directory; the report goes to
// stdout.
int RunInspect(const std::string& dir) {
  absl::Status st = storage::IsExportBundle(dir) ? storage::InspectExport(dir, FLAGS_sample_rows, std::cout)
                                        : storage::InspectCheckpoint(dir, FLAGS_sample_rows, std::cout);
  std::cout.flush();
  if (!st.ok()) return ErrorExit(st);
  return 0;
}

// `ember serve`: loads the bundle, serves it until SIGTERM/SIGINT. Prints
// "serving <name> version <v> on http://host:port" once it listens.
int RunServe() {
  if (FLAGS_bundle.empty()) return ErrorExit(absl::InvalidArgumentError("flag --bundle: required"));
  if (absl::Status st = CheckPort(false); !st.ok()) return ErrorExit(st);
  if (FLAGS_threads < 0) return ErrorExit(absl::InvalidArgumentError("flag --threads: must be >= 0"));
  absl::StatusOr<std::unique_ptr<serving::Predictor>> predictor = serving::Predictor::Load(FLAGS_bundle);
  if (!predictor.ok()) return ErrorExit(predictor.status());
  serving::HttpServerOptions o;
  o.host = FLAGS_host;
  o.port = FLAGS_port;
  o.model_name = FLAGS_model_name;
  o.threads = FLAGS_threads;
  o.max_body_bytes = FLAGS_max_body_bytes;
  o.max_instances = FLAGS_max_instances;
  if (FLAGS_watch) {
    o.watch_root = storage::ExportRootOf(FLAGS_bundle);
    o.watch_interval_ms = FLAGS_watch_interval_ms;
  }
  InstallStopHandler();
  auto server = serving::HttpServer::Start(o, predictor->get());
  if (!server.ok()) return ErrorExit(server.status());
  const serving::ModelVersion v = (*predictor)->version();
  std::printf("serving %s version %llu on http://%s:%d%s\n", (*server)->model_name().c_str(),
              static_cast<unsigned long long>(v.version), FLAGS_host.c_str(), (*server)->port(),
              o.watch_root.empty() ? "" : absl::StrCat(" (watching ", o.watch_root, ")").c_str());
  std::fflush(stdout);
  while (!g_stop_requested.load()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  (*server)->Stop();
  LOG(INFO) << "serve stopped";
  return 0;
}

}  // namespace
}  // namespace ember

int main(int argc, char** argv) {
  gflags::SetUsageMessage(ember::Usage());
  gflags::SetVersionString("0.1");
  // `ember <command> --help`: that command's flags; `ember --help`: the commands.
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0 ||
        std::strcmp(argv[i], "--helpshort") == 0) {
      if (argc > 1 && argv[1][0] != '-' && ember::PrintCommandHelp(argv[1])) return 0;
      std::printf("%s\n", ember::Usage().c_str());
      return 0;
    }
  }
  if (argc < 2 || argv[1][0] == '-') {
    std::fprintf(stderr, "%s\n", ember::Usage().c_str());
    return 2;
  }
  const std::string command = argv[1];
  // `convert FORMAT`, `inspect DIR`: one positional argument.
  std::string positional;
  if (command == "convert" || command == "inspect") {
    if (argc < 3 || argv[2][0] == '-') {
      std::fprintf(stderr, command == "convert" ? "error: convert needs a format: movielens, census, criteo or avazu\n"
                                                : "error: inspect needs a checkpoint or bundle directory\n");
      return 2;
    }
    positional = argv[2];
    for (int i = 2; i + 1 < argc; ++i) argv[i] = argv[i + 1];
    --argc;
  }
  // Drop the command so gflags sees only flags.
  for (int i = 1; i + 1 < argc; ++i) argv[i] = argv[i + 1];
  --argc;
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  if (argc > 1) {
    std::fprintf(stderr, "error: unexpected argument '%s'\n%s\n", argv[1], ember::Usage().c_str());
    return 2;
  }
  // Logs go to stderr unless --log_dir asks for files.
  if (FLAGS_log_dir.empty()) FLAGS_logtostderr = true;
  if (FLAGS_exit_with_parent) {
    // The kernel sends SIGKILL when the parent dies, however it dies; if it
    // died before prctl ran, we were already re-parented.
    const pid_t parent = getppid();
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent || parent == 1) {
      std::fprintf(stderr, "error: --exit_with_parent: the parent process is already gone\n");
      return 1;
    }
  }
  google::InitGoogleLogging(argv[0]);
  if (command == "server" || command == "worker") ember::net::TuneAllocatorForMessages();
  if (command == "scheduler") return ember::RunScheduler();
  if (command == "server") return ember::RunServer();
  if (command == "worker") return ember::RunWorker();
  if (command == "gen-data") return ember::RunGenData();
  if (command == "keygen") return ember::RunKeygen();
  if (command == "k8s") return ember::RunK8s();
  if (command == "convert") return ember::RunConvert(positional);
  if (command == "inspect") return ember::RunInspect(positional);
  if (command == "export") return ember::RunExport();
  if (command == "predict") return ember::RunPredict();
  if (command == "serve") return ember::RunServe();
  std::fprintf(stderr, "error: unknown command '%s'\n%s\n", command.c_str(), ember::Usage().c_str());
  return 2;
}
