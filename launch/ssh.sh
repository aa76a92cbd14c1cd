#!/usr/bin/env bash
# Runs one ember job on a list of machines over ssh (docs/launch.md, "ssh"):
# the hostfile names each host and what it runs, e.g.
#   10.0.0.1 scheduler server=1 worker=2
#   10.0.0.2 server=1 worker=2
# It checks that every host answers (ssh BatchMode), optionally copies the
# binary, config and keys to each host (--copy-to), starts the scheduler,
# servers and workers through a small remote wrapper, streams each process's
# stderr into LOG_DIR/<role><i>.log (the scheduler's stdout into
# LOG_DIR/scheduler.out), restarts what dies as launch/local.sh does (killed by
# a signal, or lost with its ssh connection: started again on its host, at
# most --max-restarts times), stops everything on Ctrl-C or failure, and ends
# with the scheduler's `final:` line (and the `exported:` line when the model
# is readable here).
#
# Remote processes never outlive this script: each ssh session's stdin carries
# the job token (first line, so it is on no command line), then a line every
# second; the remote wrapper kills its process (which also has
# --exit_with_parent) when stdin ends or stays silent for --lost-after
# seconds, and a restarted process first kills the one it replaces.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"

hostfile=""
config="$EMBER_ROOT/examples/local.conf"
data_dir="" log_dir="" checkpoint_dir="" export_dir="" job_dir="" keys_dir="" copy_to=""
binary="$EMBER_ROOT/build/launch/ember"
port=27100 server_port=27200 epochs=0 checkpoint_every=0 export_every=0 max_restarts=3
resume=0 insecure=0 secure=0 bind_all=0 connect_timeout=10 lost_after=15 reconnect_timeout=120
ssh_opts=()

usage() {
  cat <<USAGE
Usage: launch/ssh.sh --hostfile FILE [options]
  --hostfile FILE  one host a line: ADDRESS (or USER@ADDRESS) then its roles:
                   scheduler, server[=N], worker[=N]; '#' comments, blank lines.
                   Exactly one scheduler. ADDRESS is what ssh connects to and
                   what the processes listen on and advertise.
  --config FILE    job config (default examples/local.conf)
  --data-dir DIR   train on DIR/train, test on DIR/test; the same path on every
                   host (shared storage)
  --epochs N       override train.epochs
  --port P         the scheduler's port (default 27100)
  --server-port P  servers listen on P, P+1, ... in their order on each host (default 27200)
  --bind-all       listen on 0.0.0.0 and advertise the hostfile's address
  --keys-dir DIR   CURVE keys from 'ember keygen --out DIR' (docs/security.md)
  --secure         CURVE with keys generated for this run into LOG_DIR/keys
                   (the default when neither --keys-dir nor --insecure is given)
  --insecure       plain TCP between hosts, on a network you trust
  --log-dir DIR    here: one log per process, scheduler.out (default out/ssh-<time>)
  --job-dir DIR    on the hosts: checkpoints/, export/, result.txt, metrics.jsonl
                   (default: LOG_DIR, or the --copy-to directory); shared storage
                   for recovery
  --checkpoint-dir DIR  checkpoints (default JOB_DIR/checkpoints); shared by every host
  --export-dir DIR      the exported model (default JOB_DIR/export)
  --checkpoint-every S  a checkpoint every S seconds of training
  --export-every S      also export every S seconds while training
  --resume DIR     continue the job whose checkpoints are in DIR
  --max-restarts N processes killed by a signal or lost with their host are
                   started again up to N times in all (default 3)
  --binary PATH    the ember binary (default build/launch/ember); the same path on
                   every host unless --copy-to
  --copy-to DIR    copy the binary, the config and the keys to DIR on every host
                   and run them from there (default: a shared file system, every
                   path the same on every host)
  --ssh-key FILE   ssh -i FILE        --ssh-config FILE   ssh -F FILE
  --ssh-option OPT ssh -o OPT (repeatable; wins over this script's defaults)
  --connect-timeout S  ssh ConnectTimeout (default 10)
  --lost-after S   a remote process whose launcher is silent this long is killed (default 15)
  --reconnect-timeout S  how long a lost host is waited for before its process restarts (default 120)
USAGE
}

while [ $# -gt 0 ]; do
  case "$1" in
    --hostfile) hostfile="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --data-dir) data_dir="$2"; shift 2 ;;
    --epochs) epochs="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --server-port) server_port="$2"; shift 2 ;;
    --bind-all) bind_all=1; shift ;;
    --keys-dir) keys_dir="$2"; secure=1; shift 2 ;;
    --secure) secure=1; shift ;;
    --insecure) insecure=1; shift ;;
    --log-dir) log_dir="$2"; shift 2 ;;
    --job-dir) job_dir="$2"; shift 2 ;;
    --checkpoint-dir) checkpoint_dir="$2"; shift 2 ;;
    --export-dir) export_dir="$2"; shift 2 ;;
    --checkpoint-every) checkpoint_every="$2"; shift 2 ;;
    --export-every) export_every="$2"; shift 2 ;;
    --resume) checkpoint_dir="$2"; resume=1; shift 2 ;;
    --max-restarts) max_restarts="$2"; shift 2 ;;
    --binary) binary="$2"; shift 2 ;;
    --copy-to) copy_to="$2"; shift 2 ;;
    --ssh-key) ssh_opts+=(-i "$2"); shift 2 ;;
    --ssh-config) ssh_opts+=(-F "$2"); shift 2 ;;
    --ssh-option) ssh_opts+=(-o "$2"); shift 2 ;;
    --connect-timeout) connect_timeout="$2"; shift 2 ;;
    --lost-after) lost_after="$2"; shift 2 ;;
    --reconnect-timeout) reconnect_timeout="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
