#!/usr/bin/env bash
# tests/fuzz/run.sh SECONDS [TARGET...]: builds the libFuzzer targets
# (clang, -DEMBER_FUZZ=ON; docs/fuzzing.md) and runs each for SECONDS on a
# scratch copy of its seed corpus (tests/fuzz/corpus/<target>; the
# repository is never written). TARGET is e.g. "wire" or "fuzz_wire";
# default: every target. Prints per target one line
#   fuzz_<target> execs_per_sec=N corpus=N
# (libFuzzer's final stats; corpus = inputs in the scratch corpus at the end)
# and exits nonzero if any target crashed, leaking, timing out or running out
# of memory; the crashing input is kept in $EMBER_FUZZ_ARTIFACTS (default
# <build dir>/fuzz-artifacts) and the log's tail is printed.
#
# Environment: EMBER_FUZZ_BUILD_DIR (default <repo>/build-fuzz);
# EMBER_FUZZ_NO_BUILD=1 to use the binaries there as they are (ctest's
# fuzz_short does); EMBER_FUZZ_JOBS targets at a time (default 1);
# EMBER_FUZZ_TMPDIR for scratch files (default /dev/shm if writable, else
# $TMPDIR or /tmp).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../launch/setup.sh"
if [ $# -lt 1 ] || ! [[ "$1" =~ ^[0-9]+$ ]] || [ "$1" -lt 1 ]; then
  echo "usage: $0 SECONDS [TARGET...]" >&2
  exit 2
fi
seconds="$1"
shift
all_targets=(fuzz_wire fuzz_log_parser fuzz_checkpoint fuzz_config fuzz_serve_request)
targets=()
for t in "$@"; do
  t="fuzz_${t#fuzz_}"
  [ -d "$EMBER_ROOT/tests/fuzz/corpus/${t#fuzz_}" ] || { echo "$0: unknown target $t" >&2; exit 2; }
  targets+=("$t")
done
[ ${#targets[@]} -eq 0 ] && targets=("${all_targets[@]}")
build_dir="${EMBER_FUZZ_BUILD_DIR:-$EMBER_ROOT/build-fuzz}"
jobs="${EMBER_FUZZ_JOBS:-1}"

if [ "${EMBER_FUZZ_NO_BUILD:-0}" != 1 ]; then
  ember_install_deps clang libfuzzer-14-dev
  args=(-DEMBER_FUZZ=ON)
  # A new directory: clang, and only what fuzzing needs. An existing one
  # keeps its settings (tests/run.sh's sanitizer stage builds the unit tests
  # there too).
  if [ ! -f "$build_dir/CMakeCache.txt" ]; then
    args+=(-DCMAKE_CXX_COMPILER=clang++ -DEMBER_BUILD_TESTS=OFF -DEMBER_BUILD_BENCHMARKS=OFF)
  fi
  ember_build "$build_dir" "${args[@]}"
fi
artifacts="${EMBER_FUZZ_ARTIFACTS:-$build_dir/fuzz-artifacts}"
mkdir -p "$artifacts"
# Scratch corpora and the targets' temporary files (fuzz_checkpoint writes a
# checkpoint directory per input: ~30x faster on tmpfs than on this disk).
scratch_root="${EMBER_FUZZ_TMPDIR:-}"
if [ -z "$scratch_root" ]; then
  if [ -d /dev/shm ] && [ -w /dev/shm ]; then scratch_root=/dev/shm; else scratch_root="${TMPDIR:-/tmp}"; fi
fi
scratch="$(mktemp -d "$scratch_root/ember_fuzz_run.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT

# run_one TARGET: fuzzes, then prints its line; the status file says how it went.
run_one() {
  local t="$1" name="${1#fuzz_}"
  local work="$scratch/$name"
  mkdir -p "$work/corpus" "$work/tmp"
  cp "$EMBER_ROOT/tests/fuzz/corpus/$name/"* "$work/corpus/"
  local rc=0
  (cd "$work" && TMPDIR="$work/tmp" "$build_dir/tests/fuzz/$t" -max_total_time="$seconds" -print_final_stats=1 \
      -timeout=30 -rss_limit_mb=3072 -artifact_prefix="$artifacts/$t-" "$work/corpus" >"$work/log" 2>&1) || rc=$?
  local eps corpus
  eps="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/log" | tail -n1)"
  corpus="$(find "$work/corpus" -type f | wc -l)"
  echo "$t execs_per_sec=${eps:-0} corpus=$corpus"
  if [ "$rc" -ne 0 ]; then
    echo "$t FAILED (exit $rc); log tail:" >&2
    tail -n 40 "$work/log" >&2
    echo "$t: crashing input under $artifacts/$t-*" >&2
  fi
  echo "$rc" >"$work/status"
}

running=0
for t in "${targets[@]}"; do
  [ -x "$build_dir/tests/fuzz/$t" ] || { echo "$0: $build_dir/tests/fuzz/$t is not built" >&2; exit 1; }
  run_one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait
failed=0
for t in "${targets[@]}"; do
  [ "$(cat "$scratch/${t#fuzz_}/status" 2>/dev/null || echo 1)" = 0 ] || failed=1
done
exit "$failed"
