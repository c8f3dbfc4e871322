#!/usr/bin/env bash
# Builds qbench (if needed) and runs every test. GPU tests (ctest label gpu) skip cleanly without a GPU;
# server tests start their own redis-server and postgres on loopback.
#   scripts/test.sh [BUILD_DIR] [extra ctest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
shift || true
if [ ! -f "$build/build.ninja" ]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
fi
ninja -C "$build"
ctest --test-dir "$build" --output-on-failure -j2 --timeout 900 "$@"
