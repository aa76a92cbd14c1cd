#!/usr/bin/env bash
# launch/plot.py on a synthetic metrics file with every event kind (and an
# unknown one, and missing fields): writes a real PNG; two runs overlay; a
# line that is not JSON, a missing file and a file with nothing to plot stop
# it with a non-zero exit and the place named.
#
# usage: plot_test.sh SOURCE_DIR
# Needs python3 with matplotlib (Debian: python3-matplotlib, which is for
# /usr/bin/python3); skips loudly (exit 77) without it.
set -euo pipefail
root="$(cd "$1" && pwd)"
plot="$root/launch/plot.py"

# The first python3 that has matplotlib: the one on PATH, else Debian's (a
# pyenv or venv python3 on PATH does not see Debian's python3-matplotlib).
python=""
for p in python3 /usr/bin/python3; do
  if command -v "$p" >/dev/null && "$p" -c 'import matplotlib' 2>/dev/null; then
    python="$p"
    break
  fi
done
if [ -z "$python" ]; then
  echo "SKIPPED: no python3 with matplotlib (apt-get install python3-matplotlib)"
  exit 77
fi

work="$(mktemp -d /tmp/ember-plot-test.XXXXXX)"
trap '[ -n "${EMBER_PLOT_TEST_KEEP:-}" ] || rm -rf "$work"' EXIT
fail() { echo "FAILED: $*" >&2; exit 1; }

# A PNG file opens with these 8 bytes.
is_png() { [ "$(head -c 8 "$1" | od -An -tx1 | tr -d ' \n')" == "89504e470d0a1a0a" ]; }

# Two epochs, two tasks; a checkpoint of each kind, a recovery without
# samples (placed by its elapsed time), a reset, an event kind plot.py does
# not know, a progress line without loss.
cat >"$work/run.jsonl" <<'EOF'
{"time": 1700000000.0, "elapsed": 0.0, "event": "progress", "epoch": 1, "step": 10, "samples": 1000, "samples_per_sec": 900.0, "loss": 0.69, "train_auc": 0.55}
{"time": 1700000001.0, "elapsed": 1.0, "event": "progress", "epoch": 1, "step": 20, "samples": 2000, "samples_per_sec": 950.0, "loss": 0.60, "train_auc": 0.62}
{"time": 1700000001.5, "elapsed": 1.5, "event": "checkpoint", "epoch": 1, "step": 20, "samples": 2000, "checkpoint": {"id": 1, "kind": "full", "bytes": 123456, "pause_ms": 12.5}}
{"time": 1700000002.0, "elapsed": 2.0, "event": "progress", "epoch": 1, "step": 30, "samples": 3000, "samples_per_sec": 980.0, "loss": 0.55, "train_auc": 0.68}
{"time": 1700000002.5, "elapsed": 2.5, "event": "epoch", "epoch": 1, "step": 30, "samples": 3000, "loss": 0.61, "train_auc": 0.62}
{"time": 1700000003.0, "elapsed": 3.0, "event": "eval", "epoch": 1, "step": 30, "samples": 3000, "tasks": {"ctr": {"auc": 0.70, "gauc": 0.66, "logloss": 0.52}, "cvr": {"auc": 0.64, "logloss": 0.31}}}
{"time": 1700000003.5, "elapsed": 3.5, "event": "recovery", "recovery": {"what": "server rank 1 died", "seconds": 0.8}}
{"time": 1700000004.0, "elapsed": 4.0, "event": "progress", "epoch": 2, "step": 40, "samples": 4000, "samples_per_sec": 700.0, "loss": 0.52, "train_auc": 0.71}
{"time": 1700000004.2, "elapsed": 4.2, "event": "reset", "epoch": 2, "step": 40, "samples": 4000}
{"time": 1700000004.5, "elapsed": 4.5, "event": "checkpoint", "epoch": 2, "step": 45, "samples": 4500, "checkpoint": {"id": 2, "kind": "incremental", "bytes": 2345, "pause_ms": 1.5}}
{"time": 1700000005.0, "elapsed": 5.0, "event": "progress", "epoch": 2, "step": 50, "samples": 5000, "samples_per_sec": 990.0, "train_auc": 0.73}
{"time": 1700000005.5, "elapsed": 5.5, "event": "some_future_event", "whatever": [1, 2, 3]}
{"time": 1700000006.0, "elapsed": 6.0, "event": "progress", "epoch": 2, "step": 60, "samples": 6000, "samples_per_sec": 1000.0, "loss": 0.48, "train_auc": 0.75}
{"time": 1700000006.5, "elapsed": 6.5, "event": "epoch", "epoch": 2, "step": 60, "samples": 6000, "loss": 0.50}
{"time": 1700000007.0, "elapsed": 7.0, "event": "eval", "epoch": 2, "step": 60, "samples": 6000, "tasks": {"ctr": {"auc": 0.73, "gauc": 0.69, "logloss": 0.49}, "cvr": {"auc": 0.67}}}
{"time": 1700000007.5, "elapsed": 7.5, "event": "final", "epoch": 2, "step": 60, "samples": 6000, "tasks": {"ctr": {"auc": 0.73, "gauc": 0.69, "logloss": 0.49}, "cvr": {"auc": 0.67}}}
EOF

