"""Peak memory per process, measured: one process (with and without gradient checkpointing), two
processes with DDP, two with FSDP2 — a recipe on a benchmark shape, the same global batch in each.
Prints one JSON object; each configuration's line goes to stderr as it finishes.

    python benchmarks/distributed_memory.py --shape realistic --recipe sft
Peak memory is what ``summary.json`` reports per rank (peak RSS on CPU, max_memory_allocated on
CUDA); on CPU it includes the interpreter and libraries (~0.5 GB a process).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import SHAPES, ensure_assets  # noqa: E402

CONFIGS = [("1 process", 1, []), ("1 process, gradient checkpointing", 1, ["--gradient_checkpointing"]),
           ("2 processes, DDP", 2, []), ("2 processes, FSDP2", 2, ["--fsdp"]),
           ("2 processes, FSDP2 + gradient checkpointing", 2, ["--fsdp", "--gradient_checkpointing"])]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), default="realistic")
    ap.add_argument("--recipe", choices=["sft", "dpo", "rm"], default="sft")
    ap.add_argument("--assets", default="/tmp/preftune-bench")
    ap.add_argument("--batch_size", type=int, default=8, help="global batch")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    assets = ensure_assets(args)
    stats = json.loads((assets / "stats.json").read_text())
    data = assets / ("sft.jsonl" if args.recipe == "sft" else "prefs.jsonl")
    results = []
    for name, procs, extra in CONFIGS:
        out = Path(tempfile.mkdtemp(prefix="bench-mem-"))
        argv = ["-m", "preftune", args.recipe, "--model", str(assets / "model"), "--data", str(data),
                "--output_dir", str(out), "--max_steps", str(args.steps), "--batch_size",
                str(args.batch_size // procs), "--max_length", str(stats["max_length"]), "--max_prompt_length",
                str(stats["max_prompt_length"]), "--dtype", args.dtype, "--progress", "false",
                "--lr_scheduler", "constant", *extra]
        env = {**os.environ, "OMP_NUM_THREADS": str(2 // procs)}
        launcher = [sys.executable] if procs == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                         "--nproc_per_node", str(procs), "--master_port", "29661"]
        res = subprocess.run(launcher + argv + (["--threads", "2"] if procs == 1 else []), env=env,
                             capture_output=True, text=True)
        if res.returncode:
            raise RuntimeError(f"{name} failed:\n{res.stderr[-3000:]}")
        summary = json.loads((out / "summary.json").read_text())
        row = {"config": name, "peak_memory_mb_per_rank": [round(x) for x in summary["peak_memory_mb"]],
               "tokens_per_s": round(summary["tokens_per_s"], 1)}
        results.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps({"shape": args.shape, "recipe": args.recipe, "params": stats["params"], "dtype": args.dtype,
                      "global_batch": args.batch_size, "steps": args.steps, "results": results}, indent=1))


if __name__ == "__main__":
    main()