die() { echo "error: $*" >&2; exit 2; }
ember_require_numbers port server_port epochs checkpoint_every export_every max_restarts connect_timeout lost_after \
  reconnect_timeout
[ "$port" -ge 1 ] && [ "$port" -le 65535 ] || die "--port must be a fixed port in [1, 65535]"
[ "$server_port" -ge 1 ] && [ "$server_port" -le 65535 ] || die "--server-port must be a port in [1, 65535]"
[ "$lost_after" -ge 3 ] || die "--lost-after must be at least 3 (seconds)"
[ -n "$hostfile" ] || { usage >&2; die "--hostfile is required"; }
[ -f "$hostfile" ] || die "--hostfile: no such file: $hostfile"
[ -f "$config" ] || die "--config: no such file: $config"
[ -x "$binary" ] || die "--binary: not an executable: $binary (build it: cmake --build build --target ember)"
[ "$insecure" -eq 1 ] && [ "$secure" -eq 1 ] && die "--insecure and --keys-dir/--secure exclude each other"
[ "$insecure" -eq 0 ] && secure=1
[ -n "$keys_dir" ] && [ ! -f "$keys_dir/authorized_keys" ] && die "--keys-dir $keys_dir: no authorized_keys (run 'ember keygen --out DIR')"
[ "$resume" -eq 1 ] && [ -z "$copy_to" ] && [ ! -d "$checkpoint_dir" ] &&
  die "--resume $checkpoint_dir: no such directory (give the checkpoint directory a stopped run printed)"
