"""The Python API: objects in (models, tokenizers, rows, callables), a result out, nothing written without a
folder; and the composed commands (iterate, dpo --sft_on_chosen) building each stage's config explicitly."""
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import write_jsonl

import preftune

PAIRS = [{"prompt": "the film was", "chosen": " great fun and superb.", "rejected": " dull and awful."},
         {"prompt": "the cast was", "chosen": " superb and warm.", "rejected": " boring and thin."},
         {"prompt": "the plot was", "chosen": " clever and bright.", "rejected": " slow and flat."},
         {"prompt": "the music was", "chosen": " lovely and bold.", "rejected": " weak and messy."}]


def snapshot(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before: dict, model) -> bool:
    return any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_readme_python_example_runs_as_written(tmp_path, monkeypatch):
    """The README's "Python API" block, executed as it is written there."""
    block = re.search(r"## Python API.*?```python\n(.*?)```", (Path(__file__).parents[1] / "README.md").read_text(),
                      re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["result"].summary["steps"] == 10 and namespace["samples"][0]["completion"]


def test_dpo_on_a_model_object_and_rows_trains_it_and_writes_nothing(tiny_model, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    monkeypatch.chdir(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    before = snapshot(model)
    logged = []
    result = preftune.dpo(model=model, data=PAIRS, tokenizer=tokenizer, output_dir=None, max_steps=2, batch_size=2,
                          lr=1e-3, progress=False, on_log=logged.append)
    assert result.model is model and changed(before, result.model)
    assert result.tokenizer is tokenizer and result.summary["steps"] == 2
    assert [m["step"] for m in result.metrics] == [1, 2] and logged == result.metrics
    assert "rewards/margins" in result.metrics[-1]
    assert list(tmp_path.iterdir()) == []   # no run folder, no runs/, nothing


def test_dpo_from_a_path_with_a_dataset_and_a_folder_keeps_the_run_folder_contract(tiny_model, tmp_path):
    import datasets
    from transformers import AutoModelForCausalLM
    out = tmp_path / "run"
    result = preftune.dpo(tiny_model, datasets.Dataset.from_list(PAIRS), output_dir=str(out), max_steps=2,
                          batch_size=2, save_steps=1, lr_scheduler="constant", progress=False)
    assert {"config.yaml", "metrics.jsonl", "summary.json", "final", "checkpoints"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "summary.json").read_text())["steps"] == 2 == result.summary["steps"]
    reloaded = AutoModelForCausalLM.from_pretrained(out / "final")
    for k, v in reloaded.state_dict().items():
        torch.testing.assert_close(v, result.model.state_dict()[k])
    with pytest.raises(ValueError, match="holds a run"):   # the folder is guarded as on the command line
        preftune.dpo(tiny_model, PAIRS, output_dir=str(out), max_steps=2, progress=False)
    resumed = preftune.dpo(tiny_model, PAIRS, output_dir=str(out), max_steps=3, batch_size=2, save_steps=1,
                           lr_scheduler="constant", resume=True, progress=False)
    assert resumed.summary["steps"] == 3 and resumed.summary["steps_this_run"] == 1


@pytest.mark.parametrize("options, message", [
    ({"beta": 0}, "--beta must be > 0"),
    ({"loss": "nope"}, "--loss must be one of"),
    ({"gamma": 0.3}, "did you mean --simpo_gamma"),
    ({"save_steps": 5}, "--save_steps needs --output_dir"),
    ({"resume": True}, "--resume needs --output_dir"),
])
def test_a_bad_option_raises_a_value_error_naming_it(tiny_model, options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        preftune.dpo(tiny_model, PAIRS, max_steps=1, **options)


def test_bad_in_memory_rows_are_named_by_index_and_field_or_skipped(tiny_model):
    from preftune.data import DataError
    rows = PAIRS[:2] + [{"prompt": "the end was", "chosen": " good."}] + PAIRS[2:]
    with pytest.raises(DataError, match=r"data, index 2, field 'rejected'"):
        preftune.dpo(tiny_model, rows, max_steps=1, progress=False)
    result = preftune.dpo(tiny_model, rows, max_steps=1, batch_size=2, on_bad_row="skip", progress=False)
    assert result.summary["skipped_rows"] == 1 and result.summary["train_examples"] == 4
    with pytest.raises(DataError, match="data, index 1: expected a dict"):
        preftune.sft(tiny_model, [{"text": "a b c"}, "not a row"], max_steps=1)


def test_a_peft_model_trains_its_adapters_against_itself_with_adapters_off(tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_alpha=8))
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "lora" not in k}
    result = preftune.dpo(model, PAIRS, tokenizer=tiny_model, max_steps=2, batch_size=2, lr=1e-2, progress=False)
    assert result.model is model
    lora = {k: v for k, v in model.state_dict().items() if "lora_B" in k}
    assert lora and all(v.abs().sum() > 0 for v in lora.values())   # B starts at zero: it moved
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in frozen.items())
    first = result.metrics[0]   # step 1: the policy is its reference exactly
    assert first["rewards/chosen"] == 0 and first["rewards/rejected"] == 0


