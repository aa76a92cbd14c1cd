#!/usr/bin/env bash
# launch/slurm/ on a real Slurm: a one-node cluster of Debian's slurm-wlm and
# munge, all of it (config, munge key, spool, state, logs, sockets) in a
# temporary directory, never the system's. The test starts munged, slurmctld
# and slurmd and submits two jobs with launch/slurm/submit.sh (1 scheduler, 1
# server, 1 worker, CURVE keys, every process on 0.0.0.0, 300k generated rows,
# 3 epochs); it waits for each to leave the queue and checks that the job's
# output file ends with a `final:` line whose auc is within 0.05 of the data's
# oracle. The second job's server is killed (kill -9) after its first
# checkpoint: the batch script requeues the job and its second run resumes
# from the checkpoint. Every daemon is stopped and the directory removed on
# exit, also when a check fails.
#
# usage: slurm_test.sh EMBER_BINARY SOURCE_DIR
# Runs as root (it installs the packages if missing and runs the daemons);
# skips (77) otherwise.
set -euo pipefail
ember="$1"
root="$(cd "$2" && pwd)"
if [ "$(id -u)" -ne 0 ]; then
  echo "SKIPPED: slurm_test runs Slurm's daemons and must run as root"
  exit 77
fi
fail() { echo "FAILED: $*" >&2; exit 1; }

source "$root/launch/setup.sh"
ember_install_deps slurm-wlm munge >/dev/null
for b in munged slurmctld slurmd sbatch squeue sinfo scancel scontrol; do
  command -v "$b" >/dev/null || fail "$b is not installed (slurm-wlm, munge)"
done

work="$(mktemp -d /tmp/ember-slurm.XXXXXX)"
chmod 755 "$work"  # munged wants its socket's directories searchable
ctld_pid="" slurmd_pid="" job=""
export SLURM_CONF="$work/slurm.conf"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'; }
cleanup() {
  local rc=$?
  set +e
  trap '' PIPE INT TERM HUP  # finish the cleanup whatever happens to the output
  if [ "$rc" -ne 0 ]; then
    echo "--- logs (the test failed) ---" >&2
    for f in "$work"/job/slurm-*.out "$work"/job/logs/run*/*.log "$work"/log/*.log "$work"/munge/munged.log; do
      [ -f "$f" ] && { echo "== $f" >&2; tail -n 15 "$f" >&2; }
    done
  fi
  if [ -n "$job" ]; then
    scancel "$job" 2>/dev/null
    for _ in $(seq 1 40); do [ -z "$(squeue -h -j "$job" 2>/dev/null)" ] && break; sleep 0.5; done
  fi
  local p
  for p in $slurmd_pid $ctld_pid; do kill "$p" 2>/dev/null; done
  for p in $slurmd_pid $ctld_pid; do
    for _ in $(seq 1 20); do kill -0 "$p" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$p" 2>/dev/null
    wait "$p" 2>/dev/null
  done
  if [ -f "$work/munge/munged.pid" ]; then
    p=$(cat "$work/munge/munged.pid")
    kill "$p" 2>/dev/null
    for _ in $(seq 1 20); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$p" 2>/dev/null
  fi
  # A job step slurmd did not get to kill: its processes name this job's port.
  [ -n "${port:-}" ] && pkill -9 -f -- "--scheduler=tcp://[^ ]*:$port( |$)" 2>/dev/null
  [ -n "${port:-}" ] && pkill -9 -f -- "--checkpoint_dir=$work/" 2>/dev/null
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
# A signal (Ctrl-C, ctest's stop, a closed pipe) exits through the cleanup too.
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 141' PIPE
trap 'exit 143' TERM

# munge: its own key, socket, pid, log and seed files.
mkdir -p "$work/munge" "$work/state" "$work/spool" "$work/log"
dd if=/dev/urandom of="$work/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$work/munge/munge.key"
munged --force --socket="$work/munge/munge.socket" --key-file="$work/munge/munge.key" \
  --pid-file="$work/munge/munged.pid" --log-file="$work/munge/munged.log" --seed-file="$work/munge/munged.seed" ||
  fail "munged did not start"
munge -S "$work/munge/munge.socket" -n | unmunge -S "$work/munge/munge.socket" >/dev/null || fail "munge round trip failed"

# A one-node slurm.conf on free ports; the node is this machine.
node="$(hostname -s)"
mem=$(awk '/MemTotal/ { print int($2 / 1024 * 0.9) }' /proc/meminfo)
cat >"$SLURM_CONF" <<CONF
ClusterName=embertest
SlurmctldHost=$node
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job waits this long (default 120 s) for its old
# credential's revocation to lapse before it may start again.
AuthInfo=socket=$work/munge/munge.socket,cred_expire=10
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
KillWait=5
NodeName=$node CPUs=2 RealMemory=$mem State=UNKNOWN
PartitionName=ember Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
slurmctld -D -f "$SLURM_CONF" >"$work/log/slurmctld.out" 2>&1 &
ctld_pid=$!
slurmd -D -f "$SLURM_CONF" >"$work/log/slurmd.out" 2>&1 &
slurmd_pid=$!
state=""
for _ in $(seq 1 60); do
  state=$(sinfo -h -n "$node" -o %T 2>/dev/null || true)
  [ "$state" = idle ] && break
  sleep 1
done
[ "$state" = idle ] || fail "node $node is '$state', not idle, after 60s (slurmctld/slurmd logs below)"
echo "slurm: node $node idle"

# The jobs: generated data, CURVE keys, 1 server and 1 worker.
"$ember" gen-data --out="$work/data" --train_rows=300000 --test_rows=20000 --train_files=4 --test_files=1 >/dev/null
"$ember" keygen --out="$work/keys" >/dev/null
port=$(free_port)
# submit NAME [submit.sh flags...]: submits a job into $work/NAME; sets job.
# 3 tasks on 2 CPUs: --overcommit.
submit() {
  local name=$1 submitted
  shift
  submitted=$("$root/launch/slurm/submit.sh" --binary "$ember" --servers 1 --workers 1 --epochs 3 --port "$port" \
    --data-dir "$work/data" --keys-dir "$work/keys" --job-dir "$work/$name" "$@" -- --overcommit --time=10)
  echo "$submitted"
  job=$(sed -n 's/^submitted job \([0-9]*\):.*/\1/p' <<<"$submitted")
  [ -n "$job" ] || fail "no job id in submit.sh's output"
}
# wait_gone: until the job has left the queue (no slurmdbd, so no sacct).
wait_gone() {
  for _ in $(seq 1 600); do
    [ -z "$(squeue -h -j "$job" 2>/dev/null)" ] && return 0
    sleep 1
  done
  fail "job $job still queued or running after 600s"
}
# check_final NAME: the job's output file ends with a final line near the oracle.
check_final() {
  local out="$work/$1/slurm-$job.out" final
  [ -f "$out" ] || fail "no output file $out"
  sed 's/^/  | /' "$out"
  final=$(grep '^final:' "$out" | tail -n 1)
  [ -n "$final" ] || fail "no final: line in $out"
  auc=$(sed -n 's/.* auc=\([0-9.]*\).*/\1/p' <<<"$final")
  oracle=$(sed -n 's/.* oracle_auc=\([0-9.]*\).*/\1/p' <<<"$final")
  [ -n "$auc" ] && [ -n "$oracle" ] || fail "no auc or oracle_auc in: $final"
  python3 -c "import sys; sys.exit(0 if $auc > $oracle - 0.05 else 1)" ||
    fail "$1: auc $auc is not within 0.05 of oracle_auc $oracle"
}

