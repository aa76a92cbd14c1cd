// `ember k8s`: writes the Kubernetes objects of one job as YAML text, built
// here by hand (a few fixed shapes; every user value quoted or checked first).
#include "launch/k8s.h"

#include <sys/stat.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "proto/config.h"

namespace ember::launch {
namespace {

// Where the pods see their volumes.
constexpr char kConfigDir[] = "/ember/config";
constexpr char kJobDir[] = "/ember/job";
constexpr char kDataDir[] = "/ember/data";
constexpr char kKeysDir[] = "/ember/keys";
// Seconds a server or worker that exited 0 waits for the scheduler's result
// file: present, the job is over; absent, the scheduler was stopped and will
// resume, so the process must be started again.
constexpr int kResultWaitSeconds = 60;

absl::Status FlagError(absl::string_view flag, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("flag --", flag, ": ", why));
}

// RFC 1123 label: what Kubernetes requires of Service and pod names.
bool IsDnsLabel(absl::string_view s, size_t max_len) {
  if (s.empty() || s.size() > max_len) return false;
  for (char c : s) {
    if (!(absl::ascii_islower(c) || absl::ascii_isdigit(c) || c == '-')) return false;
  }
  return s.front() != '-' && s.back() != '-';
}

// RFC 1123 subdomain: dot-separated labels, at most 253 characters (claim
// and Secret names, the cluster domain).
bool IsDnsSubdomain(absl::string_view s) {
  if (s.empty() || s.size() > 253) return false;
  for (absl::string_view label : absl::StrSplit(s, '.')) {
    if (!IsDnsLabel(label, 63)) return false;
  }
  return true;
}

// A path that may stand unquoted in the pods' shell scripts.
bool IsPlainPath(absl::string_view s) {
  if (s.empty() || s.front() != '/') return false;
  for (char c : s) {
    if (!(absl::ascii_isalnum(c) || c == '/' || c == '.' || c == '_' || c == '-')) return false;
  }
  return true;
}

// A Kubernetes quantity as volume sizes are written: 10Gi, 500M, 1.5Ti.
bool IsQuantity(absl::string_view s) {
  size_t i = 0;
  while (i < s.size() && absl::ascii_isdigit(s[i])) ++i;
  if (i == 0) return false;
  if (i < s.size() && s[i] == '.') {
    const size_t frac = ++i;
    while (i < s.size() && absl::ascii_isdigit(s[i])) ++i;
    if (i == frac) return false;
  }
  const absl::string_view suffix = s.substr(i);
  for (absl::string_view ok :
       {"", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E"}) {
    if (suffix == ok) return true;
  }
  return false;
}

// A YAML double-quoted scalar (JSON escapes are valid YAML).
std::string Q(absl::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20 || c == 0x7f) {
          absl::StrAppend(&out, absl::StrFormat("\\x%02x", c));
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

// `text` as the value of a mapping key whose line is indented by `indent`
// spaces: a literal block (readable, exact) when the text allows one, else a
// double-quoted scalar.
std::string Block(absl::string_view text, int indent) {
  bool literal = !text.empty() && text.front() != ' ' && text.front() != '\t';
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    // A line of blanks only, or a control character other than a tab, would
    // not survive a literal block byte for byte.
    if (!line.empty() && line.find_first_not_of(" \t") == absl::string_view::npos) literal = false;
    for (unsigned char c : line) {
      if ((c < 0x20 && c != '\t') || c == 0x7f) literal = false;
    }
  }
  if (!literal) return Q(text);
  // Chomping: keep exactly the trailing newlines the text has.
  absl::string_view body = text;
  size_t trailing = 0;
  while (!body.empty() && body.back() == '\n') {
    body.remove_suffix(1);
    ++trailing;
  }
  const char* chomp = trailing == 0 ? "-" : trailing == 1 ? "" : "+";
  const std::string pad(indent + 2, ' ');
  std::string out = absl::StrCat("|", chomp);
  for (absl::string_view line : absl::StrSplit(body, '\n')) {
    absl::StrAppend(&out, "\n", line.empty() ? "" : pad, line);
  }
  for (size_t i = 1; i < trailing; ++i) out += "\n";
  return out;
}

// Indents every line of `text` by `n` spaces; the result ends with one
// newline.
std::string Indent(absl::string_view text, int n) {
  if (!text.empty() && text.back() == '\n') text.remove_suffix(1);
  const std::string pad(n, ' ');
  std::string out;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    absl::StrAppend(&out, line.empty() ? "" : pad, line, "\n");
  }
  return out;
}

std::string Header(const std::string& name) {
  return absl::StrCat("# ember k8s: job ", name, " (generated by `ember k8s`; docs/launch.md)\n");
}

struct Job {
  K8sOptions o;
  proto::JobConfig config;
  std::string config_text;
  int servers = 0;
  int workers = 0;
  bool spill = false;  // storage.memory_budget_bytes > 0: the servers' RocksDB tier
  std::string scheduler_endpoint;
};

std::string Labels(const Job& j, absl::string_view component, int indent) {
  return Indent(absl::StrCat("app.kubernetes.io/name: ember\napp.kubernetes.io/instance: ",
                             Q(j.o.name), "\napp.kubernetes.io/component: ", component),
                indent);
}

std::string Metadata(const Job& j, absl::string_view name, absl::string_view component) {
  return absl::StrCat("metadata:\n  name: ", Q(name), "\n  namespace: ", Q(j.o.namespace_name),
                      "\n  labels:\n", Labels(j, component, 4), "");
}

// The flags every node of the job gets for its links.
std::string SecurityFlags(const Job& j) {
  return j.o.insecure ? "--insecure" : absl::StrCat("--keys_dir=", kKeysDir);
}

// Pod-level volumes and the container's mounts for `role`.
struct Volumes {
  std::string pod;     // under spec.volumes
  std::string mounts;  // under containers[0].volumeMounts
};

Volumes VolumesFor(const Job& j, absl::string_view role) {
  Volumes v;
  const bool scheduler = role == "scheduler";
  // The shared job directory: the scheduler and the servers write
  // checkpoints there, the workers only look for the result. (Not mounted
  // read-only on the workers: the kubelet creates the sub-path directory when
  // a worker starts first.)
  absl::StrAppend(&v.pod,
                  "- name: job\n  persistentVolumeClaim:\n    claimName: ", Q(j.o.job_claim), "\n");
  absl::StrAppend(&v.mounts, "- name: job\n  mountPath: ", kJobDir, "\n  subPath: ", Q(j.o.name),
                  "\n");
  if (scheduler) {
    absl::StrAppend(&v.pod, "- name: config\n  configMap:\n    name: ", Q(j.o.name + "-config"),
                    "\n");
    absl::StrAppend(&v.mounts, "- name: config\n  mountPath: ", kConfigDir, "\n  readOnly: true\n");
  }
  if (!j.o.data_claim.empty() && role != "server") {
    absl::StrAppend(&v.pod,
                    "- name: data\n  persistentVolumeClaim:\n    claimName: ", Q(j.o.data_claim),
                    "\n    readOnly: true\n");
    absl::StrAppend(&v.mounts, "- name: data\n  mountPath: ", kDataDir, "\n  readOnly: true\n");
  }
  if (!j.o.insecure) {
    // Only this role's key pair and the list of admitted keys; mode 0400,
    // since ember refuses a key file others can read.
    absl::StrAppend(&v.pod, "- name: keys\n  secret:\n    secretName: ", Q(j.o.secret),
                    "\n    defaultMode: 256  # 0400\n    items:\n    - key: ", role,
                    ".key\n      path: ", role,
                    ".key\n    - key: authorized_keys\n      path: authorized_keys\n");
    absl::StrAppend(&v.mounts, "- name: keys\n  mountPath: ", kKeysDir, "\n  readOnly: true\n");
  }
  if (role == "server" && j.spill) {
    absl::StrAppend(&v.mounts, "- name: spill\n  mountPath: ", Q(j.config.storage().spill_path()),
                    "\n");
  }
  return v;
}

std::string Env(const Job& j) {
  return absl::StrCat(
      "- name: EMBER_JOB_TOKEN\n  valueFrom:\n    secretKeyRef:\n      name: ", Q(j.o.secret),
      "\n      key: job-token\n"
      "- name: POD_NAME\n  valueFrom:\n    fieldRef:\n      fieldPath: metadata.name\n"
      "- name: POD_IP\n  valueFrom:\n    fieldRef:\n      fieldPath: status.podIP\n");
}

// An exec probe that passes while a socket of this pod listens on `port`
// (state 0A in /proc/net/tcp, which shows the pod's network namespace), or
// once the job has finished. It connects to nothing: a TCP probe would open a
// connection that a CURVE socket counts and logs as a rejected peer.
std::string Probe(int port, int period, int failures) {
  const std::string script = absl::StrFormat(
      "test -e %s/result.txt || grep -q ':%04X 00000000:0000 0A' /proc/net/tcp", kJobDir, port);
  return absl::StrFormat(
      "exec:\n  command: [\"/bin/sh\", \"-c\", %s]\nperiodSeconds: %d\nfailureThreshold: "
      "%d\ntimeoutSeconds: 5\n",
      Q(script), period, failures);
}

// The lines after a server's or worker's `ember ... &`: the shell (the
// container's PID 1) passes SIGTERM on to ember and exits with it; after a
// clean exit, it tells the job's end from a stopped scheduler.
std::string AfterCleanExit(absl::string_view what_then) {
  return absl::StrFormat(
      "pid=$!\n"
      "stop=\n"
      "trap 'stop=1; kill -TERM $pid 2>/dev/null || exit 143' TERM INT\n"
      "wait $pid; rc=$?\n"
      "if [ -n \"$stop\" ]; then wait $pid; exit 143; fi\n"
      "if [ $rc -eq 0 ]; then\n"
      "  # 0 also ends a node when the scheduler was stopped (SIGTERM) and will resume: only the\n"
      "  # result file says the job is over.\n"
      "  i=0\n"
      "  while [ $i -lt %d ]; do\n"
      "    if [ -e %s/result.txt ]; then echo \"ember: the job has finished\"; %s; fi\n"
      "    sleep 1; i=$((i + 1))\n"
      "  done\n"
      "  echo \"ember: the scheduler stopped before the job's end; exiting so that this node is "
      "started again\"\n"
      "  exit 1\n"
      "fi\n"
      "exit $rc\n",
      kResultWaitSeconds, kJobDir, what_then);
}

// Idles until SIGTERM, which it obeys at once (the shell is the container's
// PID 1, which ignores signals it has no trap for).
constexpr char kIdle[] = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done";

// The role's one container: `script` run by /bin/sh, the environment, and
// `mounts`; a role that listens (`port` > 0) also gets the port and its
// readiness and liveness probes.
std::string Container(const Job& j, absl::string_view role, absl::string_view script, int port,
                      absl::string_view mounts) {
  std::string c = absl::StrCat("- name: ", role, "\n  image: ", Q(j.o.image),
                               "\n  command: [\"/bin/sh\", \"-c\"]\n  args:\n  - ",
                               Block(script, 2), "\n  env:\n", Indent(Env(j), 2), "");
  if (port > 0) {
    absl::StrAppend(&c, "  ports:\n  - name: ember\n    containerPort: ", port,
                    "\n    protocol: TCP\n  readinessProbe:\n", Indent(Probe(port, 5, 3), 4),
                    "  livenessProbe:\n", Indent(Probe(port, 10, 6), 4));
  }
  absl::StrAppend(&c, "  volumeMounts:\n", Indent(mounts, 2), "");
  return c;
}

std::string ConfigMap(const Job& j) {
  return absl::StrCat(Header(j.o.name), "apiVersion: v1\nkind: ConfigMap\n",
                      Metadata(j, j.o.name + "-config", "config"),
                      "data:\n  job.conf: ", Block(j.config_text, 2), "\n");
}

std::string SchedulerService(const Job& j) {
  return absl::StrCat(Header(j.o.name), "apiVersion: v1\nkind: Service\n",
                      Metadata(j, j.o.name + "-scheduler", "scheduler"),
                      "spec:\n  type: ClusterIP\n  selector:\n", Labels(j, "scheduler", 4),
                      "  ports:\n  - name: ember\n    port: ", j.o.scheduler_port,
                      "\n    targetPort: ", j.o.scheduler_port, "\n    protocol: TCP\n");
}

std::string SchedulerDeployment(const Job& j) {
  std::string flags =
      absl::StrCat(" --config=", kConfigDir, "/job.conf --host=0.0.0.0 --advertise_host=", j.o.name,
                   "-scheduler.", j.o.namespace_name, ".svc.", j.o.cluster_domain,
                   " --port=", j.o.scheduler_port, " \\\n  --num_servers=", j.servers,
                   " --num_workers=", j.workers, " --checkpoint_dir=", kJobDir,
                   "/checkpoints --export_dir=", kJobDir, "/export \\\n  --metrics_file=", kJobDir,
                   "/metrics.jsonl --result_file=", kJobDir, "/result.txt ", SecurityFlags(j));
  if (!j.o.data_claim.empty()) absl::StrAppend(&flags, " --data_dir=", kDataDir);
  if (j.o.epochs > 0) absl::StrAppend(&flags, " --epochs=", j.o.epochs);
  if (j.o.checkpoint_every_seconds > 0)
    absl::StrAppend(&flags, " --checkpoint_every_seconds=", j.o.checkpoint_every_seconds);
  const std::string script = absl::StrCat(
      "if [ -e ", kJobDir,
      "/result.txt ]; then\n"
      "  echo \"ember: job ",
      j.o.name, " has finished; its result:\"; cat ", kJobDir, "/result.txt\n  ", kIdle,
      "\nfi\n"
      "# A restarted scheduler resumes from the newest complete checkpoint (one with a MANIFEST).\n"
      "resume=\n"
      "for m in ",
      kJobDir,
      "/checkpoints/ckpt-*/MANIFEST; do if [ -e \"$m\" ]; then resume=--resume; fi; done\n"
      "exec ",
      j.o.binary, " scheduler", flags, " $resume\n");
  const Volumes v = VolumesFor(j, "scheduler");
  const std::string container = Container(j, "scheduler", script, j.o.scheduler_port, v.mounts);
  return absl::StrCat(
      Header(j.o.name), "apiVersion: apps/v1\nkind: Deployment\n",
      Metadata(j, j.o.name + "-scheduler", "scheduler"),
      "spec:\n  replicas: 1\n"
      "  # Never two schedulers on one checkpoint directory: the old pod goes before the new one "
      "starts.\n"
      "  strategy:\n    type: Recreate\n  selector:\n    matchLabels:\n",
      Labels(j, "scheduler", 6), "  template:\n    metadata:\n      labels:\n",
      Labels(j, "scheduler", 8),
      "    spec:\n      restartPolicy: Always\n"
      "      # SIGTERM: the scheduler checkpoints at the next step boundary and stops every node.\n"
      "      terminationGracePeriodSeconds: 300\n      containers:\n",
      Indent(container, 6), "      volumes:\n", Indent(v.pod, 6), "");
}

std::string ServersService(const Job& j) {
  return absl::StrCat(
      Header(j.o.name), "apiVersion: v1\nkind: Service\n",
      Metadata(j, j.o.name + "-servers", "server"),
      "spec:\n  clusterIP: None\n"
      "  # Names resolve before a server is ready (it registers before its probe passes).\n"
      "  publishNotReadyAddresses: true\n  selector:\n",
      Labels(j, "server", 4), "  ports:\n  - name: ember\n    port: ", j.o.server_port,
      "\n    targetPort: ", j.o.server_port, "\n    protocol: TCP\n");
}

std::string ServersStatefulSet(const Job& j) {
  const std::string script = absl::StrCat(
      "if [ -e ", kJobDir, "/result.txt ]; then echo \"ember: job ", j.o.name, " has finished\"; ",
      kIdle, "; fi\n",
      "# The rank is the pod's ordinal (<name>-server-<i>); the others reach it at its pod IP.\n",
      j.o.binary, " server --scheduler=", j.scheduler_endpoint,
      " --host=0.0.0.0 --advertise_host=\"$POD_IP\" \\\n  --port=", j.o.server_port,
      " --rank=\"${POD_NAME##*-}\" ", SecurityFlags(j), " &\n", AfterCleanExit(kIdle));
  const Volumes v = VolumesFor(j, "server");
  const std::string container = Container(j, "server", script, j.o.server_port, v.mounts);
  std::string out = absl::StrCat(
      Header(j.o.name), "apiVersion: apps/v1\nkind: StatefulSet\n",
      Metadata(j, j.o.name + "-server", "server"),
      "spec:\n  serviceName: ", Q(j.o.name + "-servers"), "\n  replicas: ", j.servers,
      "\n  # All at once: a server is ready only once the job runs, which needs every server.\n"
      "  podManagementPolicy: Parallel\n  selector:\n    matchLabels:\n",
      Labels(j, "server", 6), "  template:\n    metadata:\n      labels:\n", Labels(j, "server", 8),
      "    spec:\n      restartPolicy: Always\n      terminationGracePeriodSeconds: 60\n      "
      "containers:\n",
      Indent(container, 6), "      volumes:\n", Indent(v.pod, 6), "");
  if (j.spill) {
    absl::StrAppend(
        &out, "  volumeClaimTemplates:\n  - metadata:\n      name: spill\n    spec:\n",
        "      accessModes: [\"ReadWriteOnce\"]\n",
        j.o.spill_storage_class.empty()
            ? ""
            : absl::StrCat("      storageClassName: ", Q(j.o.spill_storage_class), "\n"),
        "      resources:\n        requests:\n          storage: ", Q(j.o.spill_size), "\n");
  }
  return out;
}

std::string WorkersJob(const Job& j) {
  const std::string script = absl::StrCat("# The rank is the Job's completion index.\n", j.o.binary,
                                          " worker --scheduler=", j.scheduler_endpoint,
                                          " --rank=\"$JOB_COMPLETION_INDEX\" ", SecurityFlags(j),
                                          " &\n", AfterCleanExit("exit 0"));
  const Volumes v = VolumesFor(j, "worker");
  const std::string container = Container(j, "worker", script, 0, v.mounts);
  return absl::StrCat(Header(j.o.name), "apiVersion: batch/v1\nkind: Job\n",
                      Metadata(j, j.o.name + "-worker", "worker"),
                      "spec:\n  completionMode: Indexed\n  completions: ", j.workers,
                      "\n  parallelism: ", j.workers,
                      "\n  backoffLimit: ", j.o.worker_restarts * j.workers,
                      "\n  template:\n    metadata:\n      labels:\n", Labels(j, "worker", 8),
                      "    spec:\n"
                      "      # A failed worker is started again in place, with its index; ember "
                      "requeues its chunks.\n"
                      "      restartPolicy: OnFailure\n      terminationGracePeriodSeconds: 30\n   "
                      "   containers:\n",
                      Indent(container, 6), "      volumes:\n", Indent(v.pod, 6), "");
}

absl::StatusOr<Job> Check(const K8sOptions& o) {
  Job j;
  j.o = o;
  if (o.config_path.empty()) return FlagError("config", "required (the job config)");
  std::ifstream in(o.config_path, std::ios::binary);
  if (!in)
    return FlagError("config",
                     absl::StrCat(o.config_path, ": cannot read: ", std::strerror(errno)));
  std::stringstream text;
  text << in.rdbuf();
  j.config_text = text.str();
  absl::StatusOr<proto::JobConfig> config = proto::ParseJobConfig(j.config_text, o.config_path);
  if (!config.ok()) return config.status();
  j.config = *std::move(config);
  if (o.num_servers < 0)
    return FlagError("num_servers", "must be >= 0 (0: cluster.num_servers of the config)");
  if (o.num_workers < 0)
    return FlagError("num_workers", "must be >= 0 (0: cluster.num_workers of the config)");
  if (o.epochs < 0) return FlagError("epochs", "must be >= 0 (0: train.epochs of the config)");
  if (o.num_servers > 0) j.config.mutable_cluster()->set_num_servers(o.num_servers);
  if (o.num_workers > 0) j.config.mutable_cluster()->set_num_workers(o.num_workers);
  if (o.epochs > 0) j.config.mutable_train()->set_epochs(o.epochs);
  j.config.mutable_checkpoint()->set_dir(absl::StrCat(kJobDir, "/checkpoints"));
  j.config.mutable_export_()->set_dir(absl::StrCat(kJobDir, "/export"));
  if (o.checkpoint_every_seconds > 0)
    j.config.mutable_checkpoint()->set_every_seconds(o.checkpoint_every_seconds);
  if (absl::Status st = proto::ValidateJobConfig(j.config); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(o.config_path, ": ", st.message()));
  }
  j.servers = static_cast<int>(j.config.cluster().num_servers());
  j.workers = static_cast<int>(j.config.cluster().num_workers());
  if (j.servers < 1 || j.workers < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(o.config_path, ": cluster.num_servers and cluster.num_workers ",
                     "must be at least 1 (or give --num_servers, --num_workers)"));
  }
  if (j.o.name.empty()) {
    const std::string from_config =
        absl::AsciiStrToLower(absl::StrReplaceAll(j.config.name(), {{"_", "-"}}));
    if (!IsDnsLabel(from_config, 40)) {
      return FlagError(
          "name", absl::StrCat("required: the config's name '", j.config.name(),
                               "' does not make a DNS label of at most 40 characters (lowercase "
                               "letters, digits, '-')"));
    }
    j.o.name = from_config;
  } else if (!IsDnsLabel(j.o.name, 40)) {
    return FlagError(
        "name",
        absl::StrCat("'", j.o.name,
                     "' is not a DNS label of at most 40 characters (lowercase "
                     "letters, digits and '-', starting and ending with a letter or digit)"));
  }
  if (!IsDnsLabel(j.o.namespace_name, 63)) {
    return FlagError("k8s_namespace",
                     absl::StrCat("'", j.o.namespace_name, "' is not a DNS label"));
  }
  if (j.o.image.empty())
    return FlagError("image", "required: a container image with ember and /bin/sh");
  for (char c : j.o.image) {
    if (absl::ascii_isspace(c) || absl::ascii_iscntrl(c)) {
      return FlagError("image",
                       absl::StrCat("'", j.o.image, "' holds a space or control character"));
    }
  }
  if (!IsPlainPath(j.o.binary)) {
    return FlagError("binary", absl::StrCat("'", j.o.binary,
                                            "' must be an absolute path of letters, digits, "
                                            "'/', '.', '_' and '-'"));
  }
  for (auto [flag, port] : {std::pair<const char*, int>{"port", j.o.scheduler_port},
                            {"server_port", j.o.server_port}}) {
    if (port < 1 || port > 65535)
      return FlagError(flag, absl::StrCat(port, " is not in [1, 65535]"));
  }
  if (j.o.scheduler_port == j.o.server_port) {
    return FlagError("server_port", absl::StrCat("equals --port (", j.o.scheduler_port,
                                                 "); give the servers another"));
  }
  if (!IsDnsSubdomain(j.o.cluster_domain)) {
    return FlagError("cluster_domain",
                     absl::StrCat("'", j.o.cluster_domain, "' is not a DNS name"));
  }
  if (j.o.job_claim.empty()) {
    return FlagError(
        "job_claim",
        "required: a ReadWriteMany PersistentVolumeClaim for checkpoints, shared by the "
        "scheduler and every server (a replacement server and a restarted scheduler "
        "restore from it)");
  }
  if (!IsDnsSubdomain(j.o.job_claim)) {
    return FlagError("job_claim", absl::StrCat("'", j.o.job_claim, "' is not a valid claim name"));
  }
  if (!j.o.data_claim.empty() && !IsDnsSubdomain(j.o.data_claim)) {
    return FlagError("data_claim",
                     absl::StrCat("'", j.o.data_claim, "' is not a valid claim name"));
  }
  if (j.o.secret.empty()) j.o.secret = j.o.name + "-secrets";
  if (!IsDnsSubdomain(j.o.secret)) {
    return FlagError("secret", absl::StrCat("'", j.o.secret, "' is not a valid Secret name"));
  }
  if (j.o.worker_restarts < 0) return FlagError("worker_restarts", "must be >= 0");
  j.spill = j.config.storage().memory_budget_bytes() > 0;
  if (j.spill) {
    if (!IsQuantity(j.o.spill_size)) {
      return FlagError("spill_size", absl::StrCat("'", j.o.spill_size,
                                                  "' is not a quantity such as 10Gi or 500M"));
    }
    if (!j.o.spill_storage_class.empty() && !IsDnsSubdomain(j.o.spill_storage_class)) {
      return FlagError("spill_storage_class",
                       absl::StrCat("'", j.o.spill_storage_class, "' is not a valid name"));
    }
    const std::string& spill = j.config.storage().spill_path();
    if (spill.empty() || spill.front() != '/' || absl::StartsWith(spill, "/ember")) {
      return absl::InvalidArgumentError(
          absl::StrCat(o.config_path, ": storage.spill_path: '", spill,
                       "' must be an absolute path outside /ember (each server's RocksDB volume is "
                       "mounted there)"));
    }
  }
  j.scheduler_endpoint = absl::StrCat("tcp://", j.o.name, "-scheduler.", j.o.namespace_name,
                                      ".svc.", j.o.cluster_domain, ":", j.o.scheduler_port);
  return j;
}

}  // namespace

