# Shared by launch/local.sh, launch/ssh.sh, launch/slurm/, bench/net_bench and
# tests/run.sh: install what is missing (Debian packages only), build, and the
# launchers' common steps (option checks, the job token, the restart loop, the
# failure summary, the final and exported lines). Source it; it defines
# functions and variables and changes nothing.

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
  python3-yaml"
# Debian's kubectl is kubernetes-client; a machine that has a kubectl from
# elsewhere (e.g. a cloud SDK's package, which owns /usr/bin/kubectl and makes
# kubernetes-client fail to install) keeps its own.
command -v kubectl >/dev/null 2>&1 || EMBER_TEST_PACKAGES+=" kubernetes-client"

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

# ember_require_numbers VAR...: each variable holds a whole number >= 0, else
# exits 2 naming its option (--server-port for server_port).
ember_require_numbers() {
  local v
  for v in "$@"; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || { echo "error: --${v//_/-} must be a number, got '${!v}'" >&2; exit 2; }
  done
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

# ember_supervise: the launchers' restart rules, one loop for local.sh and
# ssh.sh. It polls the processes in pids[] (roles[] names each: "scheduler"
# in slot 0, "server I", "worker I") until every one has exited 0, or one
# fails. A process killed by a signal (exit status > 128; ssh's 255, a lost
# session, counts too) while the job is not stopping is started again, at
# most max_restarts times in all: a server or worker alone, if the scheduler
# lives (the scheduler restores every server from the newest checkpoint, or
# requeues the worker's chunks); the scheduler with the whole cluster and
# --resume, if a complete checkpoint exists. Any other exit stops the job.
# The launcher defines start_cluster [--resume], start_server I,
# start_worker I, and three hooks:
#   ember_slot_where I      how the messages name slot I: "(pid P)", "on HOST"
#   ember_slot_ready I      0 when slot I may be started again (ssh.sh: its
#                           host answers); else the job stops
#   ember_has_checkpoint    0 when a complete checkpoint exists (a MANIFEST)
# EMBER_STATUS_255, if set, says what an exit status of 255 means (ssh.sh: a
# lost session). It reads stopping, max_restarts and log_dir, and sets status (the failed
# process's exit status, 0 if none) and failed (its role).
ember_supervise() {
  local i j p rc how role where alive restarts=0 finished=()
  status=0
  failed=""
  while [ "$status" -eq 0 ]; do
    alive=0
    for i in "${!pids[@]}"; do
      [ "${finished[$i]:-0}" -eq 1 ] && continue
      p="${pids[$i]}"
      if kill -0 "$p" 2>/dev/null; then
        alive=1
        continue
      fi
      set +e
      { wait "$p"; rc=$?; } 2>/dev/null  # (bash would print "Killed")
      set -e
      if [ "$rc" -eq 0 ]; then
        finished[$i]=1
        continue
      fi
      role="${roles[$i]}"
      where="$(ember_slot_where "$i")"
      how="exited with status $rc"
      [ "$rc" -gt 128 ] && how="was killed by signal $((rc - 128)) ($(kill -l "$((rc - 128))" 2>/dev/null || echo ?))"
      [ "$rc" -eq 255 ] && [ -n "${EMBER_STATUS_255:-}" ] && how="$EMBER_STATUS_255"
      if [ "$rc" -gt 128 ] && [ "$stopping" -eq 0 ] && [ "$restarts" -lt "$max_restarts" ] &&
         { [ "$role" = scheduler ] || kill -0 "${pids[0]}" 2>/dev/null; }; then
        restarts=$((restarts + 1))
        echo "restart $restarts/$max_restarts: $role $where $how" >&2
        if ! ember_slot_ready "$i"; then
          echo "error: $role cannot be started again $where; stopping the cluster (logs in $log_dir)" >&2
          status=$rc failed="$role"
          break
        fi
        if [ "$role" = scheduler ]; then
          if ! ember_has_checkpoint; then
            echo "error: the scheduler was lost before the first complete checkpoint; nothing to resume" >&2
            status=$rc failed=scheduler
            break
          fi
          echo "restarting the cluster with --resume" >&2
          for j in "${!pids[@]}"; do [ "$j" -ne 0 ] && kill -9 "${pids[$j]}" 2>/dev/null || true; done
          for j in "${!pids[@]}"; do { wait "${pids[$j]}"; } 2>/dev/null || true; done
          finished=()
          start_cluster --resume
        else
          echo "starting a new $role" >&2
          case "$role" in
            server*) start_server "${role#server }" ;;
            worker*) start_worker "${role#worker }" ;;
          esac
        fi
        alive=1
        continue
      fi
      status=$rc failed="$role"
      echo "error: $role $where $how; stopping the cluster (logs in $log_dir)" >&2
      break
    done
    [ "$alive" -eq 0 ] && break
    [ "$status" -eq 0 ] && sleep 0.5
  # bash reports a child killed by a signal ("line N: PID Killed ..."); the
  # restart line says it better.
  done 2> >(grep --line-buffered -Ev '^[^ ]*\.sh: line [0-9]+: +[0-9]+ (Killed|Terminated)' >&2)
  return 0
}

# ember_finish RESUME_COMMAND: after ember_supervise, stops the live view of
# scheduler.out (tail_pid) and every process (the launcher's cleanup). A job
# the scheduler stopped (Ctrl-C) ends the script with status 0 and how to
# continue it (RESUME_COMMAND); a failed one with status 1 and why. It
# returns only when the scheduler printed its final line.
ember_finish() {
  kill "$tail_pid" 2>/dev/null || true
  wait "$tail_pid" 2>/dev/null || true
  tail_pid=""
  cleanup
  pids=()
  if [ "$status" -eq 0 ] && grep -q '^stopped:' "$log_dir/scheduler.out"; then
    echo "stopped; to continue the job: $1 (with the same --config/--data-dir)"
    exit 0
  fi
  if [ "$status" -ne 0 ] || ! grep -q '^final:' "$log_dir/scheduler.out"; then
    ember_explain_failure "$log_dir" "$failed"
    echo "error: the job failed (see $log_dir)" >&2
    exit 1
  fi
}
