#!/usr/bin/env python3
"""docs/perf.md's kernel tables from one kernel_bench run.

  build-cuda/kernels/kernel_bench > kb.jsonl
  python3 scripts/kernel_table.py kb.jsonl

Prints two Markdown tables: each op the model calls on GPT-2's four projection shapes at every M of the run,
host-launched (time per call, the achieved TFLOP/s or TOP/s from M = 1,024, and in brackets the speed-up against the
fp16 matmul of the same shape in the same run), and, for the M the run captured in CUDA graphs (1 and 128), the time
per call inside a graph, which is what the batch-1 forward pays, with the achieved rate from M = 128. A run whose
validations did not all pass is refused: its timings would describe kernels that compute something else. A file
that is not kernel_bench's output is an error naming it.
"""
import json
import sys

# (column title, kernel_bench op, its op in CUDA graphs): the path each method takes in the model (kAuto), plus the
# int8 product alone. kernel_bench captures FP8 in graphs as the model runs it, bf16 in and out.
COLUMNS = [
    ("fp16 matmul", "fp16_matmul", "fp16_matmul"),
    ("W8A8 int8 (with its quantizer)", "int8_w8a8_linear", "int8_w8a8_linear"),
    ("int8 product alone", "int8_linear (pre-quantized x)", "int8_linear (pre-quantized x)"),
    ("LLM.int8 (no outlier column)", "llm_int8_linear", "llm_int8_linear"),
    ("FP8 E4M3 (with its quantizer)", "fp8_linear", "fp8_linear (bf16 in and out)"),
    ("NF4", "nf4_linear", "nf4_linear"),
    ("int8 weight-only", "int8_weight_only_linear", "int8_weight_only_linear"),
]
SHAPES = [(768, 2304), (768, 768), (768, 3072), (3072, 768)]  # (in, out): c_attn, attn.c_proj, c_fc, mlp.c_proj


def fail(path, why):
    sys.exit(f"kernel_table.py: {path}: {why}")


def load(path):
    device, timed, graph, validations, failed = None, {}, {}, 0, []
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError as e:
        fail(path, e.strerror)
    for number, line in enumerate(lines, 1):
        if not line.startswith("{"):
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            fail(path, f"line {number}: not JSON ({e.msg})")
        if "sms" in row and "device" in row:
            device = row
        elif "validate" in row:
            validations += 1
            if not row.get("ok"):
                failed.append(row["validate"])
        elif "op" in row and "m" in row and "n" in row and "k" in row:
            key = (row["op"], row["m"], row["k"], row["n"])
            if "ms" in row:
                timed[key] = row
            elif "graph_ms" in row:
                graph[key] = row
    if device is None or not timed:
        fail(path, "no kernel_bench device line or timed rows")
    if failed:
        fail(path, f"{len(failed)} of {validations} validations failed (first: {failed[0]})")
    return device, timed, graph, validations


def print_table(ms, rows, op_field, cell):
    """One Markdown table: a row per M and shape, a column per COLUMNS entry (its op at index op_field), "-" where
    the run has no row, else cell(row, m, op)."""
    print("| M | in x out | " + " | ".join(c[0] for c in COLUMNS) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in COLUMNS) + " |")
    for m in ms:
        for k, n in SHAPES:
            cells = []
            for column in COLUMNS:
                row = rows.get((column[op_field], m, k, n))
                cells.append("-" if row is None else cell(row, m, column[op_field]))
            print(f"| {m:,} | {k} x {n} | " + " | ".join(cells) + " |")


def timed_cell(row, m, op):
    """Host-launched: the time, the achieved rate from 1,024 tokens, the speed-up against fp16."""
    rate = f", {row['tflops']:,.0f} T/s" if m >= 1024 else ""
    speed = "" if op == "fp16_matmul" else f" ({row['speedup_vs_fp16']:.2f}x)"
    return f"{row['ms'] * 1e3:,.1f} us{rate}{speed}"


def graph_cell(row, m, op):
    """In a CUDA graph: the time, and from 128 tokens the product's 2 m k n operations over it (at M = 1 a rate says
    little: the call reads the weight and does almost no arithmetic)."""
    us = row["graph_ms"] * 1e3
    rate = f", {2.0 * m * row['k'] * row['n'] / (us * 1e-6) / 1e12:,.0f} T/s" if m >= 128 else ""
    return f"{us:.2f} us{rate}"


def main(argv):
    if len(argv) != 2:
        sys.exit("usage: kernel_table.py KERNEL_BENCH.jsonl")
    device, timed, graph, validations = load(argv[1])
    ms = sorted({key[1] for key in timed})
    runtime = device.get("cuda_runtime")
    runtime = f"{runtime // 1000}.{runtime % 1000 // 10}" if isinstance(runtime, int) else "?"
    print(f"{device['device']} ({device['sms']} SMs, compute capability {device['compute_capability']}), libtorch "
          f"{device.get('libtorch', '?')}, CUDA runtime {runtime}, programmatic dependent "
          f"launch {'on' if device.get('pdl') else 'off'}; {validations} validations passed.\n")
    print_table(ms, timed, 1, timed_cell)
    graph_ms = sorted({key[1] for key in graph})
    if graph_ms:
        print("\nInside a CUDA graph (20 calls captured, the graph replayed), per call:\n")
        print_table(graph_ms, graph, 2, graph_cell)

if __name__ == "__main__":
    main(sys.argv)