# 1. A job from submission to its final line.
submit plain --max-requeues 0
wait_gone
check_final plain
# Every process logged into its own file, and the server listened on every
# interface and advertised this machine's name.
for f in scheduler server1 worker1; do [ -s "$work/plain/logs/run0/$f.log" ] || fail "no log $f.log"; done
grep -q "listening on tcp://0.0.0.0:.*reachable at $(hostname)" "$work/plain/logs/run0/server1.log" ||
  fail "server1.log does not show the bind 0.0.0.0 / advertise $(hostname) split"
echo "job $job: auc=$auc oracle_auc=$oracle"

# 2. Recovery: the server is killed (kill -9) once the job has a checkpoint;
# srun ends the run, the batch script requeues the job, and the second run
# resumes from the checkpoint to the final line.
submit requeue --max-requeues 1
log="$work/requeue/logs/run0/scheduler.log"
pid=""
for _ in $(seq 1 600); do
  pid=$(sed -n 's/.*registered SERVER rank 0 as node [0-9]* ([^ ]* pid \([0-9]*\).*/\1/p' "$log" 2>/dev/null | head -n 1 || true)
  [ -n "$pid" ] && ls "$work/requeue/checkpoints"/ckpt-*/MANIFEST >/dev/null 2>&1 && break
  sleep 0.1
done
[ -n "$pid" ] || fail "the server of job $job never registered"
grep -q '^final:' "$work/requeue/logs/run0/scheduler.out" 2>/dev/null &&
  fail "job $job finished before its server could be killed"
kill -9 "$pid"
echo "killed the server (pid $pid) of job $job"
# Slurm holds the requeued job until its old credential's revocation lapses
# (cred_expire above, 10 s), then starts it on its own. Releasing it sooner
# (scontrol update StartTime=now) gets it killed: "Job credential revoked".
wait_gone
check_final requeue
out="$work/requeue/slurm-$job.out"
grep -q "requeueing job $job" "$out" || fail "run 0 did not requeue the job"
grep -q "^ember: job $job run 1 .*resuming from" "$out" || fail "run 1 did not resume from the checkpoints"
echo "PASSED: job $job recovered by requeue: auc=$auc oracle_auc=$oracle"
