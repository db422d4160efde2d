"""Reward model and DPO family on a learnable synthetic preference: chosen completions praise,
rejected ones complain."""
import json
import random

import pytest
import torch

import preftune
from conftest import WORDS, write_jsonl
from preftune.cli import main

GOOD = ["great fun", "superb", "lovely music", "a warm heart"]
BAD = ["awful acting", "a dull boring mess", "thin and slow", "boring"]


def pairs(n, seed=0):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5)))
        filler = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 3)))
        rows.append({"prompt": prompt, "chosen": f" {filler} and it was {rng.choice(GOOD)}.",
                     "rejected": f" {filler} and it was {rng.choice(BAD)}."})
    return rows


def rankings(n, seed=0):
    rng = random.Random(seed)
    rows = []
    for p in pairs(n, seed):
        mid = f" it was {rng.choice(WORDS)}."
        order = [0, 1, 2]
        rng.shuffle(order)
        comps = [None] * 3
        for rank, text in zip(order, [p["chosen"], mid, p["rejected"]]):
            comps[rank] = text
        rows.append({"prompt": p["prompt"], "completions": comps,
                     "ranking": sorted(range(3), key=lambda i: order.index(i))})
    return rows


def metrics(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


COMMON = dict(progress=False, eval_fraction=0.2, batch_size=8, max_length=48)


def common(tiny_model, data, out, *extra):
    return ["--model", tiny_model, "--data", data, "--output_dir", str(out), "--progress", "false",
            "--eval_fraction", "0.2", "--batch_size", "8", "--max_length", "48", *extra]


@pytest.mark.slow
def test_reward_model_learns_preference_and_reloads(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", pairs(150))
    out = tmp_path / "rm"
    assert main(["rm", *common(tiny_model, data, out, "--max_steps", "60", "--lr", "1e-3")]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval"]["accuracy"] >= 0.9, summary["eval"]
    from transformers import AutoModelForSequenceClassification
    rm = AutoModelForSequenceClassification.from_pretrained(out / "final", num_labels=1)
    assert rm.config.num_labels == 1

    from preftune.rewards import RewardModel
    scorer = RewardModel(str(out / "final"))
    good, bad = scorer(["the film", "the film"], [" and it was superb.", " and it was awful acting."])
    assert good > bad


@pytest.mark.slow
def test_reward_model_on_rankings(tiny_model, tmp_path):
    for objective in ("pairs", "best_of_n"):
        result = preftune.rm(tiny_model, rankings(60), max_steps=5, ranking_objective=objective, **COMMON)
        assert all(torch.isfinite(torch.tensor(m["loss"])) for m in result.metrics)


def test_reward_read_at_last_token_for_left_and_right_padding(tiny_model):
    from preftune.models import RewardScorer, load_reward_model
    torch.manual_seed(0)
    model = load_reward_model(tiny_model, trainable=False, pad_token_id=0)
    scorer = RewardScorer(model)
    rows = [[1, 10, 11, 12, 13, 2], [1, 20, 21, 2]]
    right = torch.tensor([rows[0], rows[1] + [0, 0]])
    left = torch.tensor([rows[0], [0, 0] + rows[1]])
    mask_r, mask_l = (right != 0).long(), (left != 0).long()
    alone = scorer(torch.tensor([rows[1]]), torch.ones(1, 4, dtype=torch.long))
    a, b = scorer(right, mask_r), scorer(left, mask_l)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.testing.assert_close(a[1:], alone, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_dpo_learns_preference_and_margin_grows(tiny_model, tmp_path):
    result = preftune.dpo(tiny_model, pairs(150), max_steps=40, lr=1e-3, beta=0.1, eval_steps=10, **COMMON)
    m, summary = result.metrics, result.summary
    assert summary["eval"]["rewards/accuracies"] >= 0.9, summary["eval"]
    margins = [r["eval/rewards/margins"] for r in m if "eval/rewards/margins" in r]
    assert margins[-1] > margins[0] > 0
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                "logps/rejected"):
        assert key in m[0]


@pytest.mark.slow
def test_precomputed_reference_matches_live(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", pairs(40))
    curves = {}
    schedule = ["--lr", "1e-3", "--lr_scheduler", "constant", "--save_steps", "3"]
    for ref in ("model", "precomputed"):
        out = tmp_path / ref
        assert main(["dpo", *common(tiny_model, data, out, "--max_steps", "6", "--ref", ref, *schedule)]) == 0
        curves[ref] = [r["loss"] for r in metrics(out)]
    assert max(abs(a - b) for a, b in zip(curves["model"], curves["precomputed"])) <= 1e-5
    assert (tmp_path / "precomputed" / "ref_logps_train.safetensors").exists()
    # resuming reuses the cache rather than recomputing
    before = (tmp_path / "precomputed" / "ref_logps_train.safetensors").stat().st_mtime_ns
    assert main(["dpo", *common(tiny_model, data, tmp_path / "precomputed", "--max_steps", "8", *schedule,
                                "--ref", "precomputed", "--resume", "true")]) == 0
    assert (tmp_path / "precomputed" / "ref_logps_train.safetensors").stat().st_mtime_ns == before


@pytest.mark.slow
@pytest.mark.parametrize("loss,extra", [("ipo", {}), ("simpo", {"ref": "none", "beta": 2.0}), ("hinge", {}),
                                        ("dpop", {}), ("orpo", {"ref": "none"}), ("sigmoid", {"label_smoothing": 0.1})])
def test_dpo_family_runs(tiny_model, tmp_path, loss, extra):
    result = preftune.dpo(tiny_model, pairs(30), max_steps=3, loss=loss, **extra, **COMMON)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in result.metrics)


@pytest.mark.slow
def test_plackett_luce_on_rankings_lora_reference_and_sft_first(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "rank.jsonl", rankings(30))
    out = tmp_path / "pl"
    assert main(["dpo", *common(tiny_model, data, out, "--max_steps", "3")]) == 0
    assert json.loads((out / "summary.json").read_text())["dataset_kind"] == "ranking"

    prefs = write_jsonl(tmp_path / "prefs.jsonl", pairs(30))
    out = tmp_path / "lora"
    assert main(["dpo", *common(tiny_model, prefs, out, "--max_steps", "3", "--lora_r", "4", "--lr", "1e-3")]) == 0
    first = metrics(out)[0]
    assert abs(first["rewards/margins"]) < 1e-6       # adapters start at zero: policy == reference
    assert (out / "final" / "model.safetensors").exists()

    out = tmp_path / "sft_first"
    assert main(["dpo", *common(tiny_model, prefs, out, "--max_steps", "2", "--sft_on_chosen", "true",
                                "--sft_steps", "3")]) == 0
    assert (out / "sft" / "final" / "config.json").exists()