png_ok() {  # png_ok FILE WHAT
  [ -f "$1" ] || fail "$2: no $1"
  local size
  size=$(stat -c %s "$1")
  # Four panels with curves and text are tens of kB; an empty canvas is not.
  [ "$size" -gt 20000 ] || fail "$2: $1 is only $size bytes"
  is_png "$1" || fail "$2: $1 does not start with the PNG signature"
}

echo "== every event kind, each x axis"
for x in samples elapsed step; do
  out="$("$python" "$plot" "$work/run.jsonl" -o "$work/curves_$x.png" --x "$x")" || fail "plot.py --x $x: $out"
  echo "$out"
  png_ok "$work/curves_$x.png" "--x $x"
done
echo "$out" | grep -q "1 recovery" || fail "the summary does not count the recovery: $out"
! echo "$out" | grep -q "not drawn" || fail "one incremental checkpoint was left out: $out"

# Each kind is drawn where its event says: moving one event changes the image
# (Agg draws the same bytes for the same input; the legends stay the same).
"$python" "$plot" "$work/run.jsonl" --label run -o "$work/full.png" >/dev/null || fail "plot.py"
"$python" "$plot" "$work/run.jsonl" --label run -o "$work/again.png" >/dev/null || fail "plot.py"
cmp -s "$work/full.png" "$work/again.png" || fail "two runs on the same input drew different images"
moves=(
  'full checkpoint|/"full"/s/"samples": 2000/"samples": 2500/'
  'incremental checkpoint|/"incremental"/s/"samples": 4500/"samples": 5500/'
  'recovery (placed by elapsed)|s/"elapsed": 3.5, "event": "recovery"/"elapsed": 5.5, "event": "recovery"/'
  'reset|/"reset"/s/"samples": 4000/"samples": 5500/'
  'eval|/"eval"/s/"auc": 0.70/"auc": 0.60/'
  'final|/"final"/s/"auc": 0.67/"auc": 0.80/'
)
for move in "${moves[@]}"; do
  what="${move%%|*}"
  sed -e "${move#*|}" "$work/run.jsonl" >"$work/moved.jsonl"
  ! cmp -s "$work/run.jsonl" "$work/moved.jsonl" || fail "test bug: the edit for $what changed nothing"
  "$python" "$plot" "$work/moved.jsonl" --label run -o "$work/moved.png" >/dev/null || fail "plot.py, $what moved"
  ! cmp -s "$work/full.png" "$work/moved.png" || fail "moving the $what event changes nothing in the image"
done

