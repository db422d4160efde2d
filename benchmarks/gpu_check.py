"""The GPU check: every command on a randomly initialised Qwen2-0.5B-shaped model in bf16 on one GPU,
then DPO / reward model / SFT side by side with TRL 1.16 on the same GPU at the realistic length
spread (tokens/s, peak GPU memory, MFU against the GPU's measured bf16 matmul rate). Prints one JSON
object; nothing is downloaded (the model and data are built offline by make_assets.py).

    python benchmarks/gpu_check.py                     # on a machine with a GPU, trl importable
    python benchmarks/gpu_check.py --device cpu --shape tiny --steps 2   # a dry run of the script on CPU
Targets (issue 15): DPO bf16 ≥ 1.5× TRL's tokens/s at ≤ TRL's peak memory, MFU ≥ 40%.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from common import SHAPES, ensure_assets  # noqa: E402


def commands(assets: Path, work: Path) -> dict[str, list[str]]:
    """Every command, a few steps each, on the benchmark model and data."""
    model, prefs = str(assets / "model"), str(assets / "prefs.jsonl")
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": json.loads(x)["prompt"]}) + "\n"
                               for x in prefs_lines(assets)[:16]))
    train = ["--max_steps", "3", "--batch_size", "4", "--max_length", "512", "--max_prompt_length", "256",
             "--progress", "false"]
    return {
        "sft": ["--model", model, "--data", prefs, "--sft_on_chosen", *train],
        "rm": ["--model", model, "--data", prefs, *train],
        "dpo": ["--model", model, "--data", prefs, *train],
        "kto": ["--model", model, "--data", prefs, *train],
        "ppo": ["--model", model, "--data", str(prompts), "--reward", str(work / "rm" / "final"),
                "--rollout_batch_size", "8", "--max_new_tokens", "32", "--eval_prompts", "8", *train],
        "generate": ["--model", model, "--data", str(prompts), "--num_samples", "2", "--max_new_tokens", "32",
                     "--output", str(work / "samples.jsonl")],
        "label": ["--data", str(work / "samples.jsonl"), "--reward", str(work / "rm" / "final")],
        "score": ["--data", prefs, "--reward", str(work / "rm" / "final"), "--output", str(work / "scores.jsonl")],
        "eval": ["--policies", json.dumps({"dpo": str(work / "dpo" / "final")}), "--ref_model", model, "--data",
                 str(prompts), "--reward", str(work / "rm" / "final"), "--num_prompts", "8", "--max_new_tokens", "32"],
        "iterate": ["--model", model, "--data", str(prompts), "--reward", str(work / "rm" / "final"), "--rounds", "1",
                    "--num_samples", "2", "--max_new_tokens", "32", *train],
    }


def prefs_lines(assets: Path) -> list[str]:
    return (assets / "prefs.jsonl").read_text().splitlines()


def run_commands(args, assets: Path) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    rows = []
    for name, argv in commands(assets, work).items():
        out = [] if name in ("generate", "score") else ["--output_dir", str(work / name)]
        cmd = [sys.executable, "-m", "preftune", name, *argv, *out, "--device", args.device, "--dtype", "bfloat16"]
        start = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True)
        row = {"command": name, "ok": res.returncode == 0, "seconds": round(time.perf_counter() - start, 1)}
        if res.returncode:
            row["error"] = res.stderr.strip().splitlines()[-1][:500] if res.stderr.strip() else "no output"
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="gpu")
    ap.add_argument("--assets", default="/tmp/preftune-bench")
    ap.add_argument("--trl_python", default=sys.executable, help="a python that imports trl 1.16")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--cases", default="dpo:bf16,rm:bf16,sft:bf16")
    args = ap.parse_args()
    import torch
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here (for a dry run on CPU: --device cpu --shape tiny)")
    assets = ensure_assets(args)
    report = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "torch": torch.__version__, "shape": args.shape,
              "params": json.loads((assets / "stats.json").read_text())["params"],
              "commands": run_commands(args, assets)}
    compare = subprocess.run([sys.executable, str(HERE / "compare_trl.py"), "--trl_python", args.trl_python,
                              "--shape", args.shape, "--assets", args.assets, "--device", args.device, "--steps",
                              str(args.steps), "--warmup", "3", "--repeats", "1", "--batch_size", str(args.batch_size),
                              "--cases", args.cases], capture_output=True, text=True)
    if compare.returncode:
        report["trl_comparison_error"] = compare.stderr[-2000:]
    else:
        report["trl_comparison"] = json.loads(compare.stdout)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
