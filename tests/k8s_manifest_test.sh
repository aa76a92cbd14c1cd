#!/bin/bash
# `ember k8s` offline: generates the manifests of two job shapes and checks
# them with tests/k8s_manifest_check.py (parsed YAML against the config and
# flags, the pods' scripts run with a fake ember, the probe against a real
# scheduler, a round trip through kubectl's Go types with no cluster).
# Usage: k8s_manifest_test.sh EMBER_BINARY SOURCE_DIR. Exit 77: skipped
# (no python3 with yaml).
set -u
ember=$1
src=$2
py=/usr/bin/python3
if ! "$py" -c 'import yaml' 2>/dev/null; then
  echo "SKIP: needs /usr/bin/python3 with Debian's python3-yaml"
  exit 77
fi
kubectl=$(command -v kubectl || true)
if [ -z "$kubectl" ]; then
  echo "SKIP (part): kubectl not found (Debian's kubernetes-client); the kubectl round trip is left out" >&2
fi
tmp=$(mktemp -d /tmp/k8s_manifest_test.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# The fake ember the scripts run: records its arguments, writes the result
# file if asked, runs until SIGTERM if asked, exits with FAKE_RC.
cat > "$tmp/fake-ember" <<'EOF'
#!/bin/sh
for a in "$@"; do echo "$a"; done > "$FAKE_ARGS"
if [ -n "${FAKE_RESULT:-}" ]; then echo "final: auc=0.8" > "$FAKE_RESULT"; fi
if [ -n "${FAKE_SLEEP:-}" ]; then
  trap 'echo TERM > "$FAKE_ARGS.term"; exit 143' TERM
  while :; do sleep 1; done
fi
exit "${FAKE_RC:-0}"
EOF
chmod 755 "$tmp/fake-ember"

"$ember" gen-data --out="$tmp/data" --train_rows=2000 --test_rows=200 >/dev/null || exit 1
free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("0.0.0.0", 0)); print(s.getsockname()[1])'; }
status=0

# Shape 1: examples/local.conf as it is (2 servers, 2 workers), CURVE keys,
# a data claim, default ports.
port=$(free_port)
out1=$tmp/local
"$ember" k8s --config="$src/examples/local.conf" --image=registry.example/ember:1 --job_claim=ember-jobs \
  --data_claim=click-logs --binary="$tmp/fake-ember" --port="$port" --out="$out1" || exit 1
mkdir -p "$tmp/t1"
"$py" "$src/tests/k8s_manifest_check.py" --dir="$out1" --config="$src/examples/local.conf" --name=local \
  --namespace=default --job_claim=ember-jobs --data_claim=click-logs --secret=local-secrets \
  --binary="$tmp/fake-ember" --ember="$ember" --tmp="$tmp/t1" --servers=2 --workers=2 --port="$port" \
  --server_port=27200 --worker_restarts=6 --data_dir="$tmp/data" --kubectl="$kubectl" || status=1

# Shape 2: another config with a RocksDB tier (memory budget), other counts,
# ports, name, namespace and Secret, plain TCP, data in the image.
sed -e 's/^name: "local"/name: "Spill_Demo"/' \
    -e 's|^cluster {|storage { memory_budget_bytes: 50000000 spill_path: "/var/lib/ember-spill" }\ncluster {|' \
    "$src/examples/local.conf" > "$tmp/spill.conf"
grep -q memory_budget_bytes "$tmp/spill.conf" || { echo "FAIL: could not write spill.conf"; exit 1; }
# A line of blanks, a tab, and no newline at the end: the ConfigMap must still
# hold the text byte for byte (a literal block cannot; a quoted string can).
printf '  \n\t# tab\n# no newline at the end' >> "$tmp/spill.conf"
port=$(free_port)
out2=$tmp/spill
"$ember" k8s --config="$tmp/spill.conf" --image=registry.example/ember:2 --job_claim=shared.jobs \
  --num_servers=3 --num_workers=5 --port="$port" --server_port=31000 --k8s_namespace=ml --secret=ember-token \
  --insecure --spill_size=20Gi --spill_storage_class=local-ssd --worker_restarts=2 --binary="$tmp/fake-ember" --out="$out2" || exit 1
mkdir -p "$tmp/t2"
"$py" "$src/tests/k8s_manifest_check.py" --dir="$out2" --config="$tmp/spill.conf" --name=spill-demo \
  --namespace=ml --job_claim=shared.jobs --secret=ember-token --insecure --binary="$tmp/fake-ember" \
  --ember="$ember" --tmp="$tmp/t2" --servers=3 --workers=5 --port="$port" --server_port=31000 \
  --worker_restarts=2 --spill_path=/var/lib/ember-spill --spill_size=20Gi --spill_storage_class=local-ssd --data_dir="$tmp/data" --kubectl="$kubectl" || status=1

# stdout: the same objects as --out, separated by ---.
"$ember" k8s --config="$src/examples/local.conf" --image=registry.example/ember:1 --job_claim=ember-jobs \
  --data_claim=click-logs --binary="$tmp/fake-ember" --port="$port" > "$tmp/stdout.yaml" || status=1
"$py" - "$tmp/stdout.yaml" "$out1" "$port" <<'EOF' || status=1
import glob, sys, yaml
docs = list(yaml.safe_load_all(open(sys.argv[1])))
files = [yaml.safe_load(open(f)) for f in sorted(glob.glob(sys.argv[2] + "/*.yaml"))]
same = len(docs) == 6 and [d["kind"] for d in docs] == [f["kind"] for f in files]
print("stdout holds the 6 objects" if same else "FAIL: stdout differs from --out")
sys.exit(0 if same else 1)
EOF

# A wrong flag stops it with the flag named, and writes nothing.
err=$("$ember" k8s --config="$src/examples/local.conf" --image=x --job_claim=jobs --server_port=99999 \
  --out="$tmp/bad" 2>&1)
if [ $? -eq 0 ] || [[ "$err" != *"flag --server_port: 99999 is not in [1, 65535]"* ]] || [ -e "$tmp/bad" ]; then
  echo "FAIL: --server_port=99999: $err"; status=1
fi
[ $status -eq 0 ] && echo "k8s_manifest_test: passed"
exit $status
