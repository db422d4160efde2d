"""One device and dtype policy for every command (CUDA availability mocked where needed), and PPO's
rollout scoring in micro-batches and without entropy when there is no entropy bonus."""
import json
import platform
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import write_jsonl
from preftune.cli import main
from preftune.runtime.device import resolve

PREFS = [{"prompt": "the film", "chosen": " was great fun.", "rejected": " was a dull boring mess."}] * 4


def test_device_policy(monkeypatch):
    assert resolve("auto") == torch.device("cpu") and resolve("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="--device cuda: no CUDA device is available"):
        resolve("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve("auto") == torch.device("cuda", 0) and resolve("cuda:3") == torch.device("cuda", 3)
    monkeypatch.setenv("LOCAL_RANK", "1")                      # under torchrun: the local rank's GPU
    assert resolve("auto") == resolve("cuda") == torch.device("cuda", 1)
    from preftune.config import SFTConfig
    with pytest.raises(ValueError, match="--device must be one of auto, cpu, cuda"):
        SFTConfig(device="gpu")


HEAP_OR_MMAP = """
import sys, torch
from preftune.runtime.device import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
tensor = torch.empty(24 << 20, dtype=torch.uint8)
address = tensor.data_ptr()
for line in open("/proc/self/maps"):
    span, *fields = line.split()
    low, high = (int(v, 16) for v in span.split("-"))
    if low <= address < high:
        print(fields[4] if len(fields) == 5 else "mmap")
"""


@pytest.mark.skipif(not Path("/proc/self/maps").exists() or platform.libc_ver()[0] != "glibc",
                    reason="glibc's malloc on Linux")
def test_freed_memory_is_kept_for_reuse():
    """A 24 MiB tensor comes from glibc's own mmap (handed back to the kernel when freed) by default,
    from the heap (kept for the next step's tensors) once ``keep_freed_memory`` has run."""
    where = {mode: subprocess.run([sys.executable, "-c", HEAP_OR_MMAP, mode], capture_output=True, text=True,
                                  check=True).stdout.strip() for mode in ("default", "keep")}
    assert where == {"default": "mmap", "keep": "[heap]"}


def commands(tiny_model, tiny_lm, tmp_path):
    prefs = write_jsonl(tmp_path / "prefs.jsonl", PREFS)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "the film"}] * 4)
    samples = write_jsonl(tmp_path / "samples.jsonl", [{"prompt_index": 0, "prompt": "the film", "completion": c}
                                                       for c in (" was great.", " was dull.")])
    rm = tmp_path / "rm-model"
    if not rm.exists():
        assert main(["rm", "--model", tiny_model, "--data", prefs, "--output_dir", str(tmp_path / "rm"),
                     "--max_steps", "1", "--progress", "false"]) == 0
        (tmp_path / "rm" / "final").rename(rm)
    train = ["--max_steps", "1", "--batch_size", "2", "--progress", "false"]
    return {
        "sft": ["--model", tiny_model, "--data", prefs, "--sft_on_chosen", *train],
        "rm": ["--model", tiny_model, "--data", prefs, *train],
        "dpo": ["--model", tiny_model, "--data", prefs, *train],
        "kto": ["--model", tiny_model, "--data", prefs, *train],
        "ppo": ["--model", tiny_lm, "--data", prompts, "--reward", str(rm), "--rollout_batch_size", "2",
                "--max_new_tokens", "4", "--eval_prompts", "2", *train],
        "generate": ["--model", tiny_lm, "--data", prompts, "--max_new_tokens", "4",
                     "--output", str(tmp_path / "gen.jsonl")],
        "label": ["--data", samples, "--reward", str(rm)],
        "score": ["--data", prefs, "--reward", str(rm), "--output", str(tmp_path / "scores.jsonl")],
        "eval": ["--policies", json.dumps({"dpo": tiny_lm}), "--ref_model", tiny_lm, "--data", prompts, "--reward",
                 "preftune.tasks.toy:great_share", "--num_prompts", "2", "--max_new_tokens", "4"],
        "iterate": ["--model", tiny_lm, "--data", prompts, "--reward", "preftune.tasks.toy:great_share", "--rounds",
                    "1", "--num_samples", "2", "--max_new_tokens", "4", *train],
    }


