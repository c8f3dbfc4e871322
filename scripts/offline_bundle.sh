#!/usr/bin/env bash
# Collects the Debian 12 packages that an Ubuntu 24.04 CUDA host (no internet) lacks to build and run qbench:
# hiredis, libpq + libpqxx, Boost headers, nlohmann_json, PCRE2, spdlog/fmt, CLI11, curl headers, redis-server
# and PostgreSQL 15 with the libraries they need. Output: one folder of .deb files (default .debs/).
# On the host: scripts/gpu_bootstrap.sh unpacks them into a prefix and builds qbench against PyTorch's libtorch.
set -euo pipefail
out=${1:-.debs}
mkdir -p "$out"
pkgs=(
  libhiredis-dev libhiredis0.14
  libpqxx-dev libpqxx-6.4 libpq-dev libpq5 libldap-2.5-0 libsasl2-2 libsasl2-modules-db
  libboost1.74-dev
  nlohmann-json3-dev
  libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3
  libspdlog-dev libspdlog1.10 libfmt-dev libfmt9
  libcli11-dev
  libcurl4-openssl-dev
  libgtest-dev
  redis-server redis-tools liblzf1 libjemalloc2
  postgresql-15 postgresql-client-15 libicu72 libxml2 libxslt1.1 libssl3 libreadline8 libtinfo6 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libcom-err2 libkeyutils1
)
(cd "$out" && apt-get download "${pkgs[@]}" >/dev/null)
du -sh "$out"
ls "$out" | wc -l
