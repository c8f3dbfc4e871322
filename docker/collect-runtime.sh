#!/bin/sh
# Lays out what the runtime image needs from a build: OUT/bin/qbench (debug info stripped), the migrations
# under OUT/share/qbench/migrations (where qbench looks, next to its binary), and in OUT/lib every shared
# library the binary loads except the C library family (the runtime base has it) and the NVIDIA driver
# libraries (the NVIDIA container runtime mounts the host's, which must match the host's kernel module).
# Every shared library in each LIB_DIR is copied too: libtorch loads some of its CUDA libraries (cuDNN's
# engine libraries, NVRTC's builtins) with dlopen, so ldd does not list them.
#   collect-runtime.sh BINARY MIGRATIONS_DIR OUT [LIB_DIR...]
set -eu
if [ $# -lt 3 ]; then
  echo "usage: $0 BINARY MIGRATIONS_DIR OUT [LIB_DIR...]" >&2
  exit 2
fi
bin=$1 migrations=$2 out=$3
shift 3
[ -x "$bin" ] || { echo "$0: $bin is not an executable" >&2; exit 2; }
ls "$migrations"/[0-9][0-9][0-9][0-9]_*.sql >/dev/null 2>&1 || { echo "$0: no NNNN_*.sql in $migrations" >&2; exit 2; }
mkdir -p "$out/bin" "$out/lib" "$out/share/qbench"
cp "$bin" "$out/bin/qbench"
strip --strip-debug "$out/bin/qbench"
rm -rf "$out/share/qbench/migrations"
cp -r "$migrations" "$out/share/qbench/migrations"
deps=$(ldd "$bin")
missing=$(printf '%s\n' "$deps" | awk '/not found/ {print $1}' | grep -v -E '^lib(cuda|nvidia-)' || true)
if [ -n "$missing" ]; then
  echo "$0: $bin needs libraries this build host lacks: $missing" >&2
  exit 1
fi
# "soname => /path (0x...)": copy the file under its soname, which is the name the loader looks for.
printf '%s\n' "$deps" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | while read -r soname path; do
  case "$soname" in
    libc.so.*|libm.so.*|libpthread.so.*|libdl.so.*|librt.so.*|libresolv.so.*|ld-linux*|libcuda.so*|libnvidia-*) continue ;;
  esac
  cp -L "$path" "$out/lib/$soname"
done
for dir in "$@"; do
  [ -d "$dir" ] || { echo "$0: $dir is not a folder" >&2; exit 2; }
  find "$dir" -maxdepth 1 -name '*.so*' \( -type f -o -type l \) -exec cp -L {} "$out/lib/" \;
done
echo "$0: $(find "$out/lib" -maxdepth 1 -type f | wc -l) libraries, $(du -sh "$out" | cut -f1) in $out"
