"""The embedded default end to end (--quick): every artefact exists and is well-formed."""
import csv
import json
import math

import pytest

from preftune.cli import main


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "true", "--output_dir", str(out)]) == 0
    assert "report.md" in capsys.readouterr().out
    for name in ("report.md", "frontier.csv", "frontier.png", "eval.json", "demo_summary.json",
                 "prefs/pairs.jsonl", "prefs/rankings.jsonl", "sft/final/config.json", "rm/final/config.json"):
        assert (out / name).exists(), name
    rows = list(csv.DictReader(open(out / "frontier.csv")))
    assert {"method", "beta", "reward", "kl"} <= set(rows[0])
    assert [r["method"] for r in rows].count("sft") == 1
    assert {"ppo", "dpo", "ipo", "simpo"} <= {r["method"] for r in rows}
    for r in rows:
        assert math.isfinite(float(r["reward"])) and math.isfinite(float(r["kl"]))
    for line in (out / "prefs" / "pairs.jsonl").read_text().splitlines():
        p = json.loads(line)
        assert isinstance(p["prompt"], str) and p["chosen"].strip() and p["rejected"].strip()
    for line in (out / "prefs" / "rankings.jsonl").read_text().splitlines():
        r = json.loads(line)
        assert sorted(r["ranking"]) == list(range(len(r["completions"])))
    summary = json.loads((out / "demo_summary.json").read_text())
    assert 0 <= summary["rm_heldout_accuracy"] <= 1
    assert all(command.startswith("preftune ") for command in summary["commands"])
    # a second run reuses the cached base LM and the finished stages
    assert main(["demo", "--quick", "true", "--output_dir", str(out)]) == 0
    assert "cached" in capsys.readouterr().out
