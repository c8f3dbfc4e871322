#!/usr/bin/env python3
"""Time qbench's GPT-2 tokenizer against tiktoken's encode_ordinary on the same AG News texts, and check
that both produce exactly the same ids.

    python3 scripts/peer_tokenizer.py --qbench build/worker/tokenizer_bench --data DIR

Runs the qbench benchmark (which writes the texts and its ids as JSON lines), builds tiktoken's GPT-2
encoding from DIR/gpt2/encoder.json + vocab.bpe through tiktoken.load.data_gym_to_mergeable_bpe_ranks
(nothing is downloaded), times encode_ordinary single-threaded on exactly those texts (first pass = cold,
then best of --repeat), compares every id, and prints one JSON object with the qbench/tiktoken ratios.

Without tiktoken, --reference python checks the ids against GPT-2's original encoder.py algorithm
(needs the `regex` module) and times that instead. Exit status: 0 when the ids match, 1 on any mismatch,
2 on a usage or setup problem.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

# SPEC section 1; identical to tiktoken_ext/openai_public.py's gpt2 pat_str.
PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ENDOFTEXT = "<|endoftext|>"


def fail(msg: str, code: int = 2) -> None:
    print(f"peer_tokenizer: {msg}", file=sys.stderr)
    sys.exit(code)


def read_json_lines(path: str) -> list:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def local_file_reader(original):
    """tiktoken.load.read_file_cached replacement for local paths: older tiktoken releases need `blobfile`
    for non-URL paths and every release writes a cache copy; a plain read avoids both. Hashes, when
    given, are still checked."""

    def read(blobpath, expected_hash=None, *args, **kwargs):
        if os.path.exists(blobpath):
            with open(blobpath, "rb") as f:
                data = f.read()
            if expected_hash and hashlib.sha256(data).hexdigest() != expected_hash:
                raise ValueError(f"{blobpath}: sha256 differs from {expected_hash}")
            return data
        return original(blobpath, expected_hash, *args, **kwargs)

    return read


def tiktoken_encoder(gpt2_dir: str):
    import tiktoken
    import tiktoken.load

    tiktoken.load.read_file_cached = local_file_reader(tiktoken.load.read_file_cached)
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=os.path.join(gpt2_dir, "vocab.bpe"),
        encoder_json_file=os.path.join(gpt2_dir, "encoder.json"),
    )
    enc = tiktoken.Encoding(
        name="gpt2_from_local_files",
        pat_str=PATTERN,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: 50256},
        explicit_n_vocab=50257,
    )
    return enc.encode_ordinary, f"tiktoken {getattr(tiktoken, '__version__', '?')}"


def python_reference_encoder(gpt2_dir: str):
    """GPT-2's encoder.py (openai/gpt-2, src/encoder.py): the algorithm every other implementation copies."""
    import regex

    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    byte_encoder = {b: chr(c) for b, c in zip(bs, cs)}
    with open(os.path.join(gpt2_dir, "encoder.json"), encoding="utf-8") as f:
        encoder = json.load(f)
    with open(os.path.join(gpt2_dir, "vocab.bpe"), encoding="utf-8") as f:
        merges = [tuple(line.split()) for line in f.read().split("\n")[1:-1]]
    ranks = {m: i for i, m in enumerate(merges)}
    pat = regex.compile(PATTERN)
    cache: dict[str, list[int]] = {}

    def bpe(token: str) -> list[int]:
        word = list(token)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
            if best not in ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == best[0] and word[i + 1] == best[1]:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return [encoder[w] for w in word]

    def encode(text: str) -> list[int]:
        out: list[int] = []
        for piece in pat.findall(text):
            token = "".join(byte_encoder[b] for b in piece.encode("utf-8"))
            ids = cache.get(token)
            if ids is None:
                ids = cache[token] = bpe(token)
            out.extend(ids)
        return out

    return encode, "GPT-2 encoder.py algorithm (Python, regex " + getattr(regex, "__version__", "?") + ")"