absl::StatusOr<std::vector<K8sManifest>> GenerateK8sManifests(const K8sOptions& options) {
  absl::StatusOr<Job> j = Check(options);
  if (!j.ok()) return j.status();
  return std::vector<K8sManifest>{
      {"00-config.yaml", ConfigMap(*j)},
      {"10-scheduler-service.yaml", SchedulerService(*j)},
      {"11-scheduler.yaml", SchedulerDeployment(*j)},
      {"20-servers-service.yaml", ServersService(*j)},
      {"21-servers.yaml", ServersStatefulSet(*j)},
      {"30-workers.yaml", WorkersJob(*j)},
  };
}

absl::Status WriteK8sManifests(const std::vector<K8sManifest>& manifests, const std::string& dir) {
  if (dir.empty()) {
    for (size_t i = 0; i < manifests.size(); ++i) {
      std::fputs(i == 0 ? "" : "---\n", stdout);
      std::fputs(manifests[i].yaml.c_str(), stdout);
    }
    std::fflush(stdout);
    return absl::OkStatus();
  }
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    return FlagError("out", absl::StrCat(dir, ": cannot create: ", std::strerror(errno)));
  }
  for (const K8sManifest& m : manifests) {
    const std::string path = absl::StrCat(dir, "/", m.file);
    const std::string header = m.yaml.substr(0, m.yaml.find('\n') + 1);
    std::ifstream old(path);
    if (old) {
      // Replace only what this command wrote for the same job.
      std::string first;
      std::getline(old, first);
      if (first + "\n" != header) {
        return FlagError(
            "out",
            absl::StrCat(path, " exists and is not this job's manifest; choose another --out"));
      }
    }
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << m.yaml;
    out.close();
    if (!out) return FlagError("out", absl::StrCat(path, ": cannot write: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace ember::launch
