#!/usr/bin/env bash
# launch/ssh.sh on five hosts: network namespaces (tests/netns_lib.sh) on a
# bridge of their own, each running Debian's sshd with a config, host key and
# authorized key this test generates in its temporary directory (never
# /etc/ssh or ~/.ssh). Host 1 runs the scheduler and the launcher, hosts 2-3
# a server each, hosts 4-5 a worker each; CURVE keys per run. The job trains
# generated data to the `final:` line, whose auc must be within 0.02 of the
# data's oracle. With --link-cut (a second ctest entry), server 1's link is cut
# mid-epoch after the first complete checkpoint, for longer than the
# heartbeat timeout, and restored: the scheduler must declare the server dead,
# ssh.sh start a replacement, every server restore the checkpoint, and the job
# still end near the oracle. Every namespace and process the test made is
# removed on exit, also when it fails or is interrupted, and checked gone.
#
# usage: netns_ssh_test.sh EMBER_BINARY SOURCE_DIR [--link-cut]
# Runs as root (namespaces, sshd); skips (77) otherwise.
set -euo pipefail
ember="$1"
root="$(cd "$2" && pwd)"
link_cut=0
[ "${3:-}" = --link-cut ] && link_cut=1
if [ "$(id -u)" -ne 0 ]; then
  echo "SKIPPED: netns_ssh_test makes network namespaces and runs sshd, and must run as root"
  exit 77
fi
fail() { echo "FAILED: $*" >&2; exit 1; }

source "$root/launch/setup.sh"
ember_install_deps openssh-server iproute2 iputils-ping >/dev/null
sshd=/usr/sbin/sshd
[ -x "$sshd" ] || fail "$sshd is not installed (openssh-server)"
for b in ssh ssh-keygen ip ping; do command -v "$b" >/dev/null || fail "$b is not installed"; done
source "$root/tests/netns_lib.sh"

