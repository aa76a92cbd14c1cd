#!/usr/bin/env bash
# consistency_bench: throughput and test AUC of ASP, SSP (several staleness
# bounds) and BSP with 2 workers, one of them a straggler
# (`ember worker --debug_step_delay_ms=N`), on one data set, one run after the
# other in this one invocation. Prints one key=value figure per line:
#   <mode>_samples_per_sec= <mode>_auc= <mode>_max_clock_gap= (SSP) <mode>_seconds=
#   <mode>_slow_worker_share= (the slowed worker's share of the samples)
#   <mode>_speed_vs_asp= (samples/s over ASP's) <mode>_auc_minus_asp=
# for mode in asp, ssp0, ssp2, ssp8, bsp (--modes), or <mode>_status=timeout
# or =failed when a run does not end (logs under --log-dir). max_clock_gap is
# what the scheduler's result file reports: the largest gap between the
# workers' finished steps (fastest minus slowest, minus one) seen at an SSP
# clock; ASP and BSP send no clocks, so it is printed for SSP modes only.
#
# It starts the processes itself (as launch/local.sh does, which passes no
# worker flags): 1 scheduler, --servers servers, worker 1 at full speed and
# worker 2 with --debug_step_delay_ms. The job config is --config (default
# examples/local.conf) with its train section replaced by
#   train { epochs: E consistency: X staleness: s eval_every_epoch: true }
# Data: --data-dir DIR (DIR/train, DIR/test, DIR/meta.txt); default data/local,
# local.sh's demo set. A DIR that does not exist is generated with
# `ember gen-data --out=DIR` (1M train rows); existing data is only read.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

binary="$root/build/launch/ember"
config="$root/examples/local.conf"
data_dir="$root/data/local"
log_dir=""
port=27300
servers=2
delay_ms=20
epochs=1
timeout=600
modes="asp ssp0 ssp2 ssp8 bsp"

usage() {
  cat <<USAGE
Usage: bench/consistency_bench.sh [options]
  --binary PATH    the ember binary (default build/launch/ember)
  --config FILE    job config whose train section is replaced (default examples/local.conf)
  --data-dir DIR   data set (default data/local; generated with gen-data if absent)
  --log-dir DIR    where configs, logs and result files go (default: a fresh mktemp dir)
  --port P         scheduler port on 127.0.0.1 (default 27300)
  --servers N      servers (default 2)
  --delay-ms N     worker 2 sleeps N ms after each step (default 20)
  --epochs N       epochs per run (default 1)
  --timeout S      a run still going after S seconds is killed and reported (default 600)
  --modes "M ..."  runs, in order, among asp, bsp, ssp<s> (default "$modes")
USAGE
}

while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --data-dir) data_dir="$2"; shift 2 ;;
    --log-dir) log_dir="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --servers) servers="$2"; shift 2 ;;
    --delay-ms) delay_ms="$2"; shift 2 ;;
    --epochs) epochs="$2"; shift 2 ;;
    --timeout) timeout="$2"; shift 2 ;;
    --modes) modes="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
for v in port servers delay_ms epochs timeout; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || { echo "error: --${v//_/-} must be a number, got '${!v}'" >&2; exit 2; }
done
[ -x "$binary" ] || { echo "error: --binary: not an executable: $binary (build the ember target)" >&2; exit 2; }
[ -f "$config" ] || { echo "error: --config: no such file: $config" >&2; exit 2; }
for m in $modes; do
  [[ "$m" =~ ^(asp|bsp|ssp[0-9]+)$ ]] || { echo "error: --modes: '$m' is not asp, bsp or ssp<s>" >&2; exit 2; }
done
if [ ! -e "$data_dir" ]; then
  echo "generating data in $data_dir ..." >&2
  "$binary" gen-data --out="$data_dir" >&2
fi
[ -e "$data_dir/train" ] || { echo "error: --data-dir $data_dir: no train/ in it" >&2; exit 2; }
[ -n "$log_dir" ] || log_dir="$(mktemp -d /tmp/consistency_bench.XXXXXX)"
mkdir -p "$log_dir"
echo "logs in $log_dir" >&2

pids=()
stop_all() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}
trap stop_all EXIT

# value KEY FILE: the value of KEY=... on the file's lines (the final line has
# several key=value fields), empty if absent.
value() {
  grep -o "\(^\| \)$1=[^ ]*" "$2" 2>/dev/null | head -1 | sed "s/^ *$1=//"
}

