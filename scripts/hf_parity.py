#!/usr/bin/env python3
"""Hugging Face parity fixture: the real peer for qbench's GPT-2 classifier.

Builds a random-init transformers GPT2ForSequenceClassification, saves it with save_pretrained (safetensors),
runs a fixed batch that includes right-padded rows, and records the logits. qbench loads the checkpoint and
must reproduce them (`qbench parity`, tests/worker/hf_parity_test.cpp).

  python3 scripts/hf_parity.py --config tiny --out tests/fixtures/hf_tiny           # committed CPU fixture
  python3 scripts/hf_parity.py --config gpt2 --out /tmp/hf_gpt2 --dtypes fp32,fp16,bf16 --device cuda
Needs torch + transformers (the GPU box has both).
"""
import argparse
import json
import os
import random

import torch
import transformers
from transformers import GPT2Config, GPT2ForSequenceClassification

CONFIGS = {
    # Small vocabulary so the committed fixture stays ~150 KB; ids in the batch are below it.
    "tiny": dict(vocab_size=1000, n_positions=128, n_embd=64, n_layer=2, n_head=4, pad_token_id=999),
    "gpt2": dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, pad_token_id=50256),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtypes", default="fp32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    cfg = GPT2Config(num_labels=4, **CONFIGS[args.config])
    model = GPT2ForSequenceClassification(cfg).eval()
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)

    pad = cfg.pad_token_id
    lengths = [17, 1, 9, 32, 5, 32]  # padded rows of several lengths, a full row, a single-token row
    T = max(lengths)
    ids, mask = [], []
    for n in lengths:
        row = [random.randrange(0, pad) for _ in range(n)]
        ids.append(row + [pad] * (T - n))
        mask.append([1] * n + [0] * (T - n))
    result = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "config": args.config,
        "input_ids": ids,
        "attention_mask": mask,
        "lengths": lengths,
        "logits": {},
    }
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    for name in args.dtypes.split(","):
        m = GPT2ForSequenceClassification.from_pretrained(args.out, torch_dtype=dtypes[name]).to(args.device).eval()
        with torch.no_grad():
            out = m(input_ids=torch.tensor(ids, device=args.device),
                    attention_mask=torch.tensor(mask, device=args.device)).logits
        result["logits"][name] = out.float().cpu().tolist()
    with open(os.path.join(args.out, "logits.json"), "w") as f:
        json.dump(result, f)
    print(json.dumps({k: v for k, v in result.items() if k != "logits"})[:400])


if __name__ == "__main__":
    main()
