#!/usr/bin/env python3
"""scripts/bench_ratios.py on `qbench bench` and peer lines made up here, whose ratios are known: each target
line's value and verdict, the absolute batch-1 bar the peer sets, the with/without line of a variant timed with
`--pdl off` (which must not replace the variant's own figures as the fp16 base), and the refusal to pair figures
from two devices.

  python3 tests/scripts/bench_ratios_test.py scripts/bench_ratios.py
"""
import json
import os
import subprocess
import sys
import tempfile


def qbench(method, base, p50, sweep, device="NVIDIA H200", **extra):
    row = {"method": method, "base_dtype": base, "device": {"device": device},
           "latency": {"p50_ms": p50}, "sweep": [{"batch_size": b, "samples_per_s": s} for b, s in sweep]}
    row.update(extra)
    return row


def peer(name, p50, sweep, device="NVIDIA H200"):
    return {"peer": name, "device": device, "latency": {"p50_ms": p50},
            "sweep": [{"batch_size": b, "samples_per_s": s} for b, s in sweep]}


def run(script, q_rows, p_rows):
    with tempfile.TemporaryDirectory() as d:
        qp, pp = os.path.join(d, "q.jsonl"), os.path.join(d, "p.jsonl")
        with open(qp, "w") as f:
            f.write("log line the script must skip\n" + "".join(json.dumps(r) + "\n" for r in q_rows))
        with open(pp, "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in p_rows))
        return subprocess.run([sys.executable, script, qp, pp], capture_output=True, text=True)


def main():
    script = sys.argv[1]
    failures = []

    def expect(cond, what):
        if not cond:
            failures.append(what)

    q_rows = [
        qbench("fp16", "fp16", 0.5, [(1, 2000), (128, 20000), (512, 22000)], pdl="on"),
        qbench("int8-w8a8", "fp16", 0.45, [(128, 24000), (512, 26400)], pdl="on"),
        qbench("nf4", "fp16", 0.6, [(512, 21000)], pdl="on"),
        # Timed again with plain launches: slower at batch 1, same throughput.
        qbench("fp16", "fp16", 0.55, [(128, 20000), (512, 22000)], pdl="off"),
    ]
    p_rows = [peer("hf-fp16-compile", 1.0, [(128, 17000), (512, 17600)])]
    r = run(script, q_rows, p_rows)
    expect(r.returncode == 0, f"exit status {r.returncode}: {r.stderr}")
    out = r.stdout
    lines = out.splitlines()

    def line_with(*parts):
        hits = [l for l in lines if all(p in l for p in parts)]
        return hits[0] if hits else ""

    expect("0.500" in line_with("fp16: batch-1 p50 / peer fp16 compile") and
           line_with("fp16: batch-1 p50 / peer fp16 compile").endswith("met"), "fp16 batch 1: 0.5 / 1.0 = 0.500, met")
    expect("1.250" in line_with("fp16: throughput b>=128 / peer fp16 compile"), "fp16 throughput: 22000 / 17600 = 1.250")
    w8 = line_with("int8-w8a8: throughput b>=128 / qbench fp16")
    expect("1.200" in w8 and w8.endswith("MISSED"), f"W8A8: 26400 / 22000 = 1.200 < 1.3, missed; got '{w8}'")
    nf4 = line_with("nf4: batch-1 p50 / qbench fp16")
    expect("1.200" in nf4 and nf4.endswith("MISSED"), f"NF4 batch 1: 0.6 / 0.5 = 1.200 > 1.0, missed; got '{nf4}'")
    pdl = line_with("fp16: batch-1 p50 with / without programmatic launch")
    expect("0.500 / 0.550 ms = 0.909" in pdl and "throughput b>=128 1.000x" in pdl, f"with/without line: '{pdl}'")
    expect("fp16/pdl-off: batch-1 p50 / peer fp16 compile" in out, "the pdl-off run gets its own batch-1 row")
    summary = json.loads(lines[-1])
    expect(len(summary["ratios"]) == sum(1 for l in lines if l.endswith(("met", "MISSED"))),
           "the JSON summary holds every ratio printed")
    bar = line_with("peer fp16 compile batch-1 p50")
    expect("1.000 ms" in bar and "is 0.800 ms" in bar, f"the batch-1 bar this call sets: '{bar}'")
    expect(summary.get("peer_fp16_compile_batch1_ms") == 1.0, "the JSON summary holds the peer's batch-1 latency")

    r = run(script, q_rows, [peer("hf-fp16-compile", 1.0, [(512, 17600)], device="NVIDIA H100 80GB HBM3")])
    expect(r.returncode != 0 and "different devices" in (r.stderr + r.stdout),
           f"two devices must be refused, got status {r.returncode}: {r.stderr}")

    for f in failures:
        print("FAIL:", f)
    if failures:
        print(out)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
