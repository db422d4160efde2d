"""SFT end to end on the tiny model: memorisation, reload with plain transformers, kill + resume, DDP."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_jsonl
from preftune.cli import main

PAIRS = [{"prompt": f"Q{i}: what is {i} plus one?", "completion": f" It is {i + 1}."} for i in range(8)]


def metrics(run: Path):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def sft(tiny_model, data, out, *extra):
    return ["sft", "--model", tiny_model, "--data", data, "--output_dir", str(out), "--progress", "false",
            "--lr", "3e-3", "--batch_size", "4", "--max_length", "64", *extra]


@pytest.mark.slow
def test_sft_memorises_and_final_reloads(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", PAIRS)
    out = tmp_path / "run"
    assert main(sft(tiny_model, data, out, "--max_steps", "150", "--warmup_steps", "10")) == 0
    m = metrics(out)
    assert m[-1]["loss"] <= 0.2 * m[0]["loss"], (m[0]["loss"], m[-1]["loss"])
    for name in ("config.yaml", "metrics.jsonl", "summary.json"):
        assert (out / name).exists()

    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    tok = AutoTokenizer.from_pretrained(out / "final")
    hits = 0
    for pair in PAIRS:
        ids = torch.tensor([[tok.bos_token_id] + tok(pair["prompt"], add_special_tokens=False)["input_ids"]])
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                             pad_token_id=tok.pad_token_id)
        hits += tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True) == pair["completion"]
    assert hits >= 1, "greedy generation reproduced no training completion"


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted_run(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", PAIRS * 4)
    steps = ["--max_steps", "120", "--save_steps", "30", "--seed", "7"]
    full = tmp_path / "full"
    assert main(sft(tiny_model, data, full, *steps)) == 0

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "preftune", *sft(tiny_model, data, killed, *steps)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = killed / "checkpoints" / "step-30"
    deadline = time.time() + 120
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists() and not (killed / "final").exists(), "the run was not killed between checkpoint and end"

    assert main(sft(tiny_model, data, killed, *steps, "--resume", "true")) == 0
    a = load_file(full / "final" / "model.safetensors")
    b = load_file(killed / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    steps_logged = [r["step"] for r in metrics(killed)]
    assert steps_logged == sorted(set(steps_logged)) and steps_logged[-1] == 120


@pytest.mark.slow
@pytest.mark.parametrize("dtype,per_process,tol", [
    ("float32", ["--batch_size", "2"], 1e-5),
    # bf16: gradients move into float32 sums after every micro-batch, so DDP reduces each one;
    # bf16 rounding differs between batch shapes (≤ 5e-4 seen in one process), hence the looser
    # tolerance; DDP hooks detached from the parameters showed up as 2e-2 by step 4
    ("bfloat16", ["--batch_size", "1", "--grad_accum", "2"], 2e-3)])
def test_ddp_two_processes_match_one(tiny_model, tmp_path, dtype, per_process, tol):
    data = write_jsonl(tmp_path / "sft.jsonl", PAIRS * 2)
    common = ["--max_steps", "6", "--seed", "3", "--lr", "1e-3", "--dtype", dtype]
    one = tmp_path / "one"
    assert main(sft(tiny_model, data, one, *common, "--batch_size", "4")) == 0
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "preftune", *sft(tiny_model, data, two, *common), *per_process]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = metrics(one), metrics(two)
    assert len(a) == len(b) == 6
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) <= tol, (x["loss"], y["loss"])
    assert json.loads((two / "summary.json").read_text())["world_size"] == 2
