"""preftune against TRL, mode for mode, measured side by side in one run (alternating, so machine
noise hits both). Prints one JSON object with each side's figures (medians over repeats) and the
ratios; each case's row goes to stderr as it finishes.

    .venv/bin/python benchmarks/compare_trl.py --trl_python .bench/trl-venv/bin/python --shape realistic
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
CASES = [("dpo", "fp32"), ("dpo", "bf16"), ("dpo", "precomputed"), ("rm", "fp32"), ("rm", "bf16"), ("sft", "fp32")]
KEYS = ("tokens_per_s", "samples_per_s", "peak_memory_mb", "mfu")


def run(python: str, script: str, recipe: str, mode: str, args) -> dict:
    cmd = [python, str(HERE / script), "--recipe", recipe, "--mode", mode, "--shape", args.shape, "--assets",
           args.assets, "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch_size", str(args.batch_size),
           "--peak", str(args.peak[mode == "bf16"]), "--device", args.device]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trl_python", required=True)
    ap.add_argument("--shape", default="realistic")
    ap.add_argument("--assets", default="/tmp/preftune-bench")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cases", default=",".join(f"{r}:{m}" for r, m in CASES))
    ap.add_argument("--device", default="cpu", help="cpu or cuda (peak memory is then GPU memory)")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    import torch
    from common import ensure_assets, matmul_peak_gflops
    stats = json.loads((ensure_assets(args) / "stats.json").read_text())
    torch.set_num_threads(2)
    args.peak = (matmul_peak_gflops(torch.float32, device=args.device),
                 matmul_peak_gflops(torch.bfloat16, device=args.device))
    results = []
    for case in args.cases.split(","):
        recipe, mode = case.split(":")
        ours, theirs = [], []
        for _ in range(args.repeats):
            theirs.append(run(args.trl_python, "trl_baseline.py", recipe, mode, args))
            ours.append(run(sys.executable, "throughput.py", recipe, mode, args))
        row = {"recipe": recipe, "mode": mode,
               "preftune": {k: statistics.median(r[k] for r in ours) for k in KEYS},
               "trl": {k: statistics.median(r[k] for r in theirs) for k in KEYS}}
        row["speedup"] = row["preftune"]["tokens_per_s"] / row["trl"]["tokens_per_s"]
        row["memory_ratio"] = row["preftune"]["peak_memory_mb"] / row["trl"]["peak_memory_mb"]
        results.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps({"shape": args.shape, "device": args.device, "params": stats["params"],
                      "batch_size": args.batch_size,
                      "sequence_length": stats["per_sample"]["dpo"]["sequence_length"], "steps": args.steps,
                      "repeats": args.repeats, "matmul_peak_gflops": {"fp32": args.peak[0], "bf16": args.peak[1]},
                      "results": results}, indent=1))


if __name__ == "__main__":
    main()