# write_config MODE FILE: --config with its train section replaced.
write_config() {
  local mode=$1 out=$2 consistency staleness=0
  case "$mode" in
    asp) consistency=ASP ;;
    bsp) consistency=BSP ;;
    ssp*) consistency=SSP; staleness=${mode#ssp} ;;
  esac
  # Drops the top-level train section: "train { ... }" on one line, or from
  # "train {" to the next line that starts with "}".
  awk '/^train[ \t]*\{/ { if ($0 !~ /\}[ \t]*(#.*)?$/) skip = 1; next }
       skip { if ($0 ~ /^\}/) skip = 0; next }
       { print }' "$config" >"$out"
  printf 'train {\n  epochs: %d\n  consistency: %s\n  staleness: %d\n  eval_every_epoch: true\n}\n' \
    "$epochs" "$consistency" "$staleness" >>"$out"
}

# run MODE: one job; leaves $log_dir/MODE/result.txt on success.
run() {
  local mode=$1 dir="$log_dir/$1" endpoint="tcp://127.0.0.1:$port" i start rc
  mkdir -p "$dir"
  write_config "$mode" "$dir/job.conf"
  start=$(date +%s.%N)
  "$binary" scheduler --config="$dir/job.conf" --data_dir="$data_dir" --port="$port" \
    --num_servers="$servers" --num_workers=2 --result_file="$dir/result.txt" \
    --metrics_file="$dir/metrics.jsonl" --exit_with_parent >"$dir/scheduler.out" 2>"$dir/scheduler.log" &
  pids=($!)
  for i in $(seq 1 "$servers"); do
    "$binary" server --scheduler="$endpoint" --host=127.0.0.1 --port=0 --exit_with_parent \
      >/dev/null 2>"$dir/server$i.log" &
    pids+=($!)
  done
  "$binary" worker --scheduler="$endpoint" --exit_with_parent >/dev/null 2>"$dir/worker1.log" &
  pids+=($!)
  "$binary" worker --scheduler="$endpoint" --debug_step_delay_ms="$delay_ms" --exit_with_parent \
    >/dev/null 2>"$dir/worker2.log" &
  pids+=($!)
  local deadline=$(( $(date +%s) + timeout ))
  while kill -0 "${pids[0]}" 2>/dev/null; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "${mode}_status=timeout"
      stop_all
      return 0
    fi
    sleep 0.5
  done
  set +e
  wait "${pids[0]}"; rc=$?
  set -e
  stop_all
  if [ "$rc" -ne 0 ] || [ ! -s "$dir/result.txt" ]; then
    echo "${mode}_status=failed"
    sed -n 's/^error: /  /p' "$dir/scheduler.log" | head -3 >&2
    return 0
  fi
  echo "${mode}_seconds=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')"
  echo "${mode}_samples_per_sec=$(value samples_per_sec "$dir/result.txt")"
  echo "${mode}_auc=$(value auc "$dir/result.txt")"
  # Measured under SSP only; ASP and BSP send no clocks.
  [[ "$mode" == ssp* ]] && echo "${mode}_max_clock_gap=$(value max_clock_gap "$dir/result.txt")"
  # The slowed worker's share of the samples, from the workers' last log line
  # ("worker done: N samples trained"): chunks go to whichever worker asks.
  local n1 n2
  n1=$(sed -n 's/.*worker done: \([0-9]*\) samples.*/\1/p' "$dir/worker1.log" | tail -1)
  n2=$(sed -n 's/.*worker done: \([0-9]*\) samples.*/\1/p' "$dir/worker2.log" | tail -1)
  if [ -n "$n1" ] && [ -n "$n2" ] && [ $((n1 + n2)) -gt 0 ]; then
    awk -v m="$mode" -v a="$n1" -v b="$n2" 'BEGIN { printf "%s_slow_worker_share=%.3f\n", m, b / (a + b) }'
  fi
}

echo "delay_ms=$delay_ms"
echo "epochs=$epochs"
echo "oracle_auc=$(value oracle_auc "$data_dir/meta.txt" 2>/dev/null || true)"
for m in $modes; do run "$m"; done

# Ratios against ASP, when it ran.
asp_sps=$(value samples_per_sec "$log_dir/asp/result.txt")
asp_auc=$(value auc "$log_dir/asp/result.txt")
if [ -n "$asp_sps" ]; then
  for m in $modes; do
    [ "$m" = asp ] && continue
    sps=$(value samples_per_sec "$log_dir/$m/result.txt")
    auc=$(value auc "$log_dir/$m/result.txt")
    [ -n "$sps" ] || continue
    awk -v m="$m" -v s="$sps" -v s0="$asp_sps" -v a="$auc" -v a0="$asp_auc" \
      'BEGIN { printf "%s_speed_vs_asp=%.3f\n%s_auc_minus_asp=%+.4f\n", m, s / s0, m, a - a0 }'
  done
fi
