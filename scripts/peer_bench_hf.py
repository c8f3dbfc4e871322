#!/usr/bin/env python3
"""The inference peer (issue 6, SPEC section 4): what a user runs today, timed like `qbench bench`.

Hugging Face transformers GPT2ForSequenceClassification, GPT-2 Small config, 4 labels, random weights (speed
does not depend on them), every row a full `--seq-len` tokens, no padding:
  hf-fp32-eager, hf-fp16-eager, hf-fp16-compile (torch.compile mode reduce-overhead, i.e. CUDA graphs),
  hf-w8a8-int8-compile: the 48 block projections as per-token x per-channel int8 through torch._int_mm,
  hf-fp8-rowwise-compile: the same projections as FP8 E4M3 with row-wise scales through torch._scaled_mm
  (bf16 model: PyTorch's row-wise scaled_mm wants a bf16 output), both compiled like the fp16 peer.
Batch-1 latency (p50/p90/p99 over --iters synchronised forwards) and a throughput sweep over --batch-sizes.
One JSON line per peer on stdout, in the shape `qbench bench` prints; scripts/bench_ratios.py pairs them.

  python3 scripts/peer_bench_hf.py [--peers NAME,...] [--batch-sizes 1,8,32,128,512] [--iters 200]
"""
import argparse
import json
import statistics
import time

import torch
import transformers
from transformers import GPT2Config, GPT2ForSequenceClassification


def percentile(v, q):
    v = sorted(v)
    pos = q * (len(v) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


class Int8Linear(torch.nn.Module):
    """y = dequant(int8(x) @ int8(W)^T) + b: per-token activation scales, per-output-channel weight scales."""

    def __init__(self, weight_in_out, bias):
        super().__init__()
        w = weight_in_out.t().float()  # HF Conv1D stores [in, out]
        scale = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0  # [out]
        # Stored [out, in] contiguous; forward passes w.t(), the column-major [in, out] operand cuBLASLt's
        # fast int8 layout wants (a transposed view kept as a buffer can come back contiguous under compile).
        self.register_buffer("w", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous())
        self.register_buffer("w_scale", scale.half()[None, :])
        self.register_buffer("bias", bias.half())

    def forward(self, x):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        xs = x2.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-8) / 127.0
        xq = torch.round(x2.float() / xs).clamp(-127, 127).to(torch.int8)
        acc = torch._int_mm(xq, self.w.t())  # int32 [tokens, out]; needs tokens > 16
        y = (acc.float() * xs * self.w_scale.float()).half() + self.bias
        return y.reshape(*shape[:-1], -1)


class Fp8Linear(torch.nn.Module):
    """FP8 E4M3 weights and activations with row-wise scales through torch._scaled_mm, bf16 output."""

    def __init__(self, weight_in_out, bias):
        super().__init__()
        w = weight_in_out.t().float()  # [out, in]
        fmax = torch.finfo(torch.float8_e4m3fn).max
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / fmax
        self.register_buffer("w", (w / scale[:, None]).to(torch.float8_e4m3fn).contiguous())  # [out, in]
        self.register_buffer("w_scale", scale[None, :].float())
        self.register_buffer("bias", bias.bfloat16())
        self.fmax = fmax

    def forward(self, x):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        xs = x2.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / self.fmax
        xq = (x2.float() / xs).to(torch.float8_e4m3fn)
        y = torch._scaled_mm(xq, self.w.t(), scale_a=xs, scale_b=self.w_scale, bias=self.bias, out_dtype=torch.bfloat16)
        return y.reshape(*shape[:-1], -1)


def swap_projections(model, make):
    n = 0
    for block in model.transformer.h:
        for parent, name in ((block.attn, "c_attn"), (block.attn, "c_proj"), (block.mlp, "c_fc"), (block.mlp, "c_proj")):
            conv = getattr(parent, name)
            setattr(parent, name, make(conv.weight.data, conv.bias.data))
            n += 1
    assert n == 48, n
    return model


def build(peer, device):
    cfg = GPT2Config(num_labels=4, pad_token_id=50256)
    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(cfg).eval()
    if peer == "hf-fp32-eager":
        return model.to(device), False
    if peer in ("hf-fp16-eager", "hf-fp16-compile"):
        return model.half().to(device), peer.endswith("compile")
    if peer == "hf-w8a8-int8-compile":
        model = model.half().to(device)
        return swap_projections(model, lambda w, b: Int8Linear(w, b)).to(device), True
    if peer == "hf-fp8-rowwise-compile":
        model = model.bfloat16().to(device)
        return swap_projections(model, lambda w, b: Fp8Linear(w, b)).to(device), True
    raise SystemExit(f"unknown peer {peer}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--peers", default="hf-fp32-eager,hf-fp16-eager,hf-fp16-compile,hf-w8a8-int8-compile,hf-fp8-rowwise-compile")
    ap.add_argument("--batch-sizes", default="1,8,32,128,512")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    dev = torch.device(a.device)
    sizes = [int(s) for s in a.batch_sizes.split(",")]
    for peer in a.peers.split(","):
        model, compiled = build(peer, dev)
        fwd = torch.compile(model, mode="reduce-overhead", dynamic=False) if compiled else model
        out = {"peer": peer, "device": torch.cuda.get_device_name(dev), "torch": torch.__version__,
               "transformers": transformers.__version__, "seq_len": a.seq_len}
        with torch.inference_mode():
            ids = torch.randint(0, 50000, (1, a.seq_len), device=dev)
            mask = torch.ones_like(ids)
            for _ in range(max(a.warmup, 3)):  # compile, record the graph, warm up
                fwd(input_ids=ids, attention_mask=mask)
            torch.cuda.synchronize()
            ms = []
            for _ in range(a.iters):
                t0 = time.perf_counter()
                fwd(input_ids=ids, attention_mask=mask)
                torch.cuda.synchronize()
                ms.append((time.perf_counter() - t0) * 1e3)
            out["latency"] = {"batch_size": 1, "p50_ms": percentile(ms, 0.5), "p90_ms": percentile(ms, 0.9),
                              "p99_ms": percentile(ms, 0.99), "mean_ms": statistics.fmean(ms), "runs": len(ms)}
            out["sweep"] = []
            for b in sizes:
                ids = torch.randint(0, 50000, (b, a.seq_len), device=dev)
                mask = torch.ones_like(ids)
                for _ in range(3):
                    fwd(input_ids=ids, attention_mask=mask)
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                fwd(input_ids=ids, attention_mask=mask)
                torch.cuda.synchronize()
                probe = time.perf_counter() - t0
                runs = max(5, min(200, int(2.0 / max(probe, 1e-6))))
                t0 = time.perf_counter()
                for _ in range(runs):
                    fwd(input_ids=ids, attention_mask=mask)
                torch.cuda.synchronize()
                s = time.perf_counter() - t0
                out["sweep"].append({"batch_size": b, "samples_per_s": b * runs / s, "ms_per_batch": 1e3 * s / runs})
        print(json.dumps(out), flush=True)
        del model, fwd
        torch.cuda.empty_cache()
        torch._dynamo.reset()


if __name__ == "__main__":
    main()
