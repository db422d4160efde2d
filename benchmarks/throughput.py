"""preftune training throughput on the benchmark model, one mode per process (so peak RSS is the
mode's own). Prints one JSON line.

    python benchmarks/throughput.py --recipe dpo --mode fp32 --assets /tmp/preftune-bench
modes: fp32 (live frozen reference for DPO), bf16 (bf16 weights over float32 masters), precomputed
(DPO reference log-probs computed before training; not timed, as for TRL's precompute_ref_log_probs).
FLOPs per token: 6·N for a trained forward + backward, +2·N for a live reference forward.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import bench_args, flops_per_token, matmul_peak_gflops, n_params, peak_rss_mb, print_json  # noqa: E402


def main():
    ap = bench_args()
    ap.add_argument("--packing", default="true", choices=["true", "false"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from preftune.config import DPOConfig, RMConfig, SFTConfig
    from preftune.recipes.dpo import run_dpo
    from preftune.recipes.reward import run_rm
    from preftune.recipes.sft import run_sft

    assets = Path(args.assets)
    if not (assets / "model").exists():
        import subprocess
        subprocess.run([sys.executable, str(Path(__file__).parent / "make_assets.py"), "--out", str(assets)], check=True)
    cls, run = {"sft": (SFTConfig, run_sft), "dpo": (DPOConfig, run_dpo), "rm": (RMConfig, run_rm)}[args.recipe]
    out = Path(tempfile.mkdtemp(prefix=f"bench-{args.recipe}-"))
    cfg = cls(model=str(assets / "model"), data=str(assets / ("sft.jsonl" if args.recipe == "sft" else "prefs.jsonl")),
              output_dir=str(out), max_steps=args.warmup + args.steps, batch_size=args.batch_size,
              max_length=128, max_prompt_length=128, progress=False, threads=args.threads, lr=1e-5,
              dtype="bfloat16" if args.mode == "bf16" else "float32", lr_scheduler="constant",
              packing=args.packing == "true")
    if args.recipe == "dpo":
        cfg.ref = "precomputed" if args.mode == "precomputed" else "model"
    run(cfg)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    timed = rows[args.warmup:]
    seconds = timed[-1]["elapsed_s"] - rows[args.warmup - 1]["elapsed_s"]
    tokens = sum(r["tokens"] for r in timed)
    samples = len(timed) * args.batch_size
    n = n_params(assets / "model")
    peak = args.peak or matmul_peak_gflops(torch.bfloat16 if args.mode == "bf16" else torch.float32)
    print_json({"impl": "preftune", "recipe": args.recipe, "mode": args.mode, "tokens_per_s": tokens / seconds,
                "samples_per_s": samples / seconds, "peak_rss_mb": peak_rss_mb(), "params": n,
                "mfu": tokens / seconds * flops_per_token(args.recipe, args.mode, n) / (peak * 1e9), "peak_gflops": peak,
                "steps_timed": len(timed), "threads": args.threads, "packing": cfg.packing})


if __name__ == "__main__":
    main()
