#!/usr/bin/env bash
# Installs what is missing, builds everything (Release, with tests and
# benchmarks), and runs the whole suite through ctest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../launch/setup.sh"
build_dir="${EMBER_TEST_BUILD_DIR:-$EMBER_ROOT/build-tests}"
ember_install_deps
ember_build "$build_dir" -DEMBER_BUILD_TESTS=ON -DEMBER_BUILD_BENCHMARKS=ON
cd "$build_dir"
ctest --output-on-failure --timeout 900 -j"$(nproc)"
