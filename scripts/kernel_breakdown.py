#!/usr/bin/env python3
"""Where one forward's GPU time goes, kernel by kernel, from an Nsight Compute CSV.

Profile a bench run with one metric, kernel duration, then hand the CSV to this script:

  ncu --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv --print-units base \
      --log-file fp16.csv qbench bench --device cuda --methods fp16 --batch-sizes 512 --warmup 1 --iters 1
  python3 scripts/kernel_breakdown.py fp16.csv [more.csv ...]

The bench's last forwards are all the same batch shape, so the last forward is the last period of the kernel
sequence: the script finds the shortest tail that repeats and sums it by kind (products, quantizers, ...).
ncu runs each kernel on its own (serialised; --cache-control none keeps the caches as the kernel before left
them), so the sum is the kernels' time without overlap, launch gaps or the power cap a busy card runs into; the
bench's wall-clock figure, taken without ncu, is what a user gets. One JSON line per file goes to stdout after
the table. A file that is not ncu's CSV, or holds no repeated forward, is an error naming the file.
"""
import csv
import json
import re
import sys
from collections import OrderedDict

# First match wins; the patterns are matched against the demangled kernel name, lower-cased.
KINDS = [
    ("add + layernorm", r"layer_norm|layernorm"),  # before "quantize": the fused ones quantize too
    ("dequantize", r"dequant"),
    ("quantize", r"quantize|quant_rows|fp8_rows"),
    ("int8 epilogue", r"int8_epilogue"),
    ("attention", r"flash|fmha|attention|attn|sdpa|softmax"),  # before "product": cuDNN's names say wgmma
    ("product", r"gemm|gemv|xmma|nvjet|cutlass|wgmma|matmul"),
    ("embedding", r"index_select|embedding|indexselect|gather"),
]


def kind_of(name):
    low = name.lower()
    for kind, pattern in KINDS:
        if re.search(pattern, low):
            return kind
    return "other"


def read_kernels(path):
    """[(kernel name, grid, block, duration ns)] in launch order."""
    with open(path, newline="") as f:
        lines = [line for line in f if not line.startswith("==")]  # ncu's own messages
    rows = list(csv.DictReader(lines))
    if not rows or "Kernel Name" not in rows[0]:
        sys.exit(f"{path}: no ncu CSV rows with a 'Kernel Name' column (was ncu run with --csv?)")
    kernels = []
    for r in rows:
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        value = float(r["Metric Value"].replace(",", ""))
        unit = r.get("Metric Unit", "ns")
        scale = {"ns": 1.0, "nsecond": 1.0, "usecond": 1e3, "us": 1e3, "msecond": 1e6, "ms": 1e6}.get(unit)
        if scale is None:
            sys.exit(f"{path}: kernel {r.get('ID', '?')}: duration in unknown unit '{unit}' (want --print-units base)")
        kernels.append((r["Kernel Name"], r.get("Grid Size", ""), r.get("Block Size", ""), value * scale))
    if not kernels:
        sys.exit(f"{path}: no gpu__time_duration.sum rows")
    return kernels


def last_period(path, kernels, min_len=20):
    """The last forward: the shortest tail of length L >= min_len whose launches equal the L before them."""
    sig = [(k[0], k[1], k[2]) for k in kernels]
    n = len(sig)
    for length in range(min_len, n // 2 + 1):
        if sig[n - length:] == sig[n - 2 * length:n - length]:
            return kernels[n - length:]
    sys.exit(f"{path}: no repeating tail of >= {min_len} kernels among {n}: profile at least two identical forwards")


def main(paths):
    for path in paths:
        fwd = last_period(path, read_kernels(path))
        total = sum(k[3] for k in fwd)
        by_kind = OrderedDict((kind, [0, 0.0]) for kind, _ in KINDS + [("other", "")])
        by_name = OrderedDict()
        by_launch = OrderedDict()  # kernel and grid: one product shape, one LayerNorm size, ...
        # Each launch's kind and name without its parameter list, once: the tables and the block listing use both.
        named = [(kind_of(name), re.sub(r"\(.*", "", name), grid, ns) for name, grid, _, ns in fwd]
        for kind, base, grid, ns in named:
            by_kind[kind][0] += 1
            by_kind[kind][1] += ns
            short = base[:90]
            entry = by_name.setdefault((kind, short), [0, 0.0])
            entry[0] += 1
            entry[1] += ns
            launch = by_launch.setdefault((kind, short[:60], grid), [0, 0.0])
            launch[0] += 1
            launch[1] += ns
        print(f"== {path}: one forward, {len(fwd)} kernels, {total / 1e6:.3f} ms of kernel time (serialised)")
        print(f"{'kind':<16} {'kernels':>7} {'ms':>8} {'share':>6}")
        for kind, (count, ns) in by_kind.items():
            if count:
                print(f"{kind:<16} {count:>7} {ns / 1e6:>8.3f} {100 * ns / total:>5.1f}%")
        print(f"  {'kind':<16} {'kernel':<90} {'calls':>5} {'ms':>8}")
        for (kind, short), (count, ns) in sorted(by_name.items(), key=lambda kv: -kv[1][1]):
            print(f"  {kind:<16} {short:<90} {count:>5} {ns / 1e6:>8.3f}")
        print(f"  {'kind':<16} {'kernel':<60} {'grid':<16} {'calls':>5} {'ms':>8} {'us a call':>9}")
        for (kind, short, grid), (count, ns) in sorted(by_launch.items(), key=lambda kv: -kv[1][1])[:20]:
            print(f"  {kind:<16} {short:<60} {grid:<16} {count:>5} {ns / 1e6:>8.3f} {ns / 1e3 / count:>9.1f}")
        # One middle block's launches in order (from one add + LayerNorm to the one two after it): which
        # product is which shape, since persistent kernels launch the same grid for every shape.
        ln = [i for i, launch in enumerate(named) if launch[0] == "add + layernorm"]
        if len(ln) > 12:
            print("  one block, in launch order:")
            for kind, base, grid, ns in named[ln[10]:ln[12]]:
                print(f"    {kind:<16} {base[:70]:<70} {grid:<14} {ns / 1e3:>8.1f} us")
        print(json.dumps({"file": path, "kernels": len(fwd), "total_ms": total / 1e6,
                          "by_kind_ms": {k: v[1] / 1e6 for k, v in by_kind.items() if v[0]},
                          "by_kernel_ms": {f"{k}: {s}": v[1] / 1e6 for (k, s), v in by_name.items()}}))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