def test_ppo_with_a_closure_reward_and_a_model_object(tiny_lm, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM
    monkeypatch.chdir(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    before = snapshot(model)
    seen = []

    def judge(prompts, completions):   # closes over state, as a judge client would
        seen.extend(completions)
        return [float(c.count("great")) for c in completions]
    result = preftune.ppo(model, [{"prompt": "the film"}] * 8, reward=judge, algo="grpo", num_samples=4,
                          rollout_batch_size=2, batch_size=4, max_steps=8, max_new_tokens=6, eval_prompts=0,
                          num_iterations=2, progress=False)   # 2 × 8 samples / 4 per update = 4 updates per rollout
    assert result.model is model and changed(before, model) and len(seen) == 2 * (2 * 4)
    assert list(tmp_path.iterdir()) == []


def test_generate_score_and_evaluate_take_objects(tiny_lm):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    requires = [p.requires_grad for p in model.parameters()]
    rows = preftune.generate(model, [{"prompt": "the film"}, {"prompt": "a dull"}], tokenizer=tokenizer,
                             num_samples=2, max_new_tokens=5, temperature=0)
    assert [r["prompt_index"] for r in rows] == [0, 0, 1, 1] and rows[0]["completion"] == rows[1]["completion"]
    assert [p.requires_grad for p in model.parameters()] == requires and model.training is False

    scored = preftune.score(lambda p, c: [float(len(x)) for x in c],
                            [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    assert [s["reward"] for s in scored] == [float(len(r["completion"])) for r in rows]
    table = preftune.evaluate({"same": model}, model, [{"prompt": "the film"}] * 3,
                              lambda p, c: [1.0] * len(c), tokenizer=tokenizer, max_new_tokens=4, num_prompts=3)
    assert [r["name"] for r in table] == ["sft", "same"] and table[1]["kl"] == pytest.approx(0, abs=1e-6)


def test_the_api_leaves_process_wide_settings_alone(tiny_model, monkeypatch):
    from preftune.runtime import device
    monkeypatch.setattr(device, "keep_freed_memory", lambda: pytest.fail("the allocator was changed"))
    threads = torch.get_num_threads()
    preftune.sft(tiny_model, [{"text": "the film was great fun"}] * 4, max_steps=1, batch_size=2, progress=False)
    assert torch.get_num_threads() == threads
    preftune.sft(tiny_model, [{"text": "the film was great fun"}] * 4, max_steps=1, batch_size=2, progress=False,
                 threads=1)   # asked for
    assert torch.get_num_threads() == 1
    torch.set_num_threads(threads)


def test_on_step_end_runs_after_every_optimizer_step(tiny_model):
    from preftune.config import SFTConfig
    from preftune.recipes import sft
    from preftune.recipes.common import Inputs
    from preftune.train.setup import start
    cfg = SFTConfig(model=tiny_model, output_dir=None, max_steps=3, batch_size=2, progress=False)
    setup = start(cfg)
    parts = sft.load_sft(setup, Inputs(data=[{"text": "a b c d"}] * 4))
    trainer = sft.build_sft(setup, parts)
    steps = []
    trainer.on_step_end.append(lambda step, metrics: steps.append((step, "grad_norm" in metrics)))
    trainer.fit()
    assert steps == [(1, True), (2, True), (3, True)]


def test_dpo_sft_on_chosen_in_memory_trains_the_sft_phase_first(tiny_model):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    before = snapshot(model)
    result = preftune.dpo(model, PAIRS, tokenizer=tiny_model, sft_on_chosen=True, sft_steps=3, max_steps=1,
                          batch_size=2, progress=False)
    assert result.model is model and changed(before, model)
    # DPO starts from π_SFT as its own reference: the first step's implicit rewards are 0
    assert result.metrics[0]["rewards/chosen"] == pytest.approx(0, abs=1e-6)


def test_sft_phase_and_iterate_stages_get_their_own_commands_defaults():
    from preftune.config import DPOConfig, PPOConfig, RMConfig, SFTConfig
    from preftune.recipes.dpo import sft_phase
    from preftune.recipes.iterate import IterateConfig
    dpo = DPOConfig(model="m", data="d", output_dir="o", sft_on_chosen=True, lr=3e-6, batch_size=4, max_length=64,
                    simpo_gamma=0.9, lora_r=8)
    sft = sft_phase(dpo)
    assert (sft.lr, sft.batch_size, sft.max_length, sft.lora_r, sft.output_dir) == (SFTConfig.lr, 4, 64, 0, "o/sft")
    it = IterateConfig(model="m", data="d", reward="r", method="rm_ppo", lr=5e-4, ppo={"kl_coef": 0.2},
                       dpo={"simpo_gamma": 0.9})
    ppo = it.stage("ppo", model="p", data="d", output_dir="o", reward="rm", max_steps=8)
    assert (ppo.gamma, ppo.lam, ppo.lr, ppo.kl_coef, ppo.lr_scheduler, ppo.max_length) == \
        (1.0, 0.95, 5e-4, 0.2, "constant", PPOConfig.max_length)
    rm = it.stage("rm", model="m", data="d", output_dir="o", max_steps=8)
    assert (rm.lr, rm.max_length) == (5e-4, RMConfig.max_length)
    with pytest.raises(ValueError, match="--ppo: gamma_x not an option of preftune ppo"):
        IterateConfig(ppo={"gamma_x": 1})
    with pytest.raises(ValueError, match="--dpo: model set by the pipeline"):
        IterateConfig(dpo={"model": "x"})


def test_iterate_hints_at_a_stage_option(capsys):
    from preftune.cli import main
    for argv, hint in ((["iterate", "--beta", "0.3"], "--dpo '{beta: …}'"),
                       (["dpo", "--gamma", "0.3"], "did you mean --simpo_gamma"),
                       (["label", "--temperature", "0.3"], "did you mean --label_temperature")):
        with pytest.raises(SystemExit) as exit:
            main(argv)
        assert exit.value.code == 2 and hint in capsys.readouterr().err


@pytest.mark.slow
def test_iterated_rm_ppo_trains_ppo_with_its_own_defaults_and_raises_the_reward(tiny_lm, tmp_path):
    """Each round's PPO stage runs with PPO's discount 1 and λ 0.95 (the DPO-based config gave it γ = 0.5,
    SimPO's margin, before), and the ground-truth reward of the samples rises over the rounds."""
    from preftune.cli import main
    from conftest import corpus
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": " ".join(t.split()[:2])} for t in corpus(200)])
    out = tmp_path / "it"
    assert main(["iterate", "--model", tiny_lm, "--data", prompts, "--output_dir", str(out), "--reward",
                 "preftune.tasks.toy:great_share", "--rounds", "2", "--method", "rm_ppo", "--max_new_tokens", "10",
                 "--batch_size", "16", "--progress", "false", "--max_length", "48", "--rm_steps", "60",
                 "--ppo_steps", "48", "--lr", "7e-4", "--ppo", "{rollout_batch_size: 32, kl_coef: 0.02}"]) == 0
    import yaml
    for r in range(2):
        ppo = yaml.safe_load((out / f"round-{r}" / "ppo" / "config.yaml").read_text())
        assert (ppo["gamma"], ppo["lam"], ppo["lr"], ppo["lr_scheduler"], ppo["kl_coef"]) == \
            (1.0, 0.95, 7e-4, "constant", 0.02)
    rounds = json.loads((out / "rounds.json").read_text())
    assert rounds[1]["mean_reward"] >= 1.5 * rounds[0]["mean_reward"], rounds
