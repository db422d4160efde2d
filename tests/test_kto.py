"""KTO on unpaired rows: the mismatched pairs of its KL estimate, learning a synthetic preference,
paired data unpaired, and SFT refusing (or filtering) undesirable rows."""
import json
import random

import pytest

from conftest import WORDS, write_jsonl
from preftune.cli import main
from preftune.recipes.kto import collate_kto, unpaired


def rows(n, seed=0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        good = i % 2 == 0
        out.append({"prompt": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5))),
                    "completion": " and it was great fun." if good else " and it was a dull boring mess.",
                    "label": good})
    return out


def test_kl_pairs_are_each_prompt_with_the_previous_rows_completion():
    examples = [{"prompt_ids": [1, 10 + i], "completion_ids": [20 + i] * (i + 1), "label": i % 2 == 0}
                for i in range(4)]
    batch = collate_kto(examples, 0, max_length=64)
    kl = batch["kl"]
    for i in range(4):
        row = kl["input_ids"][i][kl["attention_mask"][i].bool()].tolist()
        assert row == [1, 10 + i] + examples[i - 1]["completion_ids"]      # y'_i = y_{i-1}: TRL's rotation
    assert batch["label"].tolist() == [True, False, True, False]
    pairs = [{"prompt_ids": [1, p], "chosen_ids": [50 + p], "rejected_ids": [60 + p]} for p in range(3)]
    rows = unpaired(pairs)        # desirable rows, then undesirable ones (TRL's unpair_preference_dataset)
    assert [(e["completion_ids"], e["label"]) for e in rows] == [([50], True), ([51], True), ([52], True),
                                                                   ([60], False), ([61], False), ([62], False)]
    kl = collate_kto(rows, 0, max_length=64)["kl"]
    for i, row in enumerate(kl["input_ids"]):   # no mismatched pair is a matched one
        completion = row[kl["attention_mask"][i].bool()].tolist()[2:]
        assert completion != rows[i]["completion_ids"] and completion[0] % 10 != rows[i]["prompt_ids"][1]


@pytest.mark.slow
def test_kto_learns_desirable_over_undesirable(tiny_model, tmp_path):
    import preftune
    result = preftune.kto(tiny_model, rows(120), max_steps=30, lr=1e-3, batch_size=8, eval_fraction=0.2,
                          progress=False)
    metrics, summary = result.metrics, result.summary
    assert summary["eval"]["rewards/margins"] > 1.0 and summary["eval"]["rewards/chosen"] > 0
    assert metrics[0]["loss"] == pytest.approx(0.5, abs=1e-4)          # π = π_ref at step 1: λ·(1 − σ(0))
    assert {"kl", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"} <= set(metrics[0])
    assert summary["desirable_examples"] + summary["undesirable_examples"] == summary["train_examples"]


@pytest.mark.slow
def test_kto_packed_equals_padded_and_accepts_pairs(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "u.jsonl", rows(16))
    first = {}
    for packing in ("true", "false"):
        out = tmp_path / packing
        assert main(["kto", "--model", tiny_model, "--data", data, "--output_dir", str(out), "--max_steps", "2",
                     "--lr", "1e-3", "--batch_size", "8", "--packing", packing, "--progress", "false"]) == 0
        first[packing] = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(first["true"], first["false"]):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5) and a["kl"] == pytest.approx(b["kl"], abs=1e-4)
    pairs = write_jsonl(tmp_path / "p.jsonl",
                        [{"prompt": "the film", "chosen": " was great.", "rejected": " was dull."}] * 8)
    out = tmp_path / "pairs"
    assert main(["kto", "--model", tiny_model, "--data", pairs, "--output_dir", str(out), "--max_steps", "1",
                 "--batch_size", "4", "--progress", "false"]) == 0
    assert json.loads((out / "summary.json").read_text())["desirable_examples"] == 8


def test_kto_needs_two_rows_per_batch_and_both_labels(tiny_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "u.jsonl", rows(8))
    assert main(["kto", "--model", tiny_model, "--data", data, "--output_dir", str(tmp_path / "a"),
                 "--batch_size", "1"]) == 2
    assert "--batch_size must be ≥ 2" in capsys.readouterr().err
    only_good = write_jsonl(tmp_path / "g.jsonl", [r for r in rows(8) if r["label"]])
    assert main(["kto", "--model", tiny_model, "--data", only_good, "--output_dir", str(tmp_path / "b"),
                 "--progress", "false"]) == 2
    assert "KTO needs desirable and undesirable rows" in capsys.readouterr().err


def test_sft_refuses_undesirable_rows_unless_asked_to_filter(tiny_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "u.jsonl", rows(8))
    args = ["sft", "--model", tiny_model, "--data", data, "--max_steps", "1", "--batch_size", "2", "--progress",
            "false"]
    assert main([*args, "--output_dir", str(tmp_path / "a")]) == 2
    assert "--desirable_only true" in capsys.readouterr().err
    assert main([*args, "--output_dir", str(tmp_path / "b"), "--desirable_only"]) == 0
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert (summary["train_examples"], summary["undesirable_rows_left_out"]) == (4, 4)