work="$(mktemp -d /tmp/ember-netns-ssh.XXXXXX)"
prefix="ss$$"
launcher_pid=""
leftovers() {  # processes of this test still alive: in its namespaces, or naming its directory
  { netns_pids; pgrep -f -- "$work/" || true; } | sort -u | grep -vx "$$" || true
}
cleanup() {
  local rc=$?
  set +e
  trap '' PIPE INT TERM HUP  # finish the cleanup whatever happens to the output
  if [ "$rc" -ne 0 ]; then
    echo "--- logs (the test failed) ---" >&2
    for f in "$work"/launcher.out "$work"/job/*.log "$work"/sshd/*.log; do
      [ -f "$f" ] && { echo "== $f" >&2; tail -n 20 "$f" >&2; }
    done
  fi
  if [ -n "$launcher_pid" ]; then
    kill "$launcher_pid" 2>/dev/null
    for _ in $(seq 1 20); do kill -0 "$launcher_pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$launcher_pid" 2>/dev/null
  fi
  netns_down
  [ "${made_run_sshd:-0}" -eq 1 ] && rmdir /run/sshd 2>/dev/null
  local left
  left=$(leftovers)
  [ -n "$left" ] && kill -9 $left 2>/dev/null
  rm -rf "$work"
  if ip netns list | grep -q "^$prefix-"; then
    echo "FAILED: namespaces left behind: $(ip netns list | grep "^$prefix-" | tr '\n' ' ')" >&2
    rc=1
  fi
  if [ -n "$left" ]; then
    echo "FAILED: processes left behind (killed now): $(ps -o pid=,args= -p "$(tr '\n' , <<<"$left" | sed 's/,$//')" 2>/dev/null)" >&2
    rc=1
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 141' PIPE
trap 'exit 143' TERM

netns_up "$prefix" 5 || fail "netns_up failed"
echo "namespaces $prefix-1..5 at $(netns_addr 1)..$(netns_addr 5)"

# ssh: one host key for the five sshds, one client key, known_hosts naming
# every host, a client config the launcher gets with --ssh-config.
mkdir -p "$work/ssh" "$work/sshd"
chmod 700 "$work/ssh"
ssh-keygen -q -t ed25519 -N '' -f "$work/ssh/host_key" -C ember-test-host
ssh-keygen -q -t ed25519 -N '' -f "$work/ssh/id" -C ember-test-client
cp "$work/ssh/id.pub" "$work/ssh/authorized_keys"
# sshd's privilege separation directory (Debian makes it at boot); removed
# again in the cleanup if this test made it.
made_run_sshd=0
[ -d /run/sshd ] || { mkdir -p -m 755 /run/sshd && made_run_sshd=1; }
for i in 1 2 3 4 5; do
  echo "$(netns_addr "$i") $(cut -d' ' -f1-2 "$work/ssh/host_key.pub")" >>"$work/ssh/known_hosts"
  cat >"$work/sshd/$i.conf" <<CONF
ListenAddress $(netns_addr "$i"):22
HostKey $work/ssh/host_key
PidFile $work/sshd/$i.pid
AuthorizedKeysFile $work/ssh/authorized_keys
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
StrictModes no
Subsystem sftp /usr/lib/openssh/sftp-server
ClientAliveInterval 5
ClientAliveCountMax 3
CONF
  netns_exec "$i" "$sshd" -D -f "$work/sshd/$i.conf" -E "$work/sshd/$i.log" &
done
cat >"$work/ssh/config" <<CONF
Host *
  User root
  IdentityFile $work/ssh/id
  IdentitiesOnly yes
  UserKnownHostsFile $work/ssh/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  LogLevel ERROR
CONF
for i in 1 2 3 4 5; do
  ok=0
  for _ in $(seq 1 50); do
    if netns_exec 1 ssh -F "$work/ssh/config" -o BatchMode=yes -o ConnectTimeout=2 "$(netns_addr "$i")" true 2>/dev/null; then
      ok=1; break
    fi
    sleep 0.2
  done
  [ "$ok" -eq 1 ] || fail "sshd on host $i ($(netns_addr "$i")) does not let host 1 in (see $work/sshd/$i.log)"
done
echo "sshd up on 5 hosts"

cat >"$work/hostfile" <<HOSTS
# host          roles
$(netns_addr 1)    scheduler
$(netns_addr 2)    server=1
$(netns_addr 3)    server      # one server
$(netns_addr 4)    worker=1
$(netns_addr 5)    worker=1
HOSTS
# The demo model; with --link-cut a 3 s heartbeat timeout, so that a 10 s cut
# is a death, and frequent checkpoints.
sed '/^cluster {/a\  heartbeat_timeout_ms: 3000\n  heartbeat_interval_ms: 500' "$root/examples/local.conf" >"$work/job.conf"
"$ember" gen-data --out="$work/data" --train_rows=1000000 --test_rows=50000 --train_files=8 --test_files=2 \
  --num_users=2000 --num_items=1000 >/dev/null

flags=(--hostfile "$work/hostfile" --config "$work/job.conf" --data-dir "$work/data" --binary "$ember"
       --ssh-config "$work/ssh/config" --max-restarts 2 --ssh-option ServerAliveInterval=2
       --ssh-option ServerAliveCountMax=3 --lost-after 6 --connect-timeout 3)
# launch NAME FLAG...: runs ssh.sh in host 1 in the background, its output in
# $work/NAME.out and its logs in $work/NAME/; sets launcher_pid.
launch() {
  local name=$1
  shift
  # ip netns exec execs the script, so launcher_pid is the launcher's own pid
  # (netns_exec, a function, would run it in a subshell).
  ip netns exec "$prefix-1" "$root/launch/ssh.sh" "${flags[@]}" --log-dir "$work/$name" "$@" >"$work/$name.out" 2>&1 &
  launcher_pid=$!
}
# wait_for FILE PATTERN WHAT: until FILE has a line matching PATTERN (while the launcher runs).
wait_for() {
  for _ in $(seq 1 600); do
    grep -q -- "$2" "$1" 2>/dev/null && return 0
    kill -0 "$launcher_pid" 2>/dev/null || break
    sleep 0.2
  done
  grep -q -- "$2" "$1" 2>/dev/null || fail "$3 (no '$2' in $1)"
}
# job_processes: what of this test still runs, but the sshds: in the
# namespaces, or naming the test's directory.
job_processes() {
  local p
  for p in $(netns_pids) $(pgrep -f -- "$work/" || true); do
    [ "$p" = "$$" ] && continue
    [ "$(cat "/proc/$p/comm" 2>/dev/null || echo sshd)" != sshd ] && echo "$p"
  done | sort -u
  return 0
}
# check_none_left WHEN: no process of a job is left, within 10 s.
check_none_left() {
  local rest
  for _ in $(seq 1 40); do
    rest=$(job_processes)
    [ -z "$rest" ] && return 0
    sleep 0.25
  done
  fail "processes left $1: $(ps -o pid=,args= -p "$(echo $rest | tr ' ' ,)")"
}
# check_no_token: no command line in the namespaces shows a 32-hex-digit token.
check_no_token() {
  local p
  for p in $(netns_pids) $(pgrep -f -- "launch/ssh.sh" || true); do
    tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline" | grep -Eq '(^|[^0-9a-f])[0-9a-f]{32}([^0-9a-f]|$)' &&
      fail "a command line shows something like the job token: $(tr '\0' ' ' <"/proc/$p/cmdline")"
  done
  return 0
}

# 1. A job to its final line (with --link-cut: through a cut link).
extra=(--epochs 3)
# The link-cut job also copies the binary, config and keys to each host
# (--copy-to; the hosts share this file system, so it is the same directory).
[ "$link_cut" -eq 1 ] && extra+=(--checkpoint-every 3 --copy-to "$work/remote" --job-dir "$work/job")
if [ "$link_cut" -eq 1 ]; then
  # --copy-to never writes into a directory it did not make: one holding a
  # file of its own is refused before anything starts, and left as it was.
  mkdir -p "$work/foreign"
  echo "the user's file" >"$work/foreign/ember"
  if ip netns exec "$prefix-1" "$root/launch/ssh.sh" "${flags[@]}" --log-dir "$work/foreign-logs" \
       --copy-to "$work/foreign" >"$work/foreign.out" 2>&1; then
    fail "--copy-to into a directory ssh.sh did not make was not refused"
  fi
  grep -q "was not made by launch/ssh.sh --copy-to" "$work/foreign.out" ||
    { sed 's/^/  | /' "$work/foreign.out"; fail "--copy-to: the refusal does not say why"; }
  [ "$(cat "$work/foreign/ember")" = "the user's file" ] && [ "$(ls -A "$work/foreign")" = ember ] ||
    fail "--copy-to changed a directory it did not make: $(ls -A "$work/foreign")"
  echo "copy-to: a directory ssh.sh did not make is refused and left as it was"
fi
t0=$SECONDS
launch job "${extra[@]}"
wait_for "$work/job/scheduler.out" "cluster up" "the job did not come up"
check_no_token
if [ "$link_cut" -eq 1 ]; then
  [ -x "$work/remote/ember" ] && [ -f "$work/remote/job.conf" ] && [ -f "$work/remote/keys/authorized_keys" ] ||
    fail "--copy-to: no ember, job.conf or keys/ in $work/remote"
  pgrep -f -- "^$work/remote/ember server --keys_dir=$work/remote/keys" >/dev/null ||
    fail "--copy-to: no server runs the copied binary with the copied keys"
fi
if [ "$link_cut" -eq 1 ]; then
  # After the first complete checkpoint taken while training (the second:
  # the first is taken before training starts), mid-epoch: cut server 1's
  # host (2).
  for _ in $(seq 1 600); do
    ls "$work"/job/checkpoints/ckpt-00000002/MANIFEST >/dev/null 2>&1 && break
    kill -0 "$launcher_pid" 2>/dev/null || break
    sleep 0.2
  done
  ls "$work"/job/checkpoints/ckpt-00000002/MANIFEST >/dev/null 2>&1 || fail "no second checkpoint before the job ended"
  grep -q '^final:' "$work/job/scheduler.out" && fail "the job ended before the link could be cut"
  netns_link 2 down
  echo "cut host 2 (server 1) at $((SECONDS - t0))s"
  sleep 10
  netns_link 2 up
  echo "restored host 2 at $((SECONDS - t0))s"
fi

set +e
wait "$launcher_pid"
rc=$?
set -e
launcher_pid=""
elapsed=$((SECONDS - t0))
sed 's/^/  | /' "$work/job.out"
[ "$rc" -eq 0 ] || fail "launch/ssh.sh exited with status $rc"
final=$(grep '^final:' "$work/job.out" | tail -n 1)
[ -n "$final" ] || fail "no final: line in the launcher's output"
auc=$(sed -n 's/.* auc=\([0-9.]*\).*/\1/p' <<<"$final")
oracle=$(sed -n 's/.* oracle_auc=\([0-9.]*\).*/\1/p' <<<"$final")
[ -n "$auc" ] && [ -n "$oracle" ] || fail "no auc or oracle_auc in: $final"
python3 -c "import sys; sys.exit(0 if $auc > $oracle - 0.02 else 1)" || fail "auc $auc is not within 0.02 of oracle_auc $oracle"
grep -q '^exported: ' "$work/job.out" || fail "no exported: line"

# One log per process, gathered on host 1; each server listened on its own
# host's address and the fixed port.
for f in scheduler server1 server2 worker1 worker2; do [ -s "$work/job/$f.log" ] || fail "no log $f.log"; done
grep -q "listening on tcp://$(netns_addr 2):27200" "$work/job/server1.log" || fail "server1 did not listen on $(netns_addr 2):27200"
grep -q "listening on tcp://$(netns_addr 3):27200" "$work/job/server2.log" || fail "server2 did not listen on $(netns_addr 3):27200"

if [ "$link_cut" -eq 1 ]; then
  grep -q "server rank [0-9]* (.*) is dead" "$work/job/scheduler.log" || fail "the scheduler did not declare the cut server dead"
  grep -q "restart 1/2: server 1 on $(netns_addr 2) lost its ssh session" "$work/job.out" ||
    fail "ssh.sh did not see server 1's session lost"
  grep -q "registered to replace the lost server" "$work/job/scheduler.out" || fail "no replacement server registered"
  grep -q "recovered from .*/ckpt-" "$work/job/scheduler.out" || fail "the servers did not restore the checkpoint"
  grep -q "recoveries=1 " <<<"$final" || fail "the final line does not count one recovery"
  [ "$(grep -c '^== server 1 on ' "$work/job/server1.log")" -eq 2 ] || fail "server1.log does not show two starts"
fi

check_none_left "after ssh.sh ended"
echo "job: auc=$auc oracle_auc=$oracle in ${elapsed}s (5 hosts over ssh)"
if [ "$link_cut" -eq 1 ]; then
  echo "PASSED (link cut): auc=$auc oracle_auc=$oracle in ${elapsed}s"
  exit 0
fi

# 2. A remote worker killed with SIGKILL is started again on its host; then
# SIGTERM (as Ctrl-C) to the launcher: the scheduler checkpoints and stops
# the job, and nothing is left.
launch stop --epochs 100
wait_for "$work/stop/scheduler.out" "epoch 1/100" "the second job did not start training"
wpid=$(sed -n 's/.*registered WORKER rank 0 as node [0-9]* ([^ ]* pid \([0-9]*\).*/\1/p' "$work/stop/scheduler.log" | head -n 1)
[ -n "$wpid" ] || fail "no pid for worker rank 0 in the scheduler's log"
kill -9 "$wpid"
wait_for "$work/stop.out" "restart 1/2: worker [12] on .* was killed by signal 9" "ssh.sh did not restart the killed worker"
for _ in $(seq 1 300); do
  [ "$(grep -c "registered WORKER rank" "$work/stop/scheduler.log")" -ge 3 ] && break
  sleep 0.2
done
[ "$(grep -c "registered WORKER rank" "$work/stop/scheduler.log")" -ge 3 ] || fail "the new worker did not register"
kill -TERM "$launcher_pid"
set +e
wait "$launcher_pid"
rc=$?
set -e
launcher_pid=""
[ "$rc" -eq 0 ] || { sed 's/^/  | /' "$work/stop.out"; fail "ssh.sh exited with status $rc after SIGTERM"; }
grep -q "^stopped; to continue the job: launch/ssh.sh .*--resume $work/stop/checkpoints" "$work/stop.out" ||
  { sed 's/^/  | /' "$work/stop.out"; fail "no 'stopped; ... --resume' line after SIGTERM"; }
ls "$work"/stop/checkpoints/ckpt-*/MANIFEST >/dev/null 2>&1 || fail "no complete checkpoint after the SIGTERM stop"
check_none_left "after ssh.sh stopped on SIGTERM"
echo "stop: a killed worker was restarted; SIGTERM checkpointed and stopped the job"

# 3. The launcher killed with SIGKILL: every remote process dies with it.
launch orphan --epochs 100
wait_for "$work/orphan/scheduler.out" "epoch 1/100" "the third job did not start training"
kill -9 "$launcher_pid"
wait "$launcher_pid" 2>/dev/null || true
launcher_pid=""
check_none_left "after ssh.sh was killed with SIGKILL"
echo "orphan: SIGKILL of ssh.sh left no process on any host"
echo "PASSED: auc=$auc oracle_auc=$oracle in ${elapsed}s"
