#!/usr/bin/env python3
"""scripts/kernel_breakdown.py on Nsight Compute CSVs made up here, whose sums are known: it must take the last
forward (not a block, not an earlier forward with other timings), sum it by kind, list one block in launch
order, and refuse a file that is not ncu's CSV or holds no repeated forward, naming the file.

  python3 tests/scripts/kernel_breakdown_test.py scripts/kernel_breakdown.py
"""
import csv
import io
import json
import os
import subprocess
import sys
import tempfile

BLOCK = [  # (kernel, grid, ns in the last forward)
    ("void evalsvc::k_add_layer_norm_quant_warp<__half, 3, detail::Int8Encoder>(const T1 *)", "(16384, 1, 1)", 100),
    ("void evalsvc::k_gemm8_wgmma<WgConfig<2, 3, 2, 128>, __half>(CUtensorMap)", "(18, 512, 1)", 300),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7", "(132, 1, 1)", 110),
    ("void detail::k_quantize_rows_warp<__half, 4, 1, detail::Int8Encoder>(const T1 *)", "(8192, 1, 1)", 50),
    ("void evalsvc::k_gemm8_wgmma<WgConfig<2, 3, 2, 128>, __half>(CUtensorMap)", "(6, 512, 1)", 105),
    ("void evalsvc::k_add_layer_norm_quant_warp<__half, 3, detail::Int8Encoder>(const T1 *)", "(16384, 1, 1)", 101),
    ("void evalsvc::k_gemm8_wgmma<WgConfig<2, 3, 2, 128>, __half>(CUtensorMap)", "(24, 512, 1)", 470),
    ("void detail::k_quantize_rows_warp<__half, 4, 4, detail::Int8Encoder>(const T1 *)", "(32768, 1, 1)", 220),
    ("void evalsvc::k_gemm8_wgmma<WgConfig<2, 3, 2, 128>, __half>(CUtensorMap)", "(6, 512, 1)", 264),
]
HEAD = [
    ("void at::vectorized_gather_kernel<16, long>(char *)", "(65536, 1, 1)", 48),
    ("void at::vectorized_layer_norm_kernel<c10::Half, float, 0>(int)", "(512, 1, 1)", 5),
    ("nvjet_sm90_hsh_64x64_64x13_4x2_h_bz_bias_TNT", "(8, 12, 1)", 7),
    ("void at::elementwise_kernel<128, 4, where_kernel>(int)", "(1, 1, 1)", 3),
]


def forward(scale):
    """The embedding, 12 blocks, then the head; durations times scale."""
    rows = [HEAD[0]] + BLOCK * 12 + HEAD[1:]
    return [(name, grid, ns * scale) for name, grid, ns in rows]


def write_csv(path, launches, unit="nsecond"):
    out = io.StringIO()
    w = csv.writer(out, quoting=csv.QUOTE_ALL)
    w.writerow(["ID", "Process ID", "Kernel Name", "Block Size", "Grid Size", "Section Name", "Metric Name",
                "Metric Unit", "Metric Value"])
    for i, (name, grid, ns) in enumerate(launches):
        w.writerow([i, 7, name, "(128, 1, 1)", grid, "Command line profiler metrics", "gpu__time_duration.sum",
                    unit, f"{ns * 1000:,}"])  # microseconds of the tables above, written in ns
    with open(path, "w") as f:
        f.write("==PROF== Connected to process 7\n" + out.getvalue() + "==PROF== Disconnected from process 7\n")


def run(script, path):
    return subprocess.run([sys.executable, script, path], capture_output=True, text=True)


def main():
    script = sys.argv[1]
    failures = []

    def check(cond, what):
        if not cond:
            failures.append(what)

    with tempfile.TemporaryDirectory() as d:
        good = os.path.join(d, "w8a8.csv")
        # Warm-up launches of another shape, two slower forwards, then the last one.
        warm = [("void at::vectorized_gather_kernel<16, long>(char *)", "(128, 1, 1)", 2)] * 5
        write_csv(good, warm + forward(2) + forward(2) + forward(1))
        r = run(script, good)
        check(r.returncode == 0, f"exit {r.returncode}: {r.stderr}")
        lines = r.stdout.splitlines()
        summary = json.loads(next(l for l in reversed(lines) if l.startswith("{")))
        want_total = (sum(ns for _, _, ns in BLOCK) * 12 + sum(ns for _, _, ns in HEAD)) / 1000.0  # ms
        check(summary["kernels"] == 1 + 12 * len(BLOCK) + 3, f"kernels {summary['kernels']}")
        check(abs(summary["total_ms"] - want_total) < 1e-9, f"total {summary['total_ms']} != {want_total}")
        kinds = summary["by_kind_ms"]
        check(abs(kinds.get("product", 0) - (12 * (300 + 105 + 470 + 264) + 7) / 1000) < 1e-9, f"product {kinds}")
        # The quantizing LayerNorms count as LayerNorms; cuDNN's attention, whose name says wgmma, as attention.
        check(abs(kinds.get("quantize", 0) - 12 * 270 / 1000) < 1e-9, f"quantize {kinds}")
        check(abs(kinds.get("add + layernorm", 0) - (12 * 201 + 5) / 1000) < 1e-9, f"layernorm {kinds}")
        check(abs(kinds.get("attention", 0) - 12 * 110 / 1000) < 1e-9, f"attention {kinds}")
        check(abs(kinds.get("embedding", 0) - 0.048) < 1e-9, f"embedding {kinds}")
        check(abs(kinds.get("other", 0) - 0.003) < 1e-9, f"other {kinds}")
        listed = [l for l in lines if l.startswith("    ")]
        check(len(listed) == len(BLOCK), f"one block lists {len(listed)} launches, not {len(BLOCK)}")
        check(all(f"{ns:.1f} us" in l for l, (_, _, ns) in zip(listed, BLOCK)), "block launches out of order")

        bad = os.path.join(d, "not-ncu.csv")
        with open(bad, "w") as f:
            f.write("a,b\n1,2\n")
        r = run(script, bad)
        check(r.returncode != 0 and "not-ncu.csv" in r.stderr and "Kernel Name" in r.stderr, f"bad csv: {r.stderr}")

        cycles = os.path.join(d, "cycles.csv")  # a unit the script cannot convert must not pass as nanoseconds
        write_csv(cycles, forward(1) + forward(1), unit="cycle")
        r = run(script, cycles)
        check(r.returncode != 0 and "cycles.csv" in r.stderr and "cycle" in r.stderr, f"unknown unit: {r.stderr}")

        once = os.path.join(d, "once.csv")
        write_csv(once, forward(1))  # a single forward: blocks repeat, but no forward does
        r = run(script, once)
        check(r.returncode != 0 and "once.csv" in r.stderr, f"single forward: exit {r.returncode} {r.stderr}")

    for f in failures:
        print("FAIL:", f)
    print(f"{'ok' if not failures else 'FAILED'}: kernel_breakdown.py")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
