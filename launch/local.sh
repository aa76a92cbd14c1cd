#!/usr/bin/env bash
# Runs ember on this machine: installs what is missing, builds (Release),
# generates a data set if asked to (or for the default demo), starts 1
# scheduler, S servers and W workers on 127.0.0.1, trains, evaluates, stops
# everything, and ends with
#   final: auc=<a> [oracle_auc=<o>] logloss=<l> samples=<n> samples_per_sec=<r> ...
#   exported: bundle=<dir> export_auc=<a> ...
# the second line being the trained model, exported for serving (into
# <log dir>/export, or --export-dir) and scored on the test split by
# `ember predict`.
# The job checkpoints into <log dir>/checkpoints (or --checkpoint-dir). A
# process killed by a signal (kill -9, the OOM killer) is started again, as
# Kubernetes or Slurm would: a server or worker alone (the scheduler restores
# every server from the newest checkpoint, or requeues the worker's chunks),
# the scheduler with the whole cluster and --resume; at most --max-restarts
# times. A process that exits with an error stops the job. Ctrl-C (or SIGTERM)
# checkpoints, stops every process, and prints how to resume. The processes
# die with this script, even if it is killed with SIGKILL.
#
# Data: it never deletes or overwrites data it did not generate. --data-dir
# DIR trains on DIR/train and DIR/test whatever wrote them (ember convert, ember
# gen-data, or your own logs; DIR/meta.txt is optional). It generates into DIR
# only when DIR does not exist and --generate (or --gen) is given, or for the
# default demo directory data/local.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"

servers=2 workers=2 port=27100 server_port=0 epochs=0
config="$EMBER_ROOT/examples/local.conf"
config_given=0
default_data_dir="$EMBER_ROOT/data/local"
data_dir=""
generate=0
build_dir="$EMBER_ROOT/build"
log_dir=""
install=1
gen_flags=()
cmake_flags=()
binary=""
checkpoint_dir=""
export_dir=""
export_every=0
checkpoint_every=0
resume=0
max_restarts=3
secure=0
keys_dir=""

usage() {
  cat <<USAGE
Usage: launch/local.sh [options]
  --servers N      servers to start (default 2)
  --workers N      workers to start (default 2)
  --config FILE    job config (default examples/local.conf). Without --data-dir,
                   a config of your own reads the data paths it names.
  --data-dir DIR   train on DIR/train and DIR/test (DIR/meta.txt, optional, gives
                   the oracle AUC of generated data). Default: data/local, which
                   is generated on first use with the demo config.
  --generate       generate a synthetic set into --data-dir if it does not exist
                   (never into an existing directory)
  --gen FLAG       extra flag for 'ember gen-data' (repeatable; implies
                   --generate), e.g. --gen --train_rows=5000000
  --port P         scheduler port on 127.0.0.1 (default 27100)
  --server-port P  first server port: servers listen on P, P+1, ... (default: any free ports)
  --epochs N       override train.epochs
  --build-dir DIR  build directory (default build)
  --log-dir DIR    where process logs go (default: a fresh directory under out/)
  --no-install     do not apt-get missing packages
  --cmake FLAG     extra cmake flag for the build (repeatable), e.g. --cmake -DEMBER_MARCH=native
  --binary PATH    use this ember binary: no install, no build
  --checkpoint-dir DIR  where the job's checkpoints go (default: <log dir>/checkpoints)
  --checkpoint-every S  take a checkpoint every S seconds of training (default: the config's)
  --export-dir DIR where the trained model is exported for serving (default: <log dir>/export);
                   the run ends by scoring the test split with that bundle (ember predict)
  --export-every S also export every S seconds while training, for live serving (ember serve --watch)
  --resume DIR     continue the job whose checkpoints are in DIR (the same
                   --config/--data-dir as the run that wrote them)
  --max-restarts N processes killed by a signal are started again up to N times in all (default 3)
  --secure         run every link with CURVE: keys from 'ember keygen' in <log dir>/keys
                   (or --keys-dir); docs/security.md
  --keys-dir DIR   use the keys 'ember keygen --out DIR' wrote (implies --secure)
USAGE
}

while [ $# -gt 0 ]; do
  case "$1" in
    --servers) servers="$2"; shift 2 ;;
    --workers) workers="$2"; shift 2 ;;
    --config) config="$2"; config_given=1; shift 2 ;;
    --data-dir) data_dir="$2"; shift 2 ;;
    --generate) generate=1; shift ;;
    --port) port="$2"; shift 2 ;;
    --server-port) server_port="$2"; shift 2 ;;
    --epochs) epochs="$2"; shift 2 ;;
    --build-dir) build_dir="$2"; shift 2 ;;
    --log-dir) log_dir="$2"; shift 2 ;;
    --no-install) install=0; shift ;;
    --gen) gen_flags+=("$2"); generate=1; shift 2 ;;
    --cmake) cmake_flags+=("$2"); shift 2 ;;
    --binary) binary="$2"; shift 2 ;;
    --checkpoint-dir) checkpoint_dir="$2"; shift 2 ;;
    --checkpoint-every) checkpoint_every="$2"; shift 2 ;;
    --export-dir) export_dir="$2"; shift 2 ;;
    --export-every) export_every="$2"; shift 2 ;;
    --resume) checkpoint_dir="$2"; resume=1; shift 2 ;;
    --max-restarts) max_restarts="$2"; shift 2 ;;
    --secure) secure=1; shift ;;
    --keys-dir) keys_dir="$2"; secure=1; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
