#!/usr/bin/env bash
# Builds the base image that docker-compose.local.yml uses on machines that cannot pull images (no
# registry): Debian 12 (bookworm) made with debootstrap --variant=minbase, with qbench's runtime packages
# (Debian's libtorch1.13 and its dependencies, OpenBLAS, hiredis, libpqxx, spdlog, fmt, PCRE2, libcurl,
# curl) plus redis-server and postgresql-15, which stand in for the official redis and postgres images.
# The root filesystem is imported with `docker import`.
#
# Cached: the tarball lives in $QBENCH_DOCKER_CACHE (default /var/cache/qbench-docker) under a key that
# hashes this script, so a second run only imports it (or does nothing when the image already carries the
# key as its label). Needs root (debootstrap, chroot) and network access to the Debian mirror.
#   docker/local-base.sh [IMAGE]        IMAGE default qbench-local-base:bookworm; prints it when done
set -euo pipefail
image=${1:-qbench-local-base:bookworm}
cache=${QBENCH_DOCKER_CACHE:-/var/cache/qbench-docker}
mirror=${QBENCH_DEBIAN_MIRROR:-http://deb.debian.org/debian}
docker=${DOCKER:-docker}
# ldd build/cli/qbench lists what the binary loads; these packages pull all of it in (libtorch1.13 brings
# OpenCV, protobuf, glog, ...). libopenblas0-pthread makes the BLAS alternative OpenBLAS instead of the
# reference BLAS (25x slower, see scripts/setup.sh).
packages=(libtorch1.13 libopenblas0-pthread libhiredis0.14 libpqxx-6.4 libspdlog1.10 libfmt9 libpcre2-8-0
          libcurl4 ca-certificates curl redis-server postgresql-15)

key=$(sha256sum <"$0" | cut -c1-16)
tarball=$cache/base-bookworm-$key.tar
log() { echo "local-base: $*" >&2; }

if [ "$("$docker" image inspect -f '{{ index .Config.Labels "qbench.base.key" }}' "$image" 2>/dev/null || true)" = "$key" ]; then
  log "$image is current (key $key)"
  echo "$image"
  exit 0
fi
[ "$(id -u)" -eq 0 ] || { log "needs root (debootstrap and chroot)"; exit 1; }
mkdir -p "$cache/debs"
if [ ! -s "$tarball" ]; then
  command -v debootstrap >/dev/null || { log "debootstrap is not installed (apt-get install debootstrap)"; exit 1; }
  root=$(mktemp -d "$cache/rootfs.XXXXXX")
  trap 'rm -rf "$root"' EXIT
  log "debootstrap bookworm ($mirror) into $root"
  start=$(date +%s)
  # The .deb cache makes a rebuild (a changed script) download nothing it already has.
  debootstrap --variant=minbase --cache-dir="$cache/debs" --include="$(IFS=,; echo "${packages[*]}")" \
    bookworm "$root" "$mirror" >"$cache/debootstrap.log" 2>&1 \
    || { tail -n 30 "$cache/debootstrap.log" >&2; log "debootstrap failed (log: $cache/debootstrap.log)"; exit 1; }
  log "debootstrap: $(( $(date +%s) - start )) s"
  # Mount points owned by the service users, as in the official images: a fresh named volume takes the
  # owner of the folder it is mounted on, so the servers can run as these users, not as root.
  chroot "$root" install -d -o redis -g redis -m 0750 /data
  chroot "$root" install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data
  # The cluster the postgresql-15 package created at install time is not used (PGDATA is the volume).
  rm -rf "$root/var/lib/postgresql/15" "$root/etc/postgresql/15"
  # What an image does not need: downloaded packages, package lists, documentation, translations.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/locale/* "$root"/tmp/* "$root"/var/log/*.log
  tar --numeric-owner -C "$root" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  rm -rf "$root"
  trap - EXIT
  # Older tarballs of other keys are dead weight.
  find "$cache" -maxdepth 1 -name 'base-bookworm-*.tar' ! -name "$(basename "$tarball")" -delete
fi
log "docker import $tarball as $image"
previous=$("$docker" image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
"$docker" import --change "LABEL qbench.base.key=$key" --change 'ENV LANG=C.UTF-8' "$tarball" "$image" >/dev/null
# The base this one replaces (1.3 GB) is left untagged: remove it unless an image still builds on it.
if [ -n "$previous" ] && [ "$previous" != "$("$docker" image inspect -f '{{.Id}}' "$image")" ]; then
  "$docker" rmi "$previous" >/dev/null 2>&1 || log "kept the previous base $previous (an image still uses it)"
fi
echo "$image"
