"""One PPO iteration on the benchmark model, timed by phase: generation, reference + reward + critic
scoring, and optimisation; generated tokens/s and peak RSS. Prints one JSON line.

    python benchmarks/ppo_iteration.py --shape tiny
The reward model is the benchmark model with a fresh one-output head (its values do not matter
for timing); prompts are the benchmark pairs' prompts.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import SHAPES, ensure_assets, peak_memory_mb, print_json  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--assets", default="/tmp/preftune-bench")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rollout_batch_size", type=int, default=32)
    ap.add_argument("--max_new_tokens", type=int, default=64)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForSequenceClassification
    from preftune.config import PPOConfig
    from preftune.recipes import ppo as ppo_recipe
    from preftune.runtime.device import process_settings

    assets = ensure_assets(args)
    work = Path(tempfile.mkdtemp(prefix="bench-ppo-"))
    rm = AutoModelForSequenceClassification.from_pretrained(assets / "model", num_labels=1)
    rm.save_pretrained(work / "rm")
    from transformers import AutoTokenizer
    AutoTokenizer.from_pretrained(assets / "model").save_pretrained(work / "rm")
    prompts = work / "prompts.jsonl"
    with open(prompts, "w") as f:
        for line in (assets / "prefs.jsonl").read_text().splitlines():
            f.write(json.dumps({"prompt": json.loads(line)["prompt"]}) + "\n")

    phases = {"generate_s": 0.0, "score_s": 0.0}
    original = ppo_recipe.Rollouts.make

    def timed_make(self, iteration):
        original(self, iteration)
        phases["generate_s"] += self.metrics["rollout/gen_s"]
        phases["score_s"] += self.metrics["rollout/score_s"]
        phases.setdefault("gen_tokens", 0)
        phases["gen_tokens"] += self.metrics["rollout/response_length"] * self.size

    ppo_recipe.Rollouts.make = timed_make
    updates = 2 * args.rollout_batch_size // 16
    cfg = PPOConfig(model=str(assets / "model"), reward=str(work / "rm"), data=str(prompts),
                    output_dir=str(work / "run"),
                    rollout_batch_size=args.rollout_batch_size, batch_size=16, ppo_epochs=2,
                    max_steps=updates * args.iterations, max_new_tokens=args.max_new_tokens, progress=False,
                    threads=args.threads, dtype=args.dtype, eval_prompts=0, device=args.device)
    process_settings(cfg.device, cfg.dtype)   # what the CLI sets for its process
    start = time.perf_counter()
    summary = ppo_recipe.run_ppo(cfg)
    wall = summary["wall_s"]
    n = args.iterations
    optimise = wall - phases["generate_s"] - phases["score_s"]
    print_json({"impl": "preftune", "recipe": "ppo", "dtype": args.dtype, "per_iteration_s": wall / n,
                "generate_s": phases["generate_s"] / n, "score_s": phases["score_s"] / n, "optimise_s": optimise / n,
                "generated_tokens_per_s": phases["gen_tokens"] / phases["generate_s"],
                "rollout_batch_size": args.rollout_batch_size, "max_new_tokens": args.max_new_tokens,
                "peak_memory_mb": peak_memory_mb(args.device), "total_s": time.perf_counter() - start})


if __name__ == "__main__":
    main()