ember_require_numbers servers workers port server_port epochs checkpoint_every export_every max_restarts
[ "$servers" -ge 1 ] && [ "$workers" -ge 1 ] || { echo "error: --servers and --workers must be >= 1" >&2; exit 2; }
[ -f "$config" ] || { echo "error: --config: no such file: $config" >&2; exit 2; }
if [ "$resume" -eq 1 ] && [ ! -d "$checkpoint_dir" ]; then
  echo "error: --resume $checkpoint_dir: no such directory (give the checkpoint directory a stopped run printed)" >&2
  exit 2
fi
# The demo: the default config on the default, generated-on-first-use data.
if [ -z "$data_dir" ] && [ "$config_given" -eq 0 ]; then
  data_dir="$default_data_dir"
  generate=1
fi
if [ -n "$data_dir" ] && [ ! -e "$data_dir" ] && [ "$generate" -eq 0 ]; then
  cat >&2 <<MSG
error: --data-dir $data_dir: no such directory.
  To train on your logs, point --data-dir at a directory holding train/ and test/.
  To generate a synthetic data set there, add --generate (and --gen FLAG for gen-data's flags).
MSG
  exit 2
fi
if [ -n "$data_dir" ] && [ -e "$data_dir" ] && [ ! -e "$data_dir/train" ]; then
  echo "error: --data-dir $data_dir: no train/ in it (a data set is DIR/train and DIR/test; see docs/log_schema.md)" >&2
  exit 2
fi

if [ -n "$binary" ]; then
  [ -x "$binary" ] || { echo "error: --binary: not an executable: $binary" >&2; exit 2; }
  ember="$binary"
else
  [ "$install" -eq 1 ] && ember_install_deps
  echo "building (Release) in $build_dir ..."
  # Built and run on this machine, so it may use all of this CPU (DIN trains
  # about 2x faster than with the portable default); --cmake overrides.
  ember_build "$build_dir" -DEMBER_BUILD_TESTS=OFF -DEMBER_BUILD_BENCHMARKS=OFF -DEMBER_MARCH=native \
    "${cmake_flags[@]}" >/dev/null
  ember="$build_dir/launch/ember"
fi

# Generate only into a directory that does not exist yet: ember gen-data
# refuses anything else, and an existing set is trained on as it is.
if [ -n "$data_dir" ] && [ ! -e "$data_dir" ]; then
  echo "generating data in $data_dir ..."
  "$ember" gen-data --out="$data_dir" "${gen_flags[@]+"${gen_flags[@]}"}"
elif [ "${#gen_flags[@]}" -gt 0 ]; then
  echo "note: $data_dir exists, so it is trained on as it is; the --gen flags apply only to a new directory" >&2
fi

[ -n "$log_dir" ] || log_dir="$EMBER_ROOT/out/local-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$log_dir"
echo "logs in $log_dir"

[ -n "$checkpoint_dir" ] || checkpoint_dir="$log_dir/checkpoints"
[ -n "$export_dir" ] || export_dir="$log_dir/export"
endpoint="tcp://127.0.0.1:$port"
# Every process of this run registers with this token, so a stray process
# of another job cannot join (docs/security.md). In the environment, not on
# the command line, so `ps` does not show it.
EMBER_JOB_TOKEN="$(ember_job_token)"
export EMBER_JOB_TOKEN
key_flags=()
if [ "$secure" -eq 1 ]; then
  if [ -z "$keys_dir" ]; then
    keys_dir="$log_dir/keys"
    [ -e "$keys_dir" ] || "$ember" keygen --out="$keys_dir" >/dev/null
  fi
  [ -f "$keys_dir/authorized_keys" ] || { echo "error: --keys-dir $keys_dir: no authorized_keys (run 'ember keygen --out DIR')" >&2; exit 2; }
  key_flags=(--keys_dir="$keys_dir")
  echo "security: CURVE on every link, keys in $keys_dir"
fi

pids=()
roles=()  # roles[i] names pids[i]: "scheduler", "server 1", "worker 2"
tail_pid=""
cleanup() {
  local p
  [ -n "$tail_pid" ] && kill "$tail_pid" 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do { wait "$p"; } 2>/dev/null || true; done
}
trap cleanup EXIT
# Ctrl-C or SIGTERM: the scheduler checkpoints and stops every process; a
# second one stops at once.
stopping=0
on_stop() {
  if [ "$stopping" -eq 1 ]; then exit 130; fi
  stopping=1
  echo "stopping: the scheduler checkpoints and stops the cluster (again to stop at once) ..." >&2
  kill -TERM "${pids[0]}" 2>/dev/null || true
}
trap on_stop INT TERM

# start_process INDEX ROLE CMD...: starts a process into slot INDEX of
# pids/roles (appending its log), as a child that dies with this script.
start_process() {
  local i=$1 role=$2; shift 2
  local log="$log_dir/${role// /}.log" out=/dev/null
  if [ "$role" = scheduler ]; then
    log="$log_dir/scheduler.log"
    out="$log_dir/scheduler.out"
  fi
  "$@" --exit_with_parent >>"$out" 2>>"$log" &
  pids[$i]=$!
  roles[$i]="$role"
}
sched_flags=("${key_flags[@]+"${key_flags[@]}"}" --config="$config" --port="$port" --num_servers="$servers"
             --num_workers="$workers" --result_file="$log_dir/result.txt"
             --checkpoint_dir="$checkpoint_dir" --export_dir="$export_dir" --metrics_file="$log_dir/metrics.jsonl")
[ "$export_every" -gt 0 ] && sched_flags+=(--export_every_seconds="$export_every")
[ -n "$data_dir" ] && sched_flags+=(--data_dir="$data_dir")
[ "$epochs" -gt 0 ] && sched_flags+=(--epochs="$epochs")
[ "$checkpoint_every" -gt 0 ] && sched_flags+=(--checkpoint_every_seconds="$checkpoint_every")
start_scheduler() {  # [--resume]
  start_process 0 scheduler "$ember" scheduler "${sched_flags[@]}" "$@"
}
start_server() {  # INDEX (1-based)
  local sport=0
  [ "$server_port" -gt 0 ] && sport=$((server_port + $1 - 1))
  start_process "$1" "server $1" "$ember" server "${key_flags[@]+"${key_flags[@]}"}" --scheduler="$endpoint" \
    --host=127.0.0.1 --port="$sport"
}
start_worker() {  # INDEX (1-based)
  start_process $((servers + $1)) "worker $1" "$ember" worker "${key_flags[@]+"${key_flags[@]}"}" --scheduler="$endpoint"
}
start_cluster() {  # [--resume]
  start_scheduler "$@"
  local i
  for i in $(seq 1 "$servers"); do start_server "$i"; done
  for i in $(seq 1 "$workers"); do start_worker "$i"; done
}
if [ "$resume" -eq 1 ]; then start_cluster --resume; else start_cluster; fi
# The scheduler's progress lines, live (the file outlives restarts); --pid: tail
# ends with this script, even one killed with SIGKILL.
tail --pid=$$ -n +1 -f "$log_dir/scheduler.out" 2> /dev/null > >(grep --line-buffered -v '^final:') &
tail_pid=$!

# Restart what dies, as Kubernetes or Slurm would (ember_supervise, setup.sh).
ember_slot_where() { echo "(pid ${pids[$1]})"; }
ember_slot_ready() { return 0; }
ember_has_checkpoint() { ls "$checkpoint_dir"/ckpt-*/MANIFEST >/dev/null 2>&1; }
ember_supervise
ember_finish "launch/local.sh --resume $checkpoint_dir"
ember_report_final "$ember" "$log_dir" "$export_dir" || exit 1
