#!/usr/bin/env bash
# Submits one ember job to Slurm (launch/slurm/ember.sbatch): 1 scheduler,
# --servers servers and --workers workers as the tasks of one allocation.
# Prints the job id, the job's output file (it ends with the `final:` line)
# and its directory (logs per task, checkpoints, export). Every path must be
# visible on every node of the allocation (a shared file system).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
source "$root/launch/setup.sh"

servers=1 workers=1 nodes=1 port=27100 server_port=0 epochs=0 checkpoint_every=0 max_requeues=2
config="$root/examples/local.conf" data_dir="" job_dir="" keys_dir="" insecure=0 wait=0
binary="$root/build/launch/ember"
usage() {
  cat <<USAGE
Usage: launch/slurm/submit.sh [options] [-- sbatch options...]
  --servers N         servers (default 1)
  --workers N         workers (default 1); the job has 1 + servers + workers tasks
  --nodes N           nodes of the allocation (default 1); more than one needs --keys-dir or --insecure
  --config FILE       job config (default examples/local.conf)
  --data-dir DIR      train on DIR/train, test on DIR/test (DIR/meta.txt: the oracle AUC)
  --epochs N          override train.epochs
  --port P            the scheduler's port, fixed (default 27100), on the allocation's first node
  --server-port P     servers listen on P + their task's index on the node (default 0: any free port)
  --job-dir DIR       the job's directory: output file, logs, checkpoints, export (default out/slurm-<time>);
                      a new job refuses a directory that holds checkpoints
  --keys-dir DIR      CURVE keys from 'ember keygen --out DIR' (docs/security.md); every process listens
                      on 0.0.0.0 and authenticates its peers
  --insecure          several nodes (or 0.0.0.0) without keys, on a network you trust
  --checkpoint-every S  checkpoint every S seconds of training (default: the config's)
  --max-requeues N    a failed run with a checkpoint requeues the job, up to N times (default 2)
  --binary PATH       the ember binary (default build/launch/ember)
  --wait              wait for the job to end; print its final line; exit with its status
  Anything after -- goes to sbatch as it is (e.g. -- --partition=cpu --time=2:00:00 --overcommit).
USAGE
}
sbatch_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --servers) servers="$2"; shift 2 ;;
    --workers) workers="$2"; shift 2 ;;
    --nodes) nodes="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --data-dir) data_dir="$2"; shift 2 ;;
    --epochs) epochs="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --server-port) server_port="$2"; shift 2 ;;
    --job-dir) job_dir="$2"; shift 2 ;;
    --keys-dir) keys_dir="$2"; shift 2 ;;
    --insecure) insecure=1; shift ;;
    --checkpoint-every) checkpoint_every="$2"; shift 2 ;;
    --max-requeues) max_requeues="$2"; shift 2 ;;
    --binary) binary="$2"; shift 2 ;;
    --wait) wait=1; shift ;;
    --) shift; sbatch_args=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
ember_require_numbers servers workers nodes port server_port epochs checkpoint_every max_requeues
[ "$servers" -ge 1 ] && [ "$workers" -ge 1 ] && [ "$nodes" -ge 1 ] ||
  { echo "error: --servers, --workers and --nodes must be >= 1" >&2; exit 2; }
[ "$port" -ge 1 ] && [ "$port" -le 65535 ] || { echo "error: --port must be a fixed port in [1, 65535]" >&2; exit 2; }
[ -f "$config" ] || { echo "error: --config: no such file: $config" >&2; exit 2; }
[ -x "$binary" ] || { echo "error: --binary: not an executable: $binary (build it, or pass --binary)" >&2; exit 2; }
if [ -n "$data_dir" ] && [ ! -d "$data_dir/train" ]; then
  echo "error: --data-dir $data_dir: no train/ in it (docs/log_schema.md)" >&2; exit 2
fi
if [ -n "$keys_dir" ] && [ ! -f "$keys_dir/authorized_keys" ]; then
  echo "error: --keys-dir $keys_dir: no authorized_keys (run 'ember keygen --out DIR')" >&2; exit 2
fi
if [ "$nodes" -gt 1 ] && [ -z "$keys_dir" ] && [ "$insecure" -eq 0 ]; then
  echo "error: --nodes $nodes: a job on several nodes needs --keys-dir DIR (ember keygen --out DIR), or --insecure" \
       "on a network you trust (docs/security.md)" >&2
  exit 2
fi
[ -n "$job_dir" ] || job_dir="$root/out/slurm-$(date +%Y%m%d-%H%M%S)"
if ls -d "$job_dir"/checkpoints/ckpt-* >/dev/null 2>&1; then
  echo "error: --job-dir $job_dir holds another job's checkpoints; give this job its own directory" \
       "('scontrol requeue JOBID' continues that one)" >&2
  exit 2
fi
mkdir -p "$job_dir"
abs() { (cd "$(dirname "$1")" && echo "$(pwd)/$(basename "$1")"); }

# The job reads its settings from the environment sbatch passes on.
export EMBER_ROOT="$root" EMBER_BINARY="$(abs "$binary")" EMBER_JOB_DIR="$(abs "$job_dir")"
export EMBER_CONFIG="$(abs "$config")" EMBER_SERVERS="$servers" EMBER_WORKERS="$workers"
export EMBER_PORT="$port" EMBER_SERVER_PORT="$server_port" EMBER_EPOCHS="$epochs" EMBER_INSECURE="$insecure"
export EMBER_CHECKPOINT_EVERY="$checkpoint_every" EMBER_MAX_REQUEUES="$max_requeues"
export EMBER_DATA_DIR="" EMBER_KEYS_DIR=""
[ -n "$data_dir" ] && EMBER_DATA_DIR="$(abs "$data_dir")"
[ -n "$keys_dir" ] && EMBER_KEYS_DIR="$(abs "$keys_dir")"
output="$EMBER_JOB_DIR/slurm-%j.out"
flags=(--parsable --nodes="$nodes" --ntasks=$((1 + servers + workers)) --output="$output" --export=ALL)
[ "$wait" -eq 1 ] && flags+=(--wait)
set +e
job=$(sbatch "${flags[@]}" "${sbatch_args[@]+"${sbatch_args[@]}"}" "$here/ember.sbatch")
rc=$?
set -e
job="${job%%;*}"
output="${output//%j/$job}"
if [ "$wait" -eq 0 ]; then
  [ "$rc" -eq 0 ] || { echo "error: sbatch failed (exit status $rc)" >&2; exit 1; }
  echo "submitted job $job: output $output, logs and checkpoints in $EMBER_JOB_DIR"
  exit 0
fi
[ -f "$output" ] && cat "$output"
exit "$rc"
