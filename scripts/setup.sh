#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine for qbench: the packages it builds and runs with, then the build.
# Idempotent. Needs root (or sudo) for apt-get.
#   scripts/setup.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
pkgs=(build-essential cmake ninja-build ccache pkg-config
      libtorch-dev libopenblas0-pthread
      libhiredis-dev libpqxx-dev libboost-dev nlohmann-json3-dev libpcre2-dev
      libcli11-dev libspdlog-dev libfmt-dev libcurl4-openssl-dev libgtest-dev
      redis-server postgresql python3)
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Debian's libtorch multiplies with whatever libblas.so.3 is selected: make sure it is OpenBLAS (25x faster).
if [ -e /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 ]; then
  $SUDO update-alternatives --set libblas.so.3-x86_64-linux-gnu /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 >/dev/null || true
fi
# The postgresql package starts a cluster on port 5432 that qbench does not use; leave it alone.
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
ninja -C "$build"
