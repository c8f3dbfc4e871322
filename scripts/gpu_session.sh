#!/usr/bin/env bash
# One batch of GPU measurements on a GPU host (what docs/results were measured with). Builds qbench with CUDA
# (scripts/gpu_bootstrap.sh), then: the model core's training on the seed preset next to the Hugging Face
# peer, parity with transformers, the tokenizer against tiktoken, the CUDA kernel tests and benchmarks, and
# `qbench bench` against the Hugging Face inference peer (scripts/peer_bench_hf.py, scripts/bench_ratios.py).
# Everything goes to $OUT (default ./gpu-out).
#   scripts/gpu_session.sh DATA_DIR [DEBS_DIR]
set -uo pipefail
data=${1:?data folder}
debs=${2:-.debs}
out=${OUT:-gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start )) s] $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/device.txt" 2>&1
# Every GPU test program (ctest -L gpu) and the CPU test programs the cputests step runs.
targets="qbench tokenizer_bench kernel_bench kernels_cuda_ops_gpu_test worker_benchmark_gpu_test worker_model_gpu_test
 worker_tokenizer_test worker_dataset_test common_paths_test"
# SKIP_BUILD=1: build-cuda is already built (two sessions running side by side on two GPUs share one build).
if [ -z "${SKIP_BUILD:-}" ]; then
stamp build
QBENCH_TARGETS="$targets" bash scripts/gpu_bootstrap.sh "$debs" /opt/qbench-deps build-cuda > "$out/build.log" 2>&1 || { tail -50 "$out/build.log"; exit 1; }
fi
export LD_LIBRARY_PATH=/opt/qbench-deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
q=build-cuda/cli/qbench
steps=${STEPS:-train peer parity tokenizer gputests cputests kernelbench bench}
has() { [[ " $steps " == *" $1 "* ]]; }
if has train; then
stamp "train seed (qbench)"
$q train --preset seed --device cuda --data "$data" --out /tmp/seed --no-resume > "$out/qbench_train_seed.json" 2> "$out/qbench_train_seed.log"
tail -3 "$out/qbench_train_seed.log"
fi
if has peer; then
stamp "train seed (Hugging Face peer)"
python3 scripts/peer_train_hf.py --data "$data" --epochs 10 --lr "${PEER_LR:-2e-4}" > "$out/peer_train_hf.json" 2> "$out/peer_train_hf.log"
cat "$out/peer_train_hf.json"
fi
if has parity; then
stamp parity
python3 scripts/hf_parity.py --config gpt2 --out /tmp/hf_gpt2 --dtypes fp32,fp16,bf16 --device cuda > /dev/null 2>&1
$q parity /tmp/hf_gpt2 --dtype fp32 fp16 bf16 --device cuda | tee "$out/parity_gpt2.jsonl"
$q parity tests/fixtures/hf_tiny --dtype fp32 --device cuda | tee -a "$out/parity_gpt2.jsonl"
fi
if has tokenizer; then
stamp tokenizer
python3 scripts/peer_tokenizer.py --qbench build-cuda/worker/tokenizer_bench --data "$data" > "$out/tokenizer_vs_tiktoken.txt" 2>&1
tail -25 "$out/tokenizer_vs_tiktoken.txt"
fi
if has gputests; then
stamp "gpu tests"
(cd build-cuda && ctest -L gpu --output-on-failure --timeout 300) > "$out/gpu_tests.log" 2>&1
tail -15 "$out/gpu_tests.log"
fi
if has cputests; then
# Two CPU test programs crashed (SIGSEGV) in this CUDA build on the Ubuntu GPU host: they called
# std::filesystem::remove_all, which bound to a broken copy exported by PyTorch's libtorch.so (common/paths.h,
# remove_tree). This step runs them, and remove_tree's own tests, on the GPU host.
stamp "cpu tests that crashed on the GPU host"
for t in worker_tokenizer_test worker_dataset_test common_paths_test; do
  QBENCH_DATA_DIR="$data" timeout 300 build-cuda/tests/$t > "$out/$t.log" 2>&1; echo "$t: exit $?"; tail -25 "$out/$t.log"
done
fi
if has kernelbench; then
stamp "kernel bench"
timeout 240 build-cuda/kernels/kernel_bench ${KERNEL_BENCH_ARGS:-} > "$out/kernel_bench.jsonl" 2> "$out/kernel_bench.log"
tail -5 "$out/kernel_bench.jsonl"
fi
if has bench; then
stamp "qbench bench and the Hugging Face inference peer (issue 6 ratios)"
$q bench --device cuda --methods fp32,fp16,bf16,int8-sym,int8-sym-channel,int8-w8a8,llm-int8,nf4,fp8-e4m3 \
  --test-set --data "$data" > "$out/qbench_bench.jsonl" 2> "$out/qbench_bench.log"
# The reference's per-tensor int8 runs on an fp32 base; its target is against fp16, so time an fp16-based twin.
$q bench --device cuda --methods int8-sym --base fp16 >> "$out/qbench_bench.jsonl" 2>> "$out/qbench_bench.log"
stamp "peer inference bench"
# Every shape is a separate torch.compile: PEER_BATCH_SIZES trims the sweep to the sizes the targets read.
python3 scripts/peer_bench_hf.py --batch-sizes "${PEER_BATCH_SIZES:-1,8,32,128,512}" \
  > "$out/peer_bench_hf.jsonl" 2> "$out/peer_bench_hf.log"
python3 scripts/bench_ratios.py "$out/qbench_bench.jsonl" "$out/peer_bench_hf.jsonl" | tee "$out/bench_ratios.txt"
fi
stamp done
