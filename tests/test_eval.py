"""Evaluation metrics and preference labelling."""
import json
import math
import random

import pytest

from conftest import write_jsonl
from preftune.cli import main
from preftune.eval import elo_ratings, reward_accuracy, win_rate
from preftune.rewards.labels import bradley_terry_pair, plackett_luce_ranking, preference_rows


def test_win_rate_and_accuracy_count_ties_half():
    assert win_rate([1, 2, 3, 0], [0, 2, 4, 0]) == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)
    assert reward_accuracy([1.0], [0.0]) == 1.0


def test_elo_orders_policies_and_matches_bradley_terry():
    rng = random.Random(0)
    strong = [rng.random() + 0.3 for _ in range(400)]
    weak = [rng.random() for _ in range(400)]
    same = list(weak)
    ratings = elo_ratings({"weak": weak, "strong": strong, "same": same}, anchor="weak")
    assert ratings["weak"] == pytest.approx(1000)
    assert ratings["strong"] > ratings["weak"] + 100
    assert ratings["same"] == pytest.approx(ratings["weak"], abs=1)
    # two players: the Elo gap is 400·log10(wins/losses)
    p = win_rate(strong, weak)
    two = elo_ratings({"weak": weak, "strong": strong})
    assert two["strong"] - two["weak"] == pytest.approx(400 * math.log10(p / (1 - p)), rel=0.02)


def test_bradley_terry_labels_follow_sigma():
    rng = random.Random(1)
    for diff, t in [(0.2, 0.1), (0.5, 0.5), (-0.3, 0.2)]:
        share = sum(bradley_terry_pair(diff, 0.0, t, rng) for _ in range(20000)) / 20000
        assert share == pytest.approx(1 / (1 + math.exp(-diff / t)), abs=0.015)
    assert bradley_terry_pair(0.3, 0.1, 0.0, rng) is True


def test_plackett_luce_ranking():
    rng = random.Random(2)
    assert plackett_luce_ranking([0.1, 0.9, 0.5], 0.0, rng) == [1, 2, 0]
    firsts = [plackett_luce_ranking([1.0, 0.0], 1.0, rng)[0] for _ in range(20000)]
    assert firsts.count(0) / 20000 == pytest.approx(1 / (1 + math.exp(-1)), abs=0.015)
    pairs, rankings = preference_rows(["p"], [["a", "b", "c"]], [[0.0, 1.0, 0.5]], temperature=0.0, seed=0)
    assert pairs[0]["reward_chosen"] > pairs[0]["reward_rejected"]
    assert rankings[0]["ranking"] == [1, 2, 0]


def test_generate_label_score_commands(tiny_lm, tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "the film"}, {"prompt": "a dull"}, {"prompt": "the cast"}])
    out = tmp_path / "samples.jsonl"
    assert main(["generate", "--model", tiny_lm, "--data", prompts, "--output", str(out), "--num_samples", "3",
                 "--max_new_tokens", "8", "--top_k", "20"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 9 and [r["prompt_index"] for r in rows] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert main(["label", "--data", str(out), "--reward", "preftune.tasks.toy:great_share",
                 "--output_dir", str(tmp_path / "lab")]) == 0
    pairs = [json.loads(x) for x in (tmp_path / "lab" / "pairs.jsonl").read_text().splitlines()]
    ranks = [json.loads(x) for x in (tmp_path / "lab" / "rankings.jsonl").read_text().splitlines()]
    assert len(pairs) + json.loads((tmp_path / "lab" / "label_stats.json").read_text())["prompts_left_out"] == 3
    for r in ranks:
        assert sorted(r["ranking"]) == list(range(len(r["completions"])))
    scored = tmp_path / "scored.jsonl"
    assert main(["score", "--reward", "preftune.tasks.toy:great_share", "--data", str(tmp_path / "lab" / "pairs.jsonl"),
                 "--output", str(scored)]) == 0
    assert all("reward_chosen" in json.loads(x) for x in scored.read_text().splitlines())


def test_vader_reward_is_ground_truth():
    from preftune.tasks.sentiment import corpus, prompts, vader_reward
    good, bad, neutral = vader_reward(["", "", ""], ["A wonderful, moving film.", "A dull, awful mess.",
                                                     "It runs two hours."])
    assert good > 0.5 and bad < -0.5 and neutral == 0
    assert corpus(3, seed=5) == corpus(3, seed=5) and corpus(3, seed=5) != corpus(3, seed=6)
    assert len(set(prompts(200))) > 100
