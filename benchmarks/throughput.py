"""preftune training throughput on a benchmark shape, one recipe and mode per process (so peak RSS
is the mode's own). Prints one JSON line.

    python benchmarks/throughput.py --recipe dpo --mode fp32 --shape realistic
modes: fp32 (live frozen reference for DPO), bf16 (bf16 weights over float32 masters), precomputed
(DPO reference log-probs computed before training; not timed, as for TRL's precompute_ref_log_probs).
Tokens are real (non-padding) prompt + completion tokens, counted per step; FLOPs as in
``common.step_flops``.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import bench_args, ensure_assets, matmul_peak_gflops, peak_memory_mb, print_json, step_flops  # noqa: E402


def main():
    ap = bench_args()
    ap.add_argument("--packing", default="true", choices=["true", "false"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from preftune.config import DPOConfig, RMConfig, SFTConfig
    from preftune.recipes.dpo import run_dpo
    from preftune.recipes.reward import run_rm
    from preftune.recipes.sft import run_sft
    from preftune.runtime.device import process_settings

    assets = ensure_assets(args)
    stats = json.loads((assets / "stats.json").read_text())
    cls, run = {"sft": (SFTConfig, run_sft), "dpo": (DPOConfig, run_dpo), "rm": (RMConfig, run_rm)}[args.recipe]
    out = Path(tempfile.mkdtemp(prefix=f"bench-{args.recipe}-"))
    cfg = cls(model=str(assets / "model"), data=str(assets / ("sft.jsonl" if args.recipe == "sft" else "prefs.jsonl")),
              output_dir=str(out), max_steps=args.warmup + args.steps, batch_size=args.batch_size,
              max_length=stats["max_length"], max_prompt_length=stats["max_prompt_length"], progress=False,
              threads=args.threads, lr=1e-5, dtype="bfloat16" if args.mode == "bf16" else "float32",
              lr_scheduler="constant", packing=args.packing == "true", device=args.device)
    if args.recipe == "dpo":
        cfg.ref = "precomputed" if args.mode == "precomputed" else "model"
    process_settings(cfg.device, cfg.dtype)   # what the CLI sets for its process
    run(cfg)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    timed = rows[args.warmup:]
    seconds = timed[-1]["elapsed_s"] - rows[args.warmup - 1]["elapsed_s"]
    tokens = sum(r["tokens"] for r in timed)
    samples = len(timed) * args.batch_size
    per_sample = stats["per_sample"][args.recipe]
    flops = tokens / per_sample["tokens"] * step_flops(args.recipe, args.mode, stats, per_sample)
    peak = args.peak or matmul_peak_gflops(torch.bfloat16 if args.mode == "bf16" else torch.float32,
                                           device=args.device)
    print_json({"impl": "preftune", "recipe": args.recipe, "mode": args.mode, "shape": args.shape,
                "tokens_per_s": tokens / seconds, "samples_per_s": samples / seconds,
                "peak_memory_mb": peak_memory_mb(args.device),
                "mfu": flops / seconds / (peak * 1e9), "peak_gflops": peak, "params": stats["params"],
                "steps_timed": len(timed), "threads": args.threads, "packing": cfg.packing})


if __name__ == "__main__":
    main()