abs() { case "$1" in /*) echo "$1" ;; *) echo "$(pwd)/$1" ;; esac; }

# The hostfile: slots[0] is the scheduler, then the servers, then the workers,
# each with its ssh target, its address and where it was named (file:line).
s_target="" s_addr="" s_where=""
srv_target=() srv_addr=() srv_port=() srv_where=()
wrk_target=() wrk_addr=() wrk_where=()
declare -A next_port=() host_line=()
n=0
while IFS= read -r line || [ -n "$line" ]; do
  n=$((n + 1))
  line="${line%%#*}"
  read -r -a f <<<"$line" || true
  [ "${#f[@]}" -eq 0 ] && continue
  where="$hostfile:$n"
  target="${f[0]}"
  addr="${target#*@}"
  [[ "$target" =~ ^([A-Za-z0-9._-]+@)?[A-Za-z0-9.:_-]+$ ]] || die "$where: '$target' is not a host (ADDRESS or USER@ADDRESS)"
  [ "${#f[@]}" -ge 2 ] || die "$where: $target has no roles (scheduler, server=N, worker=N)"
  case "$addr" in 127.*|localhost|::1) die "$where: $addr is a loopback address: give the address the other hosts reach $target at" ;; esac
  host_line[$target]="$where"
  for tok in "${f[@]:1}"; do
    role="${tok%%=*}" count=1
    [ "$tok" != "$role" ] && count="${tok#*=}"
    [[ "$count" =~ ^[0-9]+$ ]] && [ "$count" -ge 1 ] || die "$where: '$tok': the count must be a number >= 1"
    case "$role" in
      scheduler)
        [ "$count" -eq 1 ] || die "$where: '$tok': a job has one scheduler"
        [ -z "$s_target" ] || die "$where: a second scheduler (the first is at $s_where)"
        s_target="$target" s_addr="$addr" s_where="$where" ;;
      server)
        for _ in $(seq 1 "$count"); do
          p="${next_port[$target]:-$server_port}"
          [ "$p" = "$port" ] && p=$((p + 1))  # never the scheduler's port
          srv_target+=("$target") srv_addr+=("$addr") srv_port+=("$p") srv_where+=("$where")
          next_port[$target]=$((p + 1))
        done ;;
      worker)
        for _ in $(seq 1 "$count"); do wrk_target+=("$target") wrk_addr+=("$addr") wrk_where+=("$where"); done ;;
      *) die "$where: unknown role '$role' (scheduler, server[=N], worker[=N])" ;;
    esac
  done
done <"$hostfile"
[ -n "$s_target" ] || die "$hostfile: no host runs the scheduler (add 'scheduler' to one line)"
[ "${#srv_target[@]}" -ge 1 ] || die "$hostfile: no server (add server=N to a line)"
[ "${#wrk_target[@]}" -ge 1 ] || die "$hostfile: no worker (add worker=N to a line)"
servers=${#srv_target[@]} workers=${#wrk_target[@]}
hosts=("${!host_line[@]}")

[ -n "$log_dir" ] || log_dir="$EMBER_ROOT/out/ssh-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$log_dir"
log_dir="$(cd "$log_dir" && pwd)"
echo "logs in $log_dir"
ctl_dir="$(mktemp -d "$log_dir/.ctl.XXXXXX")"
run_id="$(basename "$ctl_dir" | tr -dc 'A-Za-z0-9')$$"
trap 'rm -rf "$ctl_dir"' EXIT  # (the full cleanup replaces it once processes start)

if [ "$secure" -eq 1 ] && [ -z "$keys_dir" ]; then
  keys_dir="$log_dir/keys"
  [ -e "$keys_dir" ] || "$binary" keygen --out="$keys_dir" >/dev/null
fi
[ -n "$keys_dir" ] && keys_dir="$(abs "$keys_dir")"
# Paths as the hosts see them.
if [ -n "$copy_to" ]; then
  r_binary="$copy_to/ember" r_config="$copy_to/job.conf" r_keys=""
  [ -n "$keys_dir" ] && r_keys="$copy_to/keys"
  [ -n "$job_dir" ] || job_dir="$copy_to"
else
  r_binary="$(abs "$binary")" r_config="$(abs "$config")" r_keys="$keys_dir"
  [ -n "$job_dir" ] || job_dir="$log_dir"
fi
[ -n "$checkpoint_dir" ] || checkpoint_dir="$job_dir/checkpoints"
[ -n "$export_dir" ] || export_dir="$job_dir/export"
checkpoint_dir="$(abs "$checkpoint_dir")" export_dir="$(abs "$export_dir")"
[ -n "$data_dir" ] && data_dir="$(abs "$data_dir")"

# ssh: the user's options first (ssh keeps the first value of an option).
ssh_base=(ssh "${ssh_opts[@]+"${ssh_opts[@]}"}" -o BatchMode=yes -o ConnectTimeout="$connect_timeout"
          -o ServerAliveInterval=5 -o ServerAliveCountMax=3 -T)
q() { printf "'%s'" "${1//\'/\'\\\'\'}"; }  # quotes one word for the remote shell
remote() {  # TARGET WORD...: runs the words on TARGET, each quoted
  local target=$1 cmd="" w
  shift
  for w in "$@"; do cmd+=" $(q "$w")"; done
  "${ssh_base[@]}" "$target" -- "$cmd"
}

# 1. Every host answers, has (or gets) the files, and can write the job's
# directories.
echo "checking ${#hosts[@]} host(s) over ssh ..."
check_dir="$ctl_dir/check"
mkdir -p "$check_dir"
need=()
[ -z "$copy_to" ] && need=("$r_binary" "$r_config" ${r_keys:+"$r_keys/authorized_keys"} ${data_dir:+"$data_dir/train"})
[ -n "$copy_to" ] && [ -n "$data_dir" ] && need=("$data_dir/train")
check_pids=()
for h in "${hosts[@]}"; do
  # shellcheck disable=SC2016
  remote "$h" sh -c 'for f in "$@"; do [ -e "$f" ] || echo "missing: $f"; done' check "${need[@]+"${need[@]}"}" \
    >"$check_dir/$h.out" 2>"$check_dir/$h.err" </dev/null &
  check_pids+=($!)
done
bad=0
for i in "${!hosts[@]}"; do
  h="${hosts[$i]}"
  if ! wait "${check_pids[$i]}"; then
    echo "error: ${host_line[$h]}: cannot reach $h over ssh (BatchMode, ConnectTimeout=${connect_timeout}s): $(tail -n 1 "$check_dir/$h.err")" >&2
    bad=1
  elif [ -s "$check_dir/$h.out" ]; then
    sed "s|^missing: |error: ${host_line[$h]}: $h has no |; s|\$| (a shared file system, or --copy-to DIR)|" "$check_dir/$h.out" >&2
    bad=1
  fi
done
[ "$bad" -eq 0 ] || exit 2
if [ -n "$copy_to" ]; then
  echo "copying the binary, the config${keys_dir:+ and the keys} to $copy_to on each host ..."
  # Staged here under their remote names, then one scp per host.
  stage="$ctl_dir/stage"
  mkdir -p "$stage"
  cp -p "$binary" "$stage/ember"
  cp "$config" "$stage/job.conf"
  [ -n "$keys_dir" ] && cp -rp "$keys_dir" "$stage/keys"
  # Never over files it did not put there: DIR must be new, empty, or one
  # this script made (its marker file .ember-ssh-copy).
  # shellcheck disable=SC2016
  prepare='d=$1
if [ -e "$d" ] && [ ! -e "$d/.ember-ssh-copy" ] && [ -n "$(ls -A "$d" 2>/dev/null)" ]; then
  echo "$d exists, is not empty and was not made by launch/ssh.sh --copy-to; give a new directory" >&2
  exit 3
fi
mkdir -p -m 700 "$d" && touch "$d/.ember-ssh-copy"'
  for h in "${hosts[@]}"; do
    { remote "$h" sh -c "$prepare" prepare "$copy_to" </dev/null &&
      scp "${ssh_opts[@]+"${ssh_opts[@]}"}" -o BatchMode=yes -o ConnectTimeout="$connect_timeout" -q -p -r \
        "$stage"/* "$h:$copy_to/" </dev/null; } || die "${host_line[$h]}: copying to $h:$copy_to failed"
  done
  rm -rf "$stage"
fi
remote "$s_target" mkdir -p "$job_dir" "$checkpoint_dir" "$(dirname "$export_dir")" </dev/null ||
  die "$s_where: cannot make $job_dir on $s_target"

EMBER_JOB_TOKEN="$(ember_job_token)"
key_flags=()
if [ -n "$r_keys" ]; then
  key_flags=(--keys_dir="$r_keys")
  echo "security: CURVE on every link, keys in $keys_dir"
else
  key_flags=(--insecure)
  echo "security: none (--insecure): plain TCP between the hosts"
fi
listen_flags() {  # ADDRESS
  if [ "$bind_all" -eq 1 ]; then echo "--host=0.0.0.0 --advertise_host=$1"; else echo "--host=$1"; fi
}
endpoint="tcp://$s_addr:$port"

# The remote wrapper ($0 its name, $1 --lost-after, then the command). It
# kills the process it replaces (same name, left on a host that was cut
# off), reads the token, starts the command, and kills it when stdin ends,
# stays silent for $1 seconds, or says TERM (SIGTERM: the scheduler
# checkpoints and stops the job). Its exit status is the command's.
# shellcheck disable=SC2016
wrapper='
pidfile="/tmp/$0.pid"
if [ -f "$pidfile" ]; then
  old=$(cat "$pidfile")
  if [ -n "$old" ] && grep -qa -- "$0" "/proc/$old/cmdline" 2>/dev/null; then
    echo "ember-ssh: killing the previous $0 (pid $old)" >&2
    kill -KILL -- "-$old" 2>/dev/null || kill -KILL "$old" 2>/dev/null
    for _ in $(seq 1 50); do [ -d "/proc/$old" ] || break; sleep 0.1; done
  fi
fi
echo $$ >"$pidfile"
lost=$1
shift
IFS= read -r EMBER_JOB_TOKEN || { echo "ember-ssh: no job token on stdin" >&2; exit 2; }
export EMBER_JOB_TOKEN
exec 3<&0
"$@" --exit_with_parent </dev/null &
child=$!
unset EMBER_JOB_TOKEN
{
  while IFS= read -r -t "$lost" cmd <&3; do
    [ "$cmd" = TERM ] && kill -TERM "$child" 2>/dev/null
  done
  kill -KILL "$child" 2>/dev/null
} </dev/null &
watcher=$!
wait "$child"
rc=$?
kill "$watcher" 2>/dev/null
[ "$(cat "$pidfile" 2>/dev/null)" = "$$" ] && rm -f "$pidfile"
exit "$rc"
'

# Slots: 0 the scheduler, 1..S the servers, S+1..S+W the workers.
pids=() roles=() slot_target=()
slot_target[0]="$s_target"
for i in $(seq 1 "$servers"); do slot_target[$i]="${srv_target[$((i - 1))]}"; done
for i in $(seq 1 "$workers"); do slot_target[$((servers + i))]="${wrk_target[$((i - 1))]}"; done
launcher=$$
# feed SLOT: the session's stdin: the token, then a line a second while this
# script lives; TERM once when $ctl_dir/term.SLOT appears.
feed() {
  local sent=0
  printf '%s\n' "$EMBER_JOB_TOKEN"
  while kill -0 "$launcher" 2>/dev/null; do
    if [ "$sent" -eq 0 ] && [ -e "$ctl_dir/term.$1" ]; then
      echo TERM || exit 0
      sent=1
    else
      echo ping || exit 0
    fi
    sleep 1
  done
}
tail_pid=""
cleanup() {
  local p
  [ -n "$tail_pid" ] && kill "$tail_pid" 2>/dev/null || true
  # Closing an ssh session ends its stdin: the remote wrapper kills its process.
  for p in "${pids[@]+"${pids[@]}"}"; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 1 20); do
    local alive=0
    for p in "${pids[@]+"${pids[@]}"}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" -eq 0 ] && break
    sleep 0.1
  done
  for p in "${pids[@]+"${pids[@]}"}"; do kill -9 "$p" 2>/dev/null || true; done
  for p in "${pids[@]+"${pids[@]}"}"; do { wait "$p"; } 2>/dev/null || true; done
  rm -rf "$ctl_dir"
}
trap cleanup EXIT
stopping=0
on_stop() {
  if [ "$stopping" -eq 1 ]; then exit 130; fi
  stopping=1
  echo "stopping: the scheduler checkpoints and stops the cluster (again to stop at once) ..." >&2
  touch "$ctl_dir/term.0"
}
trap on_stop INT TERM

# start_slot SLOT ROLE CMD...: runs CMD on the slot's host through the wrapper.
start_slot() {
  local i=$1 role=$2 target="${slot_target[$1]}" out=/dev/null cmd w
  shift 2
  local log="$log_dir/${role// /}.log"
  [ "$role" = scheduler ] && out="$log_dir/scheduler.out"
  rm -f "$ctl_dir/term.$i"
  echo "== $role on $target, $(date '+%F %T')" >>"$log"
  cmd="exec bash -c $(q "$wrapper") $(q "ember-ssh.$run_id.$i.w") $(q "$lost_after")"
  for w in "$@"; do cmd+=" $(q "$w")"; done
  "${ssh_base[@]}" "$target" -- "$cmd" < <(feed "$i") >>"$out" 2>>"$log" &
  pids[$i]=$!
  roles[$i]="$role"
}
sched_flags=("${key_flags[@]}" --config="$r_config" --port="$port" --num_servers="$servers"
             --num_workers="$workers" --result_file="$job_dir/result.txt"
             --checkpoint_dir="$checkpoint_dir" --export_dir="$export_dir" --metrics_file="$job_dir/metrics.jsonl")
[ "$export_every" -gt 0 ] && sched_flags+=(--export_every_seconds="$export_every")
[ -n "$data_dir" ] && sched_flags+=(--data_dir="$data_dir")
[ "$epochs" -gt 0 ] && sched_flags+=(--epochs="$epochs")
[ "$checkpoint_every" -gt 0 ] && sched_flags+=(--checkpoint_every_seconds="$checkpoint_every")
start_scheduler() {  # [--resume]
  # shellcheck disable=SC2046
  start_slot 0 scheduler "$r_binary" scheduler "${sched_flags[@]}" $(listen_flags "$s_addr") "$@"
}
start_server() {  # INDEX (1-based)
  local j=$(($1 - 1))
  # shellcheck disable=SC2046
  start_slot "$1" "server $1" "$r_binary" server "${key_flags[@]}" --scheduler="$endpoint" \
    $(listen_flags "${srv_addr[$j]}") --port="${srv_port[$j]}"
}
start_worker() {  # INDEX (1-based)
  local kf=()
  [ -n "$r_keys" ] && kf=("${key_flags[@]}")
  start_slot $((servers + $1)) "worker $1" "$r_binary" worker "${kf[@]+"${kf[@]}"}" --scheduler="$endpoint"
}
start_cluster() {  # [--resume]
  start_scheduler "$@"
  local i
  for i in $(seq 1 "$servers"); do start_server "$i"; done
  for i in $(seq 1 "$workers"); do start_worker "$i"; done
}
# wait_reachable TARGET: until ssh to TARGET works again (false after
# --reconnect-timeout, or when stopping).
wait_reachable() {
  local t0=$SECONDS
  while [ $((SECONDS - t0)) -lt "$reconnect_timeout" ] && [ "$stopping" -eq 0 ]; do
    remote "$1" true </dev/null 2>/dev/null && return 0
    sleep 1
  done
  return 1
}
# The hooks of ember_supervise (setup.sh), which restarts what dies.
ember_slot_where() { echo "on ${slot_target[$1]}"; }
EMBER_STATUS_255="lost its ssh session (exit status 255: the host or its link went away, or ssh failed; see its log)"
ember_slot_ready() {  # a lost host must answer again first
  wait_reachable "${slot_target[$1]}" ||
    { echo "error: ${slot_target[$1]} does not answer over ssh after ${reconnect_timeout}s" >&2; return 1; }
}
ember_has_checkpoint() {
  # shellcheck disable=SC2016
  remote "$s_target" sh -c 'ls "$1"/ckpt-*/MANIFEST' ls "$checkpoint_dir" </dev/null >/dev/null 2>&1
}

echo "scheduler at $endpoint; $servers server(s), $workers worker(s) on ${#hosts[@]} host(s)"
if [ "$resume" -eq 1 ]; then start_cluster --resume; else start_cluster; fi
tail --pid=$$ -n +1 -f "$log_dir/scheduler.out" 2>/dev/null > >(grep --line-buffered -v '^final:') &
tail_pid=$!

ember_supervise
ember_finish "launch/ssh.sh --hostfile $hostfile --resume $checkpoint_dir"
if [ -d "$export_dir" ]; then
  ember_report_final "$binary" "$log_dir" "$export_dir" || exit 1
else
  grep '^final:' "$log_dir/scheduler.out" | tail -1
  echo "exported: on $s_target:$export_dir (not readable here, so not scored by ember predict)"
fi
