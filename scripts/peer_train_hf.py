#!/usr/bin/env python3
"""The training peer: Hugging Face transformers, eager, what a user runs today (SPEC section 4 setting).

GPT2ForSequenceClassification (GPT-2 Small config, random init), bf16 autocast, batch 64, padded to 128,
AdamW (weight decay 0.01 off biases/LayerNorms), warm-up then cosine decay, gradient clipping 1.0, dropout
as GPT-2, over the train CSV for N epochs; then test accuracy. Prints one JSON line. Tokenizes with
tiktoken's GPT-2 encoding built from the same encoder.json/vocab.bpe qbench uses (no download).

  python3 scripts/peer_train_hf.py --data DIR [--epochs 10] [--lr 2e-4] [--device cuda]
"""
import argparse
import csv
import json
import math
import os
import sys
import time

import torch
import transformers
from transformers import GPT2Config, GPT2ForSequenceClassification

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_tokenizer import tiktoken_encoder  # noqa: E402  (same BPE files, no download)


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return [(int(r[0]) - 1, r[1] + " " + r[2]) for r in csv.reader(f)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--warmup-fraction", type=float, default=0.06)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    torch.manual_seed(args.seed)

    encode_ordinary, _ = tiktoken_encoder(os.path.join(args.data, "gpt2"))
    eos = 50256
    train = read_rows(os.path.join(args.data, "ag_news", "train_first10429.csv"))
    test = read_rows(os.path.join(args.data, "ag_news", "test.csv"))

    def encode(rows):
        # Padded to max_len with <|endoftext|> (right padding), as GPT2Tokenizer with pad_token = eos does.
        ids = torch.full((len(rows), args.max_len), eos, dtype=torch.long)
        mask = torch.zeros((len(rows), args.max_len), dtype=torch.long)
        for i, (_, text) in enumerate(rows):
            t = encode_ordinary(text)[: args.max_len]
            ids[i, : len(t)] = torch.tensor(t)
            mask[i, : len(t)] = 1
        return ids, mask, torch.tensor([y for y, _ in rows])

    tr_ids, tr_mask, tr_y = encode(train)
    te_ids, te_mask, te_y = encode(test)
    dev = torch.device(args.device)
    cfg = GPT2Config(num_labels=4, pad_token_id=eos)
    model = GPT2ForSequenceClassification(cfg).to(dev)
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or ".ln_" in n or "ln_f" in n]
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or ".ln_" in n or "ln_f" in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr)
    n = len(train)
    steps_per_epoch = math.ceil(n / args.batch_size)
    total = steps_per_epoch * args.epochs
    warmup = round(args.warmup_fraction * total)
    sched = transformers.get_cosine_schedule_with_warmup(opt, warmup, total)
    g = torch.Generator().manual_seed(args.seed)
    model.train()
    torch.cuda.synchronize()
    t0 = time.time()
    epoch_losses = []
    for _ in range(args.epochs):
        perm = torch.randperm(n, generator=g)
        loss_sum = torch.zeros((), device=dev)
        for s in range(0, n, args.batch_size):
            idx = perm[s:s + args.batch_size]
            ids, mask, y = tr_ids[idx].to(dev), tr_mask[idx].to(dev), tr_y[idx].to(dev)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(input_ids=ids, attention_mask=mask, labels=y).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            loss_sum += loss.detach()
        epoch_losses.append(round(loss_sum.item() / steps_per_epoch, 4))
    torch.cuda.synchronize()
    train_s = time.time() - t0
    model.eval()
    correct = 0
    with torch.no_grad():
        for s in range(0, len(test), 256):
            logits = model(input_ids=te_ids[s:s + 256].to(dev), attention_mask=te_mask[s:s + 256].to(dev)).logits
            correct += (logits.argmax(-1).cpu() == te_y[s:s + 256]).sum().item()
    print(json.dumps({"peer": "hf-eager-bf16-autocast", "device": torch.cuda.get_device_name(0),
                      "torch": torch.__version__, "transformers": transformers.__version__,
                      "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                      "train_rows": n, "train_seconds": round(train_s, 2),
                      "train_samples_per_s": round(n * args.epochs / train_s, 1),
                      "epoch_losses": epoch_losses, "test_accuracy": correct / len(test)}))


if __name__ == "__main__":
    main()