@pytest.mark.slow
def test_every_command_runs_with_device_cpu(tiny_model, tiny_lm, tmp_path):
    for command, argv in commands(tiny_model, tiny_lm, tmp_path).items():
        out = ["--output_dir", str(tmp_path / f"out-{command}")] if command not in ("generate", "score") else []
        assert main([command, *argv, *out, "--device", "cpu"]) == 0, command


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_command_loads_its_models_onto_the_requested_device(tiny_model, tiny_lm, tmp_path, monkeypatch, dtype):
    """CUDA mocked: each model is asked of transformers straight onto cuda:0 (no host copy first);
    trained models in float32 (the bf16 copies come from the trainer), frozen ones in the compute
    dtype. The run then stops at its first real CUDA use."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    argvs = commands(tiny_model, tiny_lm, tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    loads = []
    for cls in (AutoModelForCausalLM, AutoModelForSequenceClassification):
        real = cls.from_pretrained.__func__

        def spy(klass, name, *args, _real=real, **kwargs):
            loads.append((str(name), kwargs.get("device_map"), kwargs.get("dtype")))
            return _real(klass, name, *args, **{**kwargs, "device_map": None})
        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    compute = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    frozen_only = ("generate", "label", "score", "eval")
    for command, argv in argvs.items():
        loads.clear()
        out = ["--output_dir", str(tmp_path / f"cuda-{command}")] if command not in ("generate", "score") else []
        main([command, *argv, *out, "--dtype", dtype])
        assert loads, command
        assert {device for _, device, _ in loads} == {"cuda:0"}, (command, loads)
        if command in frozen_only:
            assert {d for _, _, d in loads} == {compute}, (command, loads)
        elif command in ("dpo", "kto", "ppo"):   # trained models in float32, frozen ones (reference, reward) in the
            assert {d for _, _, d in loads} == {torch.float32, compute}, (command, loads)   # compute dtype


def test_micro_batched_ppo_scoring_equals_one_batch(tiny_lm):
    from preftune.data import collate
    from preftune.models import CausalLMScorer, load_causal_lm, load_reward_model
    from preftune.recipes.ppo import ActorCritic, Rollouts
    torch.manual_seed(0)
    model = ActorCritic(load_causal_lm(tiny_lm), load_reward_model(tiny_lm, pad_token_id=0)).eval()
    ref = CausalLMScorer(load_causal_lm(tiny_lm, trainable=False))
    seqs = [([1] + torch.randint(3, 300, (int(n),)).tolist(), torch.randint(3, 300, (int(m),)).tolist())
            for n, m in torch.randint(1, 12, (7, 2))]
    batch = collate(seqs, 0)
    whole, micro = (Rollouts.score(SimpleNamespace(cfg=SimpleNamespace(forward_batch_size=size), model=model, ref=ref),
                                   batch) for size in (64, 3))
    for a, b in zip(whole, micro):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("ent_coef", ["0", "0.01"])
def test_no_entropy_without_an_entropy_bonus(tiny_lm, tmp_path, monkeypatch, ent_coef):
    from preftune.models import CausalLMScorer
    asked = []
    real = CausalLMScorer.forward

    def spy(self, *args, with_entropy=False, **kwargs):
        out = real(self, *args, with_entropy=with_entropy, **kwargs)
        asked.append(with_entropy and out.entropy is not None)
        return out
    monkeypatch.setattr(CausalLMScorer, "forward", spy)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "the film"}] * 4)
    assert main(["ppo", "--model", tiny_lm, "--data", prompts, "--reward", "preftune.tasks.toy:great_share",
                 "--output_dir", str(tmp_path / "ppo"), "--rollout_batch_size", "4", "--batch_size", "4",
                 "--max_steps", "2", "--max_new_tokens", "4", "--eval_prompts", "0", "--ent_coef", ent_coef,
                 "--progress", "false"]) == 0
    logged = json.loads((tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()[0])
    assert any(asked) == (ent_coef != "0") and ("policy/entropy" in logged) == (ent_coef != "0")
