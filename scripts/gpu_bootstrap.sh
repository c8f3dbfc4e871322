#!/usr/bin/env bash
# Air-gapped install on a GPU host (Ubuntu 24.04 + PyTorch with CUDA): unpacks the .deb bundle made by
# scripts/offline_bundle.sh into a prefix (never into /) and builds qbench with CUDA against PyTorch's libtorch.
#   scripts/gpu_bootstrap.sh [DEBS_DIR] [PREFIX] [BUILD_DIR]
set -euo pipefail
debs=${1:-.debs}
prefix=${2:-/opt/qbench-deps}
build=${3:-build-cuda}
mkdir -p "$prefix"
for f in "$debs"/*.deb; do dpkg -x "$f" "$prefix"; done
# Debian's pkg-config files say prefix=/usr: point them at the unpacked tree.
find "$prefix" -name '*.pc' -exec sed -i -e "s#=/usr#=$prefix/usr#g" -e "s#-I/usr/#-I$prefix/usr/#g" -e "s#-L/usr/#-L$prefix/usr/#g" {} +
lib="$prefix/usr/lib/x86_64-linux-gnu"
# Unversioned .so links of -dev packages point at absolute /usr paths of the runtime packages: relink.
for l in "$lib"/*.so; do
  if [ -L "$l" ]; then t=$(readlink "$l"); ln -sf "$(basename "$t")" "$l"; fi
done
export PKG_CONFIG_PATH="$lib/pkgconfig:$prefix/usr/share/pkgconfig:${PKG_CONFIG_PATH:-}"
export LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}"
torch_prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
# 9.0 builds as sm_90a: the wgmma int8 GEMM is an arch-specific (sm_90a) feature.
cuda_arch=$(python3 -c 'import torch; c=torch.cuda.get_device_capability(); print(f"{c[0]}{c[1]}" + ("a" if c == (9, 0) else ""))' 2>/dev/null || echo 90a)
curl_inc="$prefix/usr/include"
curl_lib=$(ls /usr/lib/x86_64-linux-gnu/libcurl.so.4 2>/dev/null || true)
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$torch_prefix;$prefix/usr;$lib/cmake" \
  -DEVALSVC_ENABLE_CUDA=ON -DEVALSVC_CUDA_ARCHS="$cuda_arch" \
  -DCMAKE_CUDA_COMPILER="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)" \
  -DCURL_INCLUDE_DIR="$curl_inc" ${curl_lib:+-DCURL_LIBRARY="$curl_lib"} \
  -DGTest_DIR="$lib/cmake/GTest"
ninja -C "$build" ${QBENCH_TARGETS:-}
echo "built in $build; runtime needs LD_LIBRARY_PATH=$lib"
