# Shared by launch/local.sh, launch/ssh.sh and tests/run.sh: install what is
# missing (Debian packages only), build, and the launchers' common steps (the
# job token, the failure summary, the final and exported lines). Source it; it
# defines functions and changes nothing.

EMBER_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EMBER_PACKAGES="build-essential cmake pkg-config libzmq3-dev cppzmq-dev libprotobuf-dev protobuf-compiler
  libeigen3-dev libgoogle-glog-dev libgflags-dev librocksdb-dev libgtest-dev libgmock-dev libabsl-dev zlib1g-dev
  libcpp-httplib-dev nlohmann-json3-dev"
# Not needed to build or train; tests/run.sh adds them for the tests of the
# tools beside the binary (launch/plot.py: tests/plot_test.sh) and for the
# sanitizer and fuzzing build (clang, libFuzzer: docs/fuzzing.md), and the
# launchers run on real daemons and hosts (launch/slurm/: tests/slurm_test.sh;
# network namespaces and sshd in each: tests/netns_lib.sh, tests/netns_ssh_test.sh),
# and `ember k8s`'s manifests are checked offline (python3-yaml, kubectl:
# tests/k8s_manifest_test.sh).
EMBER_TEST_PACKAGES="python3-matplotlib clang libfuzzer-14-dev slurm-wlm munge iproute2 iputils-ping openssh-server
  python3-yaml kubernetes-client"

# ember_install_deps [PACKAGE...]: installs EMBER_PACKAGES and the given
# packages that are not installed yet (apt-get; sudo when not root).
ember_install_deps() {
  local missing=() p
  for p in $EMBER_PACKAGES "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# ember_build BUILD_DIR [cmake args...]: configures (Release) and builds everything.
ember_build() {
  local dir="$1"
  shift
  cmake -S "$EMBER_ROOT" -B "$dir" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
  cmake --build "$dir" -j"$(nproc)"
}

# ember_job_token: prints a fresh registration token for one run. Launchers
# export it as EMBER_JOB_TOKEN (never on a command line: docs/security.md).
ember_job_token() {
  od -An -N16 -tx1 /dev/urandom | tr -d ' \n'
}

# ember_explain_failure LOG_DIR FAILED: why the job failed, once, on stderr:
# the scheduler's error (the job's view) first, then the failed process's
# (FAILED: "server 2", "worker 1", ...), then the rest, tagged by log; a line
# that repeats one already shown (or is contained in it) is dropped.
ember_explain_failure() {
  local log_dir=$1 failed=$2 f
  {
    for f in scheduler "${failed// /}" $(cd "$log_dir" && ls -- *.log 2>/dev/null | sed 's/\.log$//' | sort -V); do
      [ -f "$log_dir/$f.log" ] || continue
      sed -n 's/^error: //p' "$log_dir/$f.log" | head -3 | sed "s/^/$f: /"
    done
  } | awk '{ m = $0; sub(/^[a-z]+[0-9]*: /, "", m); sub(/^job failed: /, "", m)
             for (i = 0; i < n; i++) if (index(shown[i], m) || index(m, shown[i])) next
             shown[n++] = m; print "  " $0 }' | head -6 >&2
}

# ember_report_final EMBER LOG_DIR EXPORT_DIR: prints the run's final line
# (LOG_DIR/scheduler.out) and the exported model, scored on the test split by
# `ember predict` (outside the cluster); returns 1 if either is missing. The
# bundle must be readable here (a shared file system for launch/ssh.sh).
ember_report_final() {
  local ember=$1 log_dir=$2 export_dir=$3 final bundle predictions n predict export_auc
  final=$(grep '^final:' "$log_dir/scheduler.out" | tail -1)
  echo "$final"
  bundle=$(sed -n 's/^export [0-9]* .* -> //p' "$log_dir/scheduler.out" | tail -1)
  if [ -z "$bundle" ]; then
    echo "error: the job exported no model (see $log_dir/scheduler.out)" >&2
    return 1
  fi
  predictions="$log_dir/predictions.tsv"
  n=1
  while [ -e "$predictions" ]; do predictions="$log_dir/predictions.$n.tsv"; n=$((n + 1)); done
  if ! predict=$("$ember" predict --bundle="$bundle" --out="$predictions" 2>"$log_dir/predict.log"); then
    sed 's/^/  predict: /' "$log_dir/predict.log" | tail -3 >&2
    echo "error: ember predict failed on the exported model $bundle" >&2
    return 1
  fi
  export_auc=$(sed -n 's/.* auc=\([^ ]*\).*/\1/p' <<<"$predict")
  echo "exported: bundle=$bundle export_auc=${export_auc:-n/a} (ember predict on the test split; the job's auc=$(sed -n 's/^final: auc=\([^ ]*\).*/\1/p' <<<"$final")) predictions=$predictions"
  echo "serve it: $ember serve --bundle=$export_dir --port=8500 --watch   (README.md: Serving over HTTP)"
}
