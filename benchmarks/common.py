"""Shared benchmark set-up: the benchmark model (Llama, hidden 256, 4 layers, vocab 4096), its data,
the CPU's measured matmul peak, and peak RSS. Standard library + torch + transformers only, so the
TRL baseline (run from its own virtualenv) can import it too."""
from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time
from pathlib import Path

import torch

WORDS = ("the a film movie story plot cast acting music score scene ending director script was is felt "
         "great good fine superb lovely warm funny clever bright bold awful bad dull slow boring thin flat "
         "weak messy long short and but yet so very quite rather too not at all in of with by for").split()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_peak_gflops(dtype=torch.float32, sizes=(512, 1024, 2048), windows: int = 4, seconds: float = 0.4) -> float:
    """Measured dense matmul rate on this machine (GFLOP/s), the denominator of MFU: the best of
    several short windows over several square sizes, since a shared machine's noise only ever slows
    it down and no single size is the fastest for every dtype (bf16 at 1024² measured below the
    benchmark model's own [1275, 256] × [256, 1024] matmuls)."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        for _ in range(3):
            a @ b
        for _ in range(windows):
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                a @ b
                count += 1
            best = max(best, 2 * n ** 3 * count / (time.perf_counter() - start) / 1e9)
    return best


def sentence(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def preference_rows(n: int, seed: int = 0) -> list[dict]:
    """Pairs whose prompt + completion stays within 128 tokens of the benchmark tokenizer."""
    rng = random.Random(seed)
    return [{"prompt": sentence(rng, 6, 20), "chosen": " " + sentence(rng, 20, 80) + ".",
             "rejected": " " + sentence(rng, 20, 80) + "."} for _ in range(n)]


def bench_args() -> argparse.ArgumentParser:
    """Arguments shared by throughput.py (preftune) and trl_baseline.py (TRL)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", choices=["sft", "dpo", "rm"], default="dpo")
    ap.add_argument("--mode", choices=["fp32", "bf16", "precomputed"], default="fp32")
    ap.add_argument("--assets", default="/tmp/preftune-bench")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peak", type=float, default=0, help="matmul GFLOP/s for MFU (default: measure)")
    return ap


def flops_per_token(recipe: str, mode: str, params: int) -> int:
    """6·N for a trained forward + backward, +2·N for a live reference forward (DPO)."""
    return (8 if recipe == "dpo" and mode != "precomputed" else 6) * params


def print_json(record: dict) -> None:
    json.dump(record, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()


def n_params(model_dir: Path) -> int:
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return sum(p.numel() for p in model.parameters())
