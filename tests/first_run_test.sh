#!/usr/bin/env bash
# A new user's first run, as README.md writes it: convert public data, train
# on it with launch/local.sh, and check that nothing the user (or convert)
# wrote was touched. Also: a misspelled --data-dir creates nothing, a user's
# own logs (no meta.txt) train as they are, gen-data refuses converted data,
# and kill -9 of local.sh takes the whole cluster down with it.
#
# usage: first_run_test.sh EMBER_BINARY SOURCE_DIR
# Needs ../shared/data (public data); skips loudly (exit 77) without it.
set -euo pipefail
ember="$1"
root="$(cd "$2" && pwd)"
shared="$root/../shared/data"
if [ ! -f "$shared/movielens-latest-small/ratings.csv" ]; then
  echo "SKIPPED: $shared/movielens-latest-small is absent (public data; see the developers' guide)"
  exit 77
fi

work="$(mktemp -d /tmp/ember-first-run.XXXXXX)"
bg=""
cleanup() {
  [ -n "$bg" ] && kill -9 "$bg" 2>/dev/null || true
  # Anything still started from this work directory (a failed check below).
  pkill -9 -f -- "--result_file=$work/" 2>/dev/null || true
  pkill -9 -f -- "--scheduler=tcp://127.0.0.1:$port" 2>/dev/null || true
  rm -rf "$work"
}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
trap cleanup EXIT

fail() { echo "FAILED: $*" >&2; exit 1; }

# The README's commands run from the repository root with its relative paths;
# here the root is a scratch directory with the repository's launch/ and
# examples/ linked in, and the public data under the README's names.
cd "$work"
ln -s "$root/launch" launch
ln -s "$root/examples" examples
ln -s "$shared/movielens-latest-small" ml-latest-small
ln -s "$shared/census-income/census-income.test.gz" census-income.test.gz
mkdir bin && ln -s "$ember" bin/ember
export PATH="$work/bin:$PATH"

# Every local.sh run: the built binary (no install, no build), a free port,
# one epoch (the check is that it trains, not how well).
local_sh() {
  ./launch/local.sh --binary "$ember" --port "$port" --epochs 1 --log-dir "$work/logs/$1" "${@:2}"
}
digest() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum); }

echo "== README: ember convert movielens, then local.sh on it (two config forms)"
ember convert movielens --input=ml-latest-small --out=data/ml >/dev/null
before="$(digest data/ml)"
out="$(local_sh ml --config examples/movielens_din.conf --data-dir data/ml --servers 1 --workers 1)" ||
  fail "local.sh on converted MovieLens: $out"
echo "$out" | tail -1
final="$(echo "$out" | grep '^final:')" || fail "no final line"
[[ "$final" == *" auc="* ]] || fail "no auc in: $final"
[[ "$final" != *oracle_auc* ]] || fail "a real data set reports an oracle: $final"
[[ "$final" != *nan* ]] || fail "nan in: $final"
# It ends with the exported model, scored by ember predict as training scored it.
exported="$(echo "$out" | grep '^exported:')" || fail "no exported line: $out"
echo "$exported"
auc=$(sed -n 's/^final: auc=\([^ ]*\).*/\1/p' <<<"$final")
export_auc=$(sed -n 's/.* export_auc=\([^ ]*\).*/\1/p' <<<"$exported")
awk -v a="$auc" -v b="$export_auc" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(b != "" && d <= 0.0001) }' ||
  fail "export_auc=$export_auc is not within 0.0001 of auc=$auc"
bundle=$(sed -n 's/^exported: bundle=\([^ ]*\).*/\1/p' <<<"$exported")
ember inspect "$bundle" >/dev/null || fail "ember inspect refuses the exported bundle $bundle"
[ "$(digest data/ml)" == "$before" ] || fail "local.sh changed the converted files in data/ml"
out="$(local_sh ml2 --config data/ml/job.conf --data-dir data/ml)" || fail "local.sh --config data/ml/job.conf: $out"
[ "$(digest data/ml)" == "$before" ] || fail "local.sh (job.conf form) changed the converted files"

echo "== gen-data refuses to overwrite converted data"
if ember gen-data --out=data/ml --overwrite --train_rows=1000 --test_rows=100 2>"$work/gen.err"; then
  fail "gen-data overwrote a converted data set"
fi
cat "$work/gen.err"
[ "$(digest data/ml)" == "$before" ] || fail "gen-data changed the converted files"

echo "== a misspelled --data-dir creates nothing"
if local_sh typo --config examples/movielens_din.conf --data-dir data/mll 2>"$work/typo.err"; then
  fail "local.sh ran with a missing --data-dir"
fi
cat "$work/typo.err"
[ ! -e data/mll ] || fail "local.sh created data/mll"
grep -q "no such directory" "$work/typo.err" || fail "the error does not say the directory is missing"

echo "== a user's own logs, no meta.txt: trained as they are"
mkdir -p data/own
cp -r data/ml/train data/ml/test data/own/
own_before="$(digest data/own)"
local_sh own --config examples/movielens_baseline.conf --data-dir data/own --servers 1 --workers 1 | tail -1 ||
  fail "local.sh on logs without meta.txt"
[ "$(digest data/own)" == "$own_before" ] || fail "local.sh changed the user's logs"

if [ -f census-income.test.gz ]; then
  echo "== README: ember convert census, then local.sh with census_mmoe.conf"
  ember convert census --input=census-income.test.gz --out=data/census >/dev/null
  cbefore="$(digest data/census)"
  local_sh census --config examples/census_mmoe.conf --data-dir data/census --servers 1 --workers 1 | tail -1 ||
    fail "local.sh on converted census"
  [ "$(digest data/census)" == "$cbefore" ] || fail "local.sh changed the converted census files"
else
  echo "SKIPPED (census part): $shared/census-income is absent"
fi

echo "== kill -9 of local.sh takes every process with it"
# local.sh itself in the background (not a subshell around it), so $! is its pid.
./launch/local.sh --binary "$ember" --port "$port" --log-dir "$work/logs/killed" --epochs 50 \
  --config examples/movielens_din.conf --data-dir data/ml --servers 1 --workers 2 >"$work/killed.out" 2>&1 &
bg=$!
for _ in $(seq 1 300); do
  grep -q "cluster up" "$work/logs/killed/scheduler.out" 2>/dev/null && break
  sleep 0.1
done
grep -q "cluster up" "$work/logs/killed/scheduler.out" || fail "the cluster did not come up: $(cat "$work/killed.out")"
n="$(pgrep -c -f -- "--scheduler=tcp://127.0.0.1:$port" || true)"
[ "$n" -eq 3 ] || fail "expected 3 servers+workers running, found $n"
kill -9 "$bg"
bg=""
for _ in $(seq 1 50); do
  pgrep -f -- "--result_file=$work/logs/killed/" >/dev/null || pgrep -f -- "--scheduler=tcp://127.0.0.1:$port" \
    >/dev/null || break
  sleep 0.1
done
if pgrep -af -- "tcp://127.0.0.1:$port|--result_file=$work/logs/killed/"; then
  fail "processes outlived local.sh"
fi
echo "PASSED"