def time_passes(encode, texts: list[str], repeat: int):
    """First pass (cold) and the best of `repeat` more; returns (ids of the first pass, cold s, warm s)."""
    start = time.perf_counter()
    ids = [encode(t) for t in texts]
    cold = time.perf_counter() - start
    warm = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for t in texts:
            encode(t)
        warm = min(warm, time.perf_counter() - start)
    return ids, cold, warm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qbench", required=True, help="path of the tokenizer_bench executable")
    ap.add_argument("--data", required=True, help="data folder holding ag_news/ and gpt2/")
    ap.add_argument("--repeat", type=int, default=5, help="warm passes for both sides (best is kept)")
    ap.add_argument("--reference", choices=["tiktoken", "python"], default="tiktoken",
                    help="peer to compare with (python = GPT-2's encoder.py algorithm; slow, for checking ids)")
    ap.add_argument("--workdir", help="keep the dumped texts and ids here (default: a temp folder)")
    args = ap.parse_args()

    gpt2_dir = os.path.join(args.data, "gpt2")
    for f in ("encoder.json", "vocab.bpe"):
        if not os.path.isfile(os.path.join(gpt2_dir, f)):
            fail(f"{os.path.join(gpt2_dir, f)} not found (--data must hold gpt2/encoder.json and gpt2/vocab.bpe)")
    if not os.access(args.qbench, os.X_OK):
        fail(f"{args.qbench} is not an executable (build the tokenizer_bench target first)")
    if args.repeat < 1:
        fail("--repeat must be at least 1")

    try:
        if args.reference == "tiktoken":
            encode, peer_name = tiktoken_encoder(gpt2_dir)
        else:
            encode, peer_name = python_reference_encoder(gpt2_dir)
    except ImportError as e:
        fail(f"cannot load the {args.reference} peer: {e} (try --reference python, which needs only `regex`)")

    with tempfile.TemporaryDirectory(prefix="qbench_peer_tok_") as tmp:
        work = args.workdir or tmp
        os.makedirs(work, exist_ok=True)
        texts_path = os.path.join(work, "texts.jsonl")
        ids_path = os.path.join(work, "qbench_ids.jsonl")
        cmd = [args.qbench, "--data", args.data, "--repeat", str(args.repeat),
               "--dump-texts", texts_path, "--dump-ids", ids_path]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            fail(f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stderr}")
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if not lines:
            fail(f"no JSON line in the output of {' '.join(cmd)}:\n{proc.stdout}")
        qbench = json.loads(lines[-1])
        texts = read_json_lines(texts_path)
        qbench_ids = read_json_lines(ids_path)

    if len(texts) != qbench["texts"] or len(qbench_ids) != len(texts):
        fail(f"bench reported {qbench['texts']} texts but dumped {len(texts)} texts and {len(qbench_ids)} id lists")

    peer_ids, peer_cold, peer_warm = time_passes(encode, texts, args.repeat)
    peer_tokens = sum(len(x) for x in peer_ids)
    mismatches = [i for i, (a, b) in enumerate(zip(qbench_ids, peer_ids)) if a != b]

    result = {
        "texts": len(texts),
        "bytes": qbench["bytes"],
        "peer": peer_name,
        "ids_identical": not mismatches,
        "mismatched_texts": len(mismatches),
        "qbench": {"tokens": qbench["tokens"], "cold_tokens_per_s": qbench["cold"]["tokens_per_s"],
                   "warm_tokens_per_s": qbench["warm"]["tokens_per_s"]},
        "peer_timing": {"tokens": peer_tokens, "cold_seconds": peer_cold, "warm_seconds": peer_warm,
                        "cold_tokens_per_s": peer_tokens / peer_cold, "warm_tokens_per_s": peer_tokens / peer_warm},
        "ratio_cold": qbench["cold"]["tokens_per_s"] / (peer_tokens / peer_cold),
        "ratio_warm": qbench["warm"]["tokens_per_s"] / (peer_tokens / peer_warm),
        "threads": 1,
        "device": qbench.get("device", platform.processor()),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }
    if mismatches:
        i = mismatches[0]
        result["first_mismatch"] = {"index": i, "text": texts[i], "qbench": qbench_ids[i], "peer": peer_ids[i]}
    print(json.dumps(result, indent=1))
    sys.exit(1 if mismatches else 0)


if __name__ == "__main__":
    main()
