"""preftune against TRL, mode for mode, measured side by side in one run (alternating, so machine
noise hits both). Prints one JSON object with each side's figures and the ratios.

    .venv/bin/python benchmarks/compare_trl.py --trl_python /tmp/trl-venv/bin/python
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


def run(python: str, script: str, recipe: str, mode: str, args) -> dict:
    cmd = [python, str(HERE / script), "--recipe", recipe, "--mode", mode, "--assets", args.assets,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--peak", str(args.peak[mode == "bf16"])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trl_python", required=True)
    ap.add_argument("--assets", default="/tmp/preftune-bench")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cases", default=",".join(f"{r}:{m}" for r, m in CASES))
    args = ap.parse_args()
    if not (Path(args.assets) / "model").exists():
        subprocess.run([sys.executable, str(HERE / "make_assets.py"), "--out", args.assets], check=True)
    sys.path.insert(0, str(HERE))
    import torch
    from common import matmul_peak_gflops
    torch.set_num_threads(2)
    args.peak = (matmul_peak_gflops(torch.float32), matmul_peak_gflops(torch.bfloat16))
    results = []
    for case in args.cases.split(","):
        recipe, mode = case.split(":")
        ours, theirs = [], []
        for _ in range(args.repeats):
            theirs.append(run(args.trl_python, "trl_baseline.py", recipe, mode, args))
            ours.append(run(sys.executable, "throughput.py", recipe, mode, args))
        med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
        row = {"recipe": recipe, "mode": mode,
               "preftune": {k: med(ours, k) for k in ("tokens_per_s", "samples_per_s", "peak_rss_mb", "mfu")},
               "trl": {k: med(theirs, k) for k in ("tokens_per_s", "samples_per_s", "peak_rss_mb", "mfu")}}
        row["speedup"] = row["preftune"]["samples_per_s"] / row["trl"]["samples_per_s"]
        row["rss_ratio"] = row["preftune"]["peak_rss_mb"] / row["trl"]["peak_rss_mb"]
        results.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps({"matmul_peak_gflops": {"fp32": args.peak[0], "bf16": args.peak[1]}, "results": results}, indent=1))


if __name__ == "__main__":
    main()
