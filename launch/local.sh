#!/usr/bin/env bash
# Runs ember on this machine: installs what is missing, builds (Release),
# generates a data set if there is none, starts 1 scheduler, S servers and W
# workers on 127.0.0.1, trains, evaluates, stops everything, and ends with
#   final: auc=<a> oracle_auc=<o> logloss=<l> samples=<n> samples_per_sec=<r>
# If any process fails, every process is stopped and the exit code is non-zero.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"

servers=2 workers=2 port=27100 server_port=0 epochs=0
config="$EMBER_ROOT/examples/local.conf"
data_dir="$EMBER_ROOT/data/local"
build_dir="$EMBER_ROOT/build"
log_dir=""
install=1
gen_flags=()
cmake_flags=()
binary=""

usage() {
  cat <<USAGE
Usage: launch/local.sh [options]
  --servers N      servers to start (default 2)
  --workers N      workers to start (default 2)
  --config FILE    job config (default examples/local.conf)
  --data-dir DIR   data set: DIR/train, DIR/test, DIR/meta.txt; generated with
                   'ember gen-data' if DIR/meta.txt is missing (default data/local)
  --port P         scheduler port on 127.0.0.1 (default 27100)
  --server-port P  first server port: servers listen on P, P+1, ... (default: any free ports)
  --epochs N       override train.epochs
  --build-dir DIR  build directory (default build)
  --log-dir DIR    where process logs go (default: a fresh directory under out/)
  --no-install     do not apt-get missing packages
  --gen FLAG       extra flag for 'ember gen-data' (repeatable), e.g. --gen --train_rows=5000000
  --cmake FLAG     extra cmake flag for the build (repeatable), e.g. --cmake -DEMBER_MARCH=native
  --binary PATH    use this ember binary: no install, no build
USAGE
}

while [ $# -gt 0 ]; do
  case "$1" in
    --servers) servers="$2"; shift 2 ;;
    --workers) workers="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --data-dir) data_dir="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --server-port) server_port="$2"; shift 2 ;;
    --epochs) epochs="$2"; shift 2 ;;
    --build-dir) build_dir="$2"; shift 2 ;;
    --log-dir) log_dir="$2"; shift 2 ;;
    --no-install) install=0; shift ;;
    --gen) gen_flags+=("$2"); shift 2 ;;
    --cmake) cmake_flags+=("$2"); shift 2 ;;
    --binary) binary="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
for v in servers workers port server_port epochs; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || { echo "error: --$v must be a number, got '${!v}'" >&2; exit 2; }
done
[ "$servers" -ge 1 ] && [ "$workers" -ge 1 ] || { echo "error: --servers and --workers must be >= 1" >&2; exit 2; }
[ -f "$config" ] || { echo "error: --config: no such file: $config" >&2; exit 2; }

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

if [ ! -f "$data_dir/meta.txt" ]; then
  echo "generating data in $data_dir ..."
  "$ember" gen-data --out="$data_dir" --overwrite "${gen_flags[@]}"
fi

[ -n "$log_dir" ] || log_dir="$EMBER_ROOT/out/local-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$log_dir"
echo "logs in $log_dir"

pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

sched_flags=(--config="$config" --port="$port" --data_dir="$data_dir" --num_servers="$servers"
             --num_workers="$workers" --result_file="$log_dir/result.txt")
[ "$epochs" -gt 0 ] && sched_flags+=(--epochs="$epochs")
"$ember" scheduler "${sched_flags[@]}" >"$log_dir/scheduler.out" 2>"$log_dir/scheduler.log" &
pids+=($!)
endpoint="tcp://127.0.0.1:$port"
for i in $(seq 1 "$servers"); do
  sport=0
  [ "$server_port" -gt 0 ] && sport=$((server_port + i - 1))
  "$ember" server --scheduler="$endpoint" --host=127.0.0.1 --port="$sport" >"$log_dir/server$i.log" 2>&1 &
  pids+=($!)
done
for i in $(seq 1 "$workers"); do
  "$ember" worker --scheduler="$endpoint" >"$log_dir/worker$i.log" 2>&1 &
  pids+=($!)
done
# The scheduler's progress lines, live.
tail -n +1 -f "$log_dir/scheduler.out" --pid="${pids[0]}" 2>/dev/null | grep -v '^final:' &
tail_pid=$!

# Poll every process; the first failure stops the rest.
status=0
running=("${pids[@]}")
while [ ${#running[@]} -gt 0 ] && [ "$status" -eq 0 ]; do
  still=()
  for p in "${running[@]}"; do
    if kill -0 "$p" 2>/dev/null; then
      still+=("$p")
    else
      set +e
      wait "$p"
      rc=$?
      set -e
      if [ "$rc" -ne 0 ]; then
        status=$rc
        echo "error: a process (pid $p) exited with status $rc; stopping the cluster (logs in $log_dir)" >&2
        grep -h "^error:" "$log_dir"/*.log 2>/dev/null | head -5 >&2 || true
      fi
    fi
  done
  running=("${still[@]+"${still[@]}"}")
  [ ${#running[@]} -gt 0 ] && sleep 0.5
done
cleanup
pids=()
wait "$tail_pid" 2>/dev/null || true
if [ "$status" -ne 0 ] || ! grep -q '^final:' "$log_dir/scheduler.out"; then
  echo "error: the job failed (see $log_dir)" >&2
  exit 1
fi
grep '^final:' "$log_dir/scheduler.out" | tail -1
