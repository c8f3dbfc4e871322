#!/usr/bin/env python3
"""scripts/kernel_table.py on kernel_bench lines made up here, whose cells are known: it must put each op's time,
rate and speed-up in its column and shape's row, the graph times in the second table (FP8 from its bf16 op), a
dash where an op has no row, and refuse a run with a failed validation or a file that is not kernel_bench's,
naming the file.

  python3 tests/scripts/kernel_table_test.py scripts/kernel_table.py
"""
import json
import os
import subprocess
import sys
import tempfile

DEVICE = {"compute_capability": "9.0", "cuda_runtime": 13000, "device": "NVIDIA H200", "fp8": True,
          "libtorch": "2.11.0", "pdl": True, "sms": 132}


def timed(op, m, k, n, ms, tflops, speedup):
    return {"op": op, "m": m, "k": k, "n": n, "ms": ms, "tflops": tflops, "gbps": 1.0, "fp16_matmul_ms": 0.1,
            "speedup_vs_fp16": speedup}


def graph(op, m, k, n, graph_ms):
    return {"op": op, "m": m, "k": k, "n": n, "graph_ms": graph_ms, "fp16_matmul_graph_ms": 0.004,
            "speedup_vs_fp16": 1.0}


def write(path, rows):
    with open(path, "w") as f:
        f.write("kernel_bench: a line that is not JSON is skipped\n")
        for r in rows:
            f.write(json.dumps(r) + "\n")


def run(script, path):
    return subprocess.run([sys.executable, script, path], capture_output=True, text=True)


def main(argv):
    script = argv[1]
    failures = []

    def check(ok, what):
        if not ok:
            failures.append(what)

    with tempfile.TemporaryDirectory() as d:
        good = os.path.join(d, "kb.jsonl")
        write(good, [
            DEVICE,
            {"ok": True, "rel_err": 1e-4, "tol": 1e-3, "validate": "int8_w8a8_linear M=1"},
            {"ok": True, "rel_err": 1e-4, "tol": 1e-3, "validate": "fp8_linear M=1"},
            timed("fp16_matmul", 32768, 768, 2304, 0.1765, 657.2, 1.0),
            timed("int8_w8a8_linear", 32768, 768, 2304, 0.1698, 683.4, 1.0394),
            timed("nf4_linear", 128, 3072, 768, 0.0291, 20.7, 0.5412),
            graph("fp8_linear (bf16 in and out)", 128, 768, 768, 0.004561),
            graph("fp8_linear", 128, 768, 2304, 0.999),  # not the op the graph table reads for FP8
        ])
        r = run(script, good)
        out = r.stdout
        check(r.returncode == 0, f"good run: exit {r.returncode} {r.stderr}")
        check("NVIDIA H200 (132 SMs" in out and "CUDA runtime 13.0" in out and "2 validations passed" in out,
              f"device line: {out[:200]}")
        first = out.split("Inside a CUDA graph")[0]
        rows = {}
        for line in first.splitlines():
            if line.startswith("| ") and not line.startswith("| M "):
                cells = [c.strip() for c in line.split("|")[1:-1]]
                rows[f"{cells[0]} {cells[1]}"] = cells[2:]
        big = rows.get("32,768 768 x 2304")
        check(big is not None and big[0] == "176.5 us, 657 T/s" and big[1] == "169.8 us, 683 T/s (1.04x)"
              and big[2] == "-", f"32,768 x 2304 row: {big}")
        small = rows.get("128 3072 x 768")
        check(small is not None and small[5] == "29.1 us (0.54x)", f"128, 3072 x 768 (no rate below 1,024): {small}")
        tables = out.split("Inside a CUDA graph")
        check(len(tables) == 2, "a second table for the graph times")
        if len(tables) == 2:
            grow = [line for line in tables[1].splitlines() if line.startswith("| 128 | 768 x 768 |")]
            # 2 x 128 x 768 x 768 operations in 4.561 us: 33 TFLOP/s.
            check(len(grow) == 1 and grow[0].split("|")[7].strip() == "4.56 us, 33 T/s", f"FP8's graph cell: {grow}")
            wrong = [line for line in tables[1].splitlines() if line.startswith("| 128 | 768 x 2304 |")]
            check(len(wrong) == 1 and "999" not in wrong[0], f"the host-launched FP8 op read as a graph time: {wrong}")

        failed = os.path.join(d, "failed.jsonl")
        write(failed, [DEVICE, {"ok": False, "rel_err": 0.5, "tol": 1e-3, "validate": "nf4_linear M=77"},
                       timed("fp16_matmul", 1, 768, 768, 0.0127, 0.1, 1.0)])
        r = run(script, failed)
        check(r.returncode != 0 and "failed.jsonl" in r.stderr and "nf4_linear M=77" in r.stderr,
              f"failed validation: exit {r.returncode} {r.stderr}")

        other = os.path.join(d, "other.jsonl")
        write(other, [{"method": "fp16", "latency": {"p50_ms": 0.47}}])  # a qbench bench line
        r = run(script, other)
        check(r.returncode != 0 and "other.jsonl" in r.stderr, f"not kernel_bench's: exit {r.returncode} {r.stderr}")

        broken = os.path.join(d, "broken.jsonl")
        with open(broken, "w") as f:
            f.write(json.dumps(DEVICE) + "\n{\"op\": \n")
        r = run(script, broken)
        check(r.returncode != 0 and "broken.jsonl" in r.stderr and "line 2" in r.stderr,
              f"broken JSON: exit {r.returncode} {r.stderr}")

    for f in failures:
        print("FAIL:", f)
    print(f"{'ok' if not failures else 'FAILED'}: kernel_table.py")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