# plot.py runs itself again under Debian's python3 when the python3 on PATH
# (pyenv, a venv) lacks matplotlib.
if command -v python3 >/dev/null && [ "$python" == /usr/bin/python3 ]; then
  echo "== python3 on PATH ($(command -v python3)) lacks matplotlib: plot.py switches to /usr/bin/python3"
  python3 "$plot" "$work/run.jsonl" -o "$work/reexec.png" || fail "plot.py under $(command -v python3)"
  png_ok "$work/reexec.png" "re-run under /usr/bin/python3"
fi

echo "== two runs overlaid, with labels; an unfinished last line is dropped with a warning"
grep -v '"reset"' "$work/run.jsonl" >"$work/no_reset.jsonl"
printf '{"time": 1700000008.0, "elapsed": 8.0, "event": "progr' >>"$work/no_reset.jsonl"
"$python" "$plot" "$work/run.jsonl" "$work/no_reset.jsonl" --label reset --label no-reset \
  -o "$work/both.png" 2>"$work/both.err" || fail "two runs: $(cat "$work/both.err")"
png_ok "$work/both.png" "two runs"
grep -q "no_reset.jsonl:16: dropping an unfinished last line" "$work/both.err" ||
  fail "no warning naming the unfinished line: $(cat "$work/both.err")"

echo "== 60 incremental checkpoints are left out, saying so"
{
  cat "$work/run.jsonl"
  for i in $(seq 1 60); do
    echo "{\"event\": \"checkpoint\", \"samples\": $((i * 100)), \"checkpoint\": {\"kind\": \"incremental\"}}"
  done
} >"$work/many.jsonl"
out="$("$python" "$plot" "$work/many.jsonl" -o "$work/many.png")" || fail "many checkpoints: $out"
png_ok "$work/many.png" "many checkpoints"
echo "$out" | grep -q "61 incremental checkpoints not drawn" || fail "no note on the checkpoints left out: $out"

# expect_error WHAT EXPECTED_TEXT plot.py-args...: non-zero exit, EXPECTED_TEXT on stderr, no PNG.
expect_error() {
  local what="$1" expected="$2"
  shift 2
  rm -f "$work/bad.png"
  if "$python" "$plot" "$@" -o "$work/bad.png" 2>"$work/err"; then
    fail "$what: plot.py exited 0"
  fi
  cat "$work/err"
  grep -qF -- "$expected" "$work/err" || fail "$what: the error does not say '$expected'"
  [ ! -e "$work/bad.png" ] || fail "$what: wrote a PNG anyway"
}

echo "== a line that is not JSON: file:line"
{ head -3 "$work/run.jsonl"; echo '{"event": "progress", "loss": 0.5,,}'; tail -n +4 "$work/run.jsonl"; } \
  >"$work/malformed.jsonl"
expect_error "malformed line" "$work/malformed.jsonl:4: not JSON" "$work/malformed.jsonl"

echo "== a JSON value that is not an object: file:line"
{ head -2 "$work/run.jsonl"; echo '[1, 2]'; } >"$work/array.jsonl"
expect_error "array line" "$work/array.jsonl:3:" "$work/array.jsonl"

echo "== a missing file"
expect_error "missing file" "$work/absent.jsonl: no such file" "$work/run.jsonl" "$work/absent.jsonl"

echo "== nothing to plot (checkpoints only, progress without x)"
grep '"checkpoint"' "$work/run.jsonl" >"$work/nothing.jsonl"
echo '{"event": "progress", "loss": 0.5}' >>"$work/nothing.jsonl"
expect_error "no plottable events" "$work/nothing.jsonl: no plottable events" "$work/nothing.jsonl"

echo "== -o naming an input file is refused, and the input is kept"
before="$(sha256sum <"$work/run.jsonl")"
if "$python" "$plot" "$work/run.jsonl" -o "$work/run.jsonl" 2>"$work/err"; then
  fail "plot.py wrote over its input"
fi
grep -q "is an input file" "$work/err" || fail "no reason given: $(cat "$work/err")"
[ "$(sha256sum <"$work/run.jsonl")" == "$before" ] || fail "the input file changed"

echo "PASSED"
