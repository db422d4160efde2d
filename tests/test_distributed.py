"""Beyond one process (gloo on CPU, 2 processes through torchrun): FSDP2 equals one process on the same
global batch and DDP's weights, resumes exactly after kill -9 from its sharded checkpoints, works
with LoRA and PPO; gradient checkpointing changes no number; the work of a run is split across ranks
(one reference-cache writer, one KL coefficient)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_jsonl
from preftune.cli import main

PAIRS = [{"prompt": f"Q{i}: what is {i} plus one?", "completion": f" It is {i + 1}."} for i in range(8)]
PREFS = [{"prompt": f"the film {w}", "chosen": " was great fun.", "rejected": " was a dull boring mess."}
         for w in ("was", "and the cast", "yet", "but the plot was thin", "so", "with", "a", "lovely")]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(*argv, port: int, wait: bool = True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "preftune", *argv]
    if not wait:   # its own process group, so that kill -9 reaches torchrun's workers too
        return subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def losses(run):
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def weights(run):
    return load_file(run / "final" / "model.safetensors")


def args(recipe, model, data, out, *extra):
    return [recipe, "--model", model, "--data", data, "--output_dir", str(out), "--progress", "false", "--lr", "1e-3",
            "--seed", "3", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("recipe,rows,dtype,tol", [("sft", PAIRS, "float32", 1e-5), ("dpo", PREFS, "float32", 1e-5),
                                                   ("rm", PREFS, "float32", 1e-5),
                                                   ("sft", PAIRS, "bfloat16", 2e-3)])
def test_fsdp_two_processes_match_one(tiny_model, tmp_path, recipe, rows, dtype, tol):
    """Same global batch (2 × 2 against 4); bfloat16: FSDP's mixed precision (bf16 compute from
    float32 shards) against one process's bf16 weights over float32 masters, hence the tolerance
    (measured: 8e-7 SFT and 6e-8 DPO in float32, 5e-4 SFT in bfloat16)."""
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    common = ["--max_steps", "5", "--dtype", dtype, "--max_length", "64"]
    assert main(args(recipe, tiny_model, data, tmp_path / "one", *common, "--batch_size", "4")) == 0
    torchrun(*args(recipe, tiny_model, data, tmp_path / "fsdp", *common, "--batch_size", "2", "--fsdp"), port=29611)
    one, two = losses(tmp_path / "one"), losses(tmp_path / "fsdp")
    assert len(one) == len(two) == 5 and max(abs(a - b) for a, b in zip(one, two)) <= tol, (one, two)
    summary = json.loads((tmp_path / "fsdp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and len(summary["peak_memory_mb"]) == 2


@pytest.mark.slow
def test_fsdp_final_loads_in_transformers_and_equals_ddp(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM
    data = write_jsonl(tmp_path / "d.jsonl", PAIRS)
    common = ["--max_steps", "4", "--batch_size", "2", "--max_length", "64"]
    torchrun(*args("sft", tiny_model, data, tmp_path / "ddp", *common), port=29612)
    torchrun(*args("sft", tiny_model, data, tmp_path / "fsdp", *common, "--fsdp"), port=29613)
    a, b = weights(tmp_path / "ddp"), weights(tmp_path / "fsdp")
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    AutoModelForCausalLM.from_pretrained(tmp_path / "fsdp" / "final")


@pytest.mark.slow
def test_fsdp_kill_and_resume_matches_uninterrupted(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", PAIRS * 4)
    common = ["--max_steps", "40", "--save_steps", "10", "--batch_size", "2", "--max_length", "64", "--fsdp"]
    torchrun(*args("sft", tiny_model, data, tmp_path / "full", *common), port=29614)
    killed = tmp_path / "killed"
    proc = torchrun(*args("sft", tiny_model, data, killed, *common), port=29615, wait=False)
    first = killed / "checkpoints" / "step-10"
    deadline = time.time() + 120
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.exists() and not (killed / "final").exists(), "the run was not killed between checkpoint and end"
    assert (first / "shards" / ".metadata").exists()            # sharded through torch.distributed.checkpoint
    torchrun(*args("sft", tiny_model, data, killed, *common, "--resume"), port=29616)
    a, b = weights(tmp_path / "full"), weights(killed)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6


@pytest.mark.slow
def test_fsdp_with_lora_and_ppo(tiny_model, tiny_lm, tmp_path):
    from transformers import AutoModelForCausalLM
    data = write_jsonl(tmp_path / "p.jsonl", PREFS)
    torchrun(*args("dpo", tiny_model, data, tmp_path / "lora", "--max_steps", "2", "--batch_size", "2", "--lora_r",
                   "4", "--fsdp"), port=29617)
    AutoModelForCausalLM.from_pretrained(tmp_path / "lora" / "final")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p["prompt"]} for p in PREFS])
    torchrun("ppo", "--model", tiny_lm, "--data", prompts, "--output_dir", str(tmp_path / "ppo"), "--progress", "false",
             "--reward", "preftune.tasks.toy:great_share", "--rollout_batch_size", "4", "--batch_size", "4",
             "--max_steps", "2", "--max_new_tokens", "6", "--fsdp", "--eval_prompts", "4", port=29618)
    assert json.loads((tmp_path / "ppo" / "summary.json").read_text())["steps"] == 2


@pytest.mark.slow
def test_ranks_share_one_kl_coefficient_and_one_reference_cache(tiny_model, tiny_lm, tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p["prompt"]} for p in PREFS])
    torchrun("ppo", "--model", tiny_lm, "--data", prompts, "--output_dir", str(tmp_path / "ppo"), "--progress", "false",
             "--reward", "preftune.tasks.toy:great_share", "--rollout_batch_size", "4", "--batch_size", "4",
             "--max_steps", "6", "--max_new_tokens", "6", "--target_kl", "0.01", "--kl_horizon", "100",
             "--normalize_reward", "--eval_prompts", "0", port=29619)
    per_rank = json.loads((tmp_path / "ppo" / "summary.json").read_text())["kl_coef_per_rank"]
    assert per_rank[0] == per_rank[1] != 0.05                  # adapted, and the same on both ranks
    data = write_jsonl(tmp_path / "prefs.jsonl", PREFS[:7])     # an odd count: the ranks' shares differ
    common = ["--max_steps", "1", "--ref", "precomputed", "--eval_fraction", "0.3"]
    assert main(args("dpo", tiny_model, data, tmp_path / "one", *common, "--batch_size", "2")) == 0
    torchrun(*args("dpo", tiny_model, data, tmp_path / "two", *common, "--batch_size", "1"), port=29620)
    for name in ("train", "eval"):
        a = load_file(tmp_path / "one" / f"ref_logps_{name}.safetensors")["ref_logps"]
        b = load_file(tmp_path / "two" / f"ref_logps_{name}.safetensors")["ref_logps"]
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-6)
    assert not list((tmp_path / "two").glob(".ref_logps*"))    # one writer, written whole
    one = json.loads((tmp_path / "one" / "summary.json").read_text())["eval"]
    two = json.loads((tmp_path / "two" / "summary.json").read_text())["eval"]
    assert two["loss"] == pytest.approx(one["loss"], abs=1e-4)   # evaluation split across ranks, then reduced


def test_gradient_checkpointing_changes_no_number(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", PREFS)
    runs = {}
    for flag in ("false", "true"):
        out = tmp_path / flag
        assert main(args("dpo", tiny_model, data, out, "--max_steps", "4", "--batch_size", "4", "--lora_r", "4",
                         "--gradient_checkpointing", flag)) == 0
        runs[flag] = losses(out)
    assert max(abs(a - b) for a, b in zip(runs["false"], runs["true"])) <= 1e-6
