// `ember k8s`: the Kubernetes manifests of one ember job (a ConfigMap, the
// scheduler's Deployment and Service, the servers' StatefulSet and headless
// Service, the workers' Indexed Job), as YAML text. docs/launch.md explains them.
#ifndef EMBER_LAUNCH_K8S_H_
#define EMBER_LAUNCH_K8S_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace ember::launch {

// What the manifests are made for. Every field is checked by
// GenerateK8sManifests; an error names the field as the `ember k8s` flag
// that sets it (e.g. "flag --name: ...").
struct K8sOptions {
  // The job config file (protobuf text); loaded and validated with the
  // overrides below applied. Its text goes into the ConfigMap unchanged.
  std::string config_path;
  // Servers and workers; 0 = cluster.num_servers / num_workers of the config.
  int num_servers = 0;
  int num_workers = 0;
  // Training epochs; 0 = train.epochs of the config.
  int epochs = 0;
  // The job's name: a DNS label (lowercase letters, digits, '-'), at most
  // 40 characters so that "<name>-scheduler" and the pods' names stay within
  // Kubernetes' 63. Empty = the config's `name`, made lowercase.
  std::string name;
  // Namespace the objects go into; a DNS label. Default "default".
  std::string namespace_name = "default";
  // Container image holding `ember` at `binary`, with /bin/sh (the commands
  // are small shell scripts). Required.
  std::string image;
  std::string binary = "/usr/local/bin/ember";
  // The scheduler's port (its Service's too) and every server's port, 1..65535
  // and different. Servers have a fixed port so that their probes know it.
  int scheduler_port = 27100;
  int server_port = 27200;
  // Cluster DNS domain, for the scheduler's Service name.
  std::string cluster_domain = "cluster.local";
  // A ReadWriteMany PersistentVolumeClaim (NFS, CephFS, ...) that the
  // scheduler, every server and every worker mount at /ember/job (sub-path
  // <name>): checkpoints, exports, the metrics file and the result. Required:
  // a server's replacement restores from it, and a restarted scheduler
  // resumes from it.
  std::string job_claim;
  // A claim with the data (DIR/train, DIR/test, DIR/meta.txt), mounted
  // read-only at /ember/data on the scheduler and the workers, which then
  // read it there (`--data_dir`). Empty: the config's data paths are used as
  // they are (they must exist in the image).
  std::string data_claim;
  // The Secret the user created: key `job-token` (EMBER_JOB_TOKEN) and,
  // unless `insecure`, the files of `ember keygen`. Default "<name>-secrets".
  std::string secret;
  // Plain TCP instead of CURVE (`--insecure` on every process).
  bool insecure = false;
  // Each server's volume for the RocksDB tier (volumeClaimTemplates, mounted
  // at the config's storage.spill_path), made only when
  // storage.memory_budget_bytes > 0. A Kubernetes quantity, e.g. "20Gi".
  std::string spill_size = "10Gi";
  // Storage class of the spill volumes; empty = the cluster's default.
  std::string spill_storage_class;
  // Checkpoint every this many seconds; 0 = checkpoint.every_seconds.
  uint32_t checkpoint_every_seconds = 0;
  // Pod failures a worker index may have before the Job gives up, times the
  // number of workers (the Job's backoffLimit).
  int worker_restarts = 6;
};

// One YAML document: `file` is its name in --out (e.g. "30-servers.yaml").
struct K8sManifest {
  std::string file;
  std::string yaml;
};

// Validates `options` and the config, and returns the manifests, in the
// order `kubectl apply -f` should create them. Reads the config file; writes
// nothing. The YAML never holds a secret: the token and keys are referenced
// from options.secret. On failure, INVALID_ARGUMENT (or the config loader's
// error) naming the flag or config field and why.
[[nodiscard]] absl::StatusOr<std::vector<K8sManifest>> GenerateK8sManifests(
    const K8sOptions& options);

// Writes each manifest to `dir`/<file> (creating `dir`; files there are
// replaced only if they are ember k8s manifests of the same job name, i.e.
// start with the header GenerateK8sManifests writes), or, if `dir` is empty,
// all of them to stdout, separated by "---" lines.
[[nodiscard]] absl::Status WriteK8sManifests(const std::vector<K8sManifest>& manifests,
                                             const std::string& dir);

}  // namespace ember::launch

#endif  // EMBER_LAUNCH_K8S_H_
