#!/usr/bin/env bash
# The address flags of `ember scheduler` and `ember server` (docs/launch.md):
# a port in use stops the process with the flag and port named; a wildcard
# --advertise_host is refused; --host=0.0.0.0 needs keys or --insecure; a
# server bound to 0.0.0.0 advertises this machine's hostname, or
# --advertise_host, and a worker trains through that address.
#
# usage: address_flags_test.sh EMBER_BINARY SOURCE_DIR
set -euo pipefail
ember="$1"
root="$(cd "$2" && pwd)"
work="$(mktemp -d /tmp/ember-address.XXXXXX)"
pids=()
cleanup() {
  local p
  for p in "${pids[@]+"${pids[@]}"}"; do kill -9 "$p" 2>/dev/null || true; done
  for p in "${pids[@]+"${pids[@]}"}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAILED: $*" >&2; exit 1; }

# A port held by another process.
python3 -c 'import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
print(s.getsockname()[1], flush=True); time.sleep(120)' >"$work/held" &
pids+=($!)
for _ in $(seq 1 100); do [ -s "$work/held" ] && break; sleep 0.1; done
held=$(cat "$work/held")
[ -n "$held" ] || fail "could not hold a port"

expect_error() {  # WHAT PATTERN CMD...
  local what=$1 pattern=$2 rc=0
  shift 2
  timeout 20 "$@" >"$work/out" 2>"$work/err" || rc=$?
  [ "$rc" -eq 1 ] || fail "$what: exit status $rc, not 1 ($(tail -n 2 "$work/err"))"
  grep -q -- "$pattern" "$work/err" || fail "$what: no '$pattern' in: $(grep error: "$work/err")"
  echo "ok: $what: $(grep '^error:' "$work/err")"
}
expect_error "scheduler on a port in use" "flag --port: port $held on 127.0.0.1 is already in use" \
  "$ember" scheduler --config="$root/examples/local.conf" --port="$held" --data_dir="$work/none"
expect_error "server on a port in use" "flag --port: port $held on 127.0.0.1 is already in use" \
  "$ember" server --scheduler=tcp://127.0.0.1:1 --port="$held"
expect_error "wildcard --advertise_host" "flag --advertise_host: 0.0.0.0 is a wildcard" \
  "$ember" server --scheduler=tcp://127.0.0.1:1 --host=0.0.0.0 --advertise_host=0.0.0.0 --insecure
expect_error "0.0.0.0 without keys" "flag --host: 0.0.0.0 is not a loopback address" \
  "$ember" server --scheduler=tcp://127.0.0.1:1 --host=0.0.0.0

# A job whose server binds 0.0.0.0 and advertises an address of its own.
"$ember" gen-data --out="$work/data" --train_rows=2000 --test_rows=200 --train_files=1 --test_files=1 >/dev/null
"$ember" keygen --out="$work/keys" >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
k=--keys_dir="$work/keys"
"$ember" scheduler "$k" --config="$root/examples/local.conf" --data_dir="$work/data" --port="$port" \
  --num_servers=2 --num_workers=1 --epochs=1 --checkpoint_dir="$work/ckpt" --export_dir="$work/export" \
  --exit_with_parent >"$work/scheduler.out" 2>"$work/scheduler.log" &
pids+=($!)
"$ember" server "$k" --scheduler="tcp://127.0.0.1:$port" --host=0.0.0.0 --exit_with_parent 2>"$work/server0.log" &
pids+=($!)
"$ember" server "$k" --scheduler="tcp://127.0.0.1:$port" --host=0.0.0.0 --advertise_host=127.0.0.1 \
  --exit_with_parent 2>"$work/server1.log" &
pids+=($!)
"$ember" worker "$k" --scheduler="tcp://127.0.0.1:$port" --exit_with_parent 2>"$work/worker.log" &
pids+=($!)
for p in "${pids[@]:1}"; do
  wait "$p" || fail "pid $p exited with status $? ($(tail -n 3 "$work"/*.log))"
done
grep -q '^final:' "$work/scheduler.out" || fail "no final line: $(tail -n 3 "$work/scheduler.log")"
host=$(hostname)
grep -q "registered SERVER .* tcp://$host:[0-9]*)" "$work/scheduler.log" ||
  fail "no server registered at tcp://$host:PORT: $(grep registered "$work/scheduler.log")"
grep -q "registered SERVER .* tcp://127.0.0.1:[0-9]*)" "$work/scheduler.log" ||
  fail "no server registered at its --advertise_host 127.0.0.1: $(grep registered "$work/scheduler.log")"
grep -q "listening on tcp://0.0.0.0:" "$work/server1.log" || fail "server1 did not bind 0.0.0.0"
echo "ok: $(grep '^final:' "$work/scheduler.out")"
echo PASSED
