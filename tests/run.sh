#!/usr/bin/env bash
# Installs what is missing, builds everything (Release, with tests and
# benchmarks), and runs the whole suite through ctest. The unit tests run
# twice: first in a -march=native build (launch/local.sh and the benchmarks
# build native, so the code must be right there too), then, with every
# multi-process test and benchmark check, in the portable build. Last, a
# clang build with ASan + UBSan (docs/fuzzing.md) runs the unit tests again
# and every fuzz target for a few seconds (ctest's fuzz_short).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../launch/setup.sh"
build_dir="${EMBER_TEST_BUILD_DIR:-$EMBER_ROOT/build-tests}"
native_dir="${EMBER_TEST_NATIVE_BUILD_DIR:-$EMBER_ROOT/build-tests-native}"
sanitize_dir="${EMBER_TEST_SANITIZE_BUILD_DIR:-$EMBER_ROOT/build-tests-sanitize}"
ember_install_deps $EMBER_TEST_PACKAGES

echo "== unit tests, -march=native build ($native_dir)"
ember_build "$native_dir" -DEMBER_BUILD_TESTS=ON -DEMBER_BUILD_BENCHMARKS=OFF -DEMBER_MARCH=native
(cd "$native_dir" && ctest --output-on-failure --timeout 900 -j"$(nproc)" -LE cluster)

echo "== every test, portable build ($build_dir)"
ember_build "$build_dir" -DEMBER_BUILD_TESTS=ON -DEMBER_BUILD_BENCHMARKS=ON
(cd "$build_dir" && ctest --output-on-failure --timeout 900 -j"$(nproc)")

echo "== unit tests under ASan+UBSan and a short fuzz run, clang build ($sanitize_dir)"
ember_build "$sanitize_dir" -DCMAKE_CXX_COMPILER=clang++ -DEMBER_FUZZ=ON -DEMBER_BUILD_TESTS=ON \
  -DEMBER_BUILD_BENCHMARKS=OFF
cd "$sanitize_dir"
ASAN_OPTIONS=abort_on_error=1:detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --output-on-failure --timeout 900 -j"$(nproc)" -LE cluster
