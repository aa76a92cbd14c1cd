# Shared by launch/local.sh and tests/run.sh: install what is missing (Debian
# packages only) and build. Source it; it defines functions and changes nothing.

EMBER_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EMBER_PACKAGES="build-essential cmake pkg-config libzmq3-dev cppzmq-dev libprotobuf-dev protobuf-compiler
  libeigen3-dev libgoogle-glog-dev libgflags-dev librocksdb-dev libgtest-dev libgmock-dev libabsl-dev zlib1g-dev
  libcpp-httplib-dev nlohmann-json3-dev"
# Not needed to build or train; tests/run.sh adds them for the tests of the
# tools beside the binary (launch/plot.py: tests/plot_test.sh) and for the
# sanitizer and fuzzing build (clang, libFuzzer: docs/fuzzing.md), and the
# launchers run on real daemons and hosts (launch/slurm/: tests/slurm_test.sh;
# network namespaces: tests/netns_lib.sh), and `ember k8s`'s manifests are
# checked offline (python3-yaml, kubectl: tests/k8s_manifest_test.sh).
EMBER_TEST_PACKAGES="python3-matplotlib clang libfuzzer-14-dev slurm-wlm munge iproute2 iputils-ping python3-yaml
  kubernetes-client"

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
