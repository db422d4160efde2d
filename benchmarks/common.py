"""Shared benchmark set-up: the benchmark shapes (model and data), the CPU's measured matmul peak,
the FLOPs of a training step counted honestly, and peak RSS. Standard library + torch +
transformers only, so the TRL baseline (run from its own virtualenv) imports it too.

Shapes:
* ``tiny``: Llama hidden 256, 4 layers, vocab 4096 (5.3 M parameters); pairs of ≤ 128 tokens of
  nearly equal length — the smoke test.
* ``realistic``: Llama hidden 512, 8 layers, 8 heads, intermediate 1376, vocab 4096, tied embeddings (27.4 M);
  chat-like lengths with long tails (prompts log-normal around 90 tokens, capped at 480;
  completions log-normal around 160, some past 1,000), max_length 1024 with the tail truncated —
  the spread of UltraFeedback / HH-RLHF.
* ``large``: the realistic data on hidden 768, 12 layers, 12 heads, intermediate 2048 (≈ 100 M).
* ``worst``: the realistic model with one long pair (~1,000 tokens each side) among seven short ones
  (~60 tokens), the case where slots padded to the longest sequence multiplied activation memory.
* ``gpu``: the realistic data on a Qwen2-0.5B-shaped model (hidden 896, 24 layers, 14 heads, 2 KV
  heads, intermediate 4864, vocabulary 151,936: ≈ 0.5 B parameters), randomly initialised — for
  ``gpu_check.py``.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import resource
import sys
import time
from pathlib import Path

import torch

WORDS = ("the a film movie story plot cast acting music score scene ending director script was is felt "
         "great good fine superb lovely warm funny clever bright bold awful bad dull slow boring thin flat "
         "weak messy long short and but yet so very quite rather too not at all in of with by for").split()

SHAPES = {
    "tiny": dict(hidden=256, layers=4, heads=4, intermediate=1024, max_length=128, max_prompt_length=128, pairs=256),
    "realistic": dict(hidden=512, layers=8, heads=8, intermediate=1376, max_length=1024, max_prompt_length=512,
                      pairs=256),
    "large": dict(hidden=768, layers=12, heads=12, intermediate=2048, max_length=1024, max_prompt_length=512,
                  pairs=256),
    "worst": dict(hidden=512, layers=8, heads=8, intermediate=1376, max_length=1024, max_prompt_length=512,
                  pairs=256),
    "gpu": dict(hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864, vocab=151936, arch="qwen2",
                max_length=1024, max_prompt_length=512, pairs=1024),
}
VOCAB = 4096


def peak_memory_mb(device: str = "cpu") -> float:
    """Peak GPU memory allocated on CUDA, peak RSS on CPU."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_peak_gflops(dtype=torch.float32, sizes=(512, 1024, 2048), windows: int = 4, seconds: float = 0.4,
                       device: str = "cpu") -> float:
    """Measured dense matmul rate on this machine (GFLOP/s), the denominator of MFU: the best of
    several short windows over several square sizes, since a shared machine's noise only ever slows
    it down and no single size is the fastest for every dtype (GPUs: 4096² and 8192² as well)."""
    best = 0.0
    if device.startswith("cuda"):
        sizes = (*sizes, 4096, 8192)
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
        for _ in range(3):
            a @ b
        for _ in range(windows):
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                a @ b
                count += 1
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best = max(best, 2 * n ** 3 * count / (time.perf_counter() - start) / 1e9)
    return best


def sentence(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def _words(rng: random.Random, median: float, sigma: float, lo: int, hi: int) -> str:
    n = int(min(hi, max(lo, rng.lognormvariate(math.log(median), sigma))))
    return " ".join(rng.choice(WORDS) for _ in range(n))


def preference_rows(n: int, shape: str, seed: int = 0) -> list[dict]:
    """``n`` pairs of the shape's length distribution (one word ≈ one token of the benchmark tokenizer)."""
    rng = random.Random(seed)
    if shape == "tiny":
        return [{"prompt": sentence(rng, 6, 20), "chosen": " " + sentence(rng, 20, 80) + ".",
                 "rejected": " " + sentence(rng, 20, 80) + "."} for _ in range(n)]
    if shape == "worst":   # every eighth pair long: on average one per batch of 8
        return [{"prompt": sentence(rng, 200, 200) if i % 8 == 0 else sentence(rng, 10, 20),
                 "chosen": " " + (sentence(rng, 800, 800) if i % 8 == 0 else sentence(rng, 30, 50)) + ".",
                 "rejected": " " + (sentence(rng, 800, 800) if i % 8 == 0 else sentence(rng, 30, 50)) + "."}
                for i in range(n)]
    return [{"prompt": _words(rng, 90, 0.9, 12, 480), "chosen": " " + _words(rng, 160, 0.8, 6, 1400) + ".",
             "rejected": " " + _words(rng, 160, 0.8, 6, 1400) + "."} for _ in range(n)]


def bench_args() -> argparse.ArgumentParser:
    """Arguments shared by throughput.py (preftune) and trl_baseline.py (TRL)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", choices=["sft", "dpo", "rm"], default="dpo")
    ap.add_argument("--mode", choices=["fp32", "bf16", "precomputed"], default="fp32")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--assets", default="/tmp/preftune-bench")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--peak", type=float, default=0, help="matmul GFLOP/s for MFU (default: measure)")
    return ap


def assets_dir(args) -> Path:
    return Path(args.assets) / args.shape


def ensure_assets(args) -> Path:
    """The shape's model and data, built on first use (deterministic)."""
    folder = assets_dir(args)
    if not (folder / "stats.json").exists():
        import subprocess
        subprocess.run([sys.executable, str(Path(__file__).parent / "make_assets.py"), "--out", args.assets,
                        "--shape", args.shape], check=True, stdout=sys.stderr)   # stdout holds the JSON
    return folder


def step_flops(recipe: str, mode: str, stats: dict, per_sample: dict) -> float:
    """Model FLOPs of one sample's training (a pair for DPO and the reward model), counted honestly:
    6 per parameter of the decoder's matmuls per token (forward + backward), causal attention
    (forward 4·d·n(n+1)/2 per layer for a sequence of n tokens, ×3 with the backward), and the LM
    head (6·d·V) only at completion tokens, the only ones whose log-probs the loss reads; likewise
    the last layer's MLP (3·d·I parameters) only where its output is read: at completion tokens, or a
    reward model's last token of each sequence. A live DPO reference adds the forward (a third of
    each). Padding is not counted, nor work one side skips."""
    d, layers, linear = stats["hidden"], stats["layers"], stats["decoder_linear_params"]
    tokens, pairs_sq, labelled = per_sample["tokens"], per_sample["attention_pairs"], per_sample["labelled"]
    read = 2 if recipe == "rm" else labelled   # positions whose final hidden state the loss reads
    forward = 2 * linear * tokens + 4 * d * layers * pairs_sq - 2 * 3 * d * stats["intermediate"] * (tokens - read)
    head = 2 * d * stats["vocab"] * labelled if recipe != "rm" else 0
    total = 3 * (forward + head)
    if recipe == "dpo" and mode != "precomputed":
        total += forward + head
    return total


def print_json(record: dict) -> None:
    json.dump(record, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()
