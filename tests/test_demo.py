"""The embedded default end to end (--quick, a bare flag): every artefact exists and is well-formed,
and alignment shows: DPO and PPO raise the ground-truth reward above π_SFT's with 95% intervals over
the seeds that do not overlap — a measured effect, not a hard-coded one."""
import csv
import json
import math
import re

import pytest

from preftune.cli import main


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("preftune.tasks.demo.LOG_SECONDS", 1e-9)   # a progress line every step, however fast
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--output_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "report.md" in printed and "[demo] pretrain base LM:" in printed
    for stage in ("pretrain base LM", "SFT", "reward model", "ppo@0.1 seed 0", "dpo@0.1 seed 0"):   # progress, time
        during, wall = printed.split(f"[demo] {stage}: preftune ")[1].split(f"[demo] {stage}: ")[:2]
        assert "\n  step 1/" in during and re.match(r"[0-9.]+ s\n", wall), stage
    for name in ("report.md", "frontier.csv", "frontier.png", "demo_summary.json", "prefs/pairs.jsonl",
                 "prefs/rankings.jsonl", "sft/final/config.json", "rm/final/config.json", "eval/seed-0/eval.json"):
        assert (out / name).exists(), name
    rows = {r["name"]: r for r in csv.DictReader(open(out / "frontier.csv"))}
    assert {"method", "beta", "reward", "kl", "kl_k1", "n_seeds", "reward_ci_low", "reward_ci_high", "kl_ci_low",
            "kl_ci_high"} <= set(next(iter(rows.values())))
    assert [r["method"] for r in rows.values()].count("sft") == 1 \
        and {"ppo", "dpo"} <= {r["method"] for r in rows.values()}
    for r in rows.values():
        assert int(r["n_seeds"]) >= 3 and float(r["kl"]) >= 0 and math.isfinite(float(r["reward"]))
    sft_high = float(rows["sft"]["reward_ci_high"])
    for name in ("ppo@0.1", "dpo@0.1"):
        assert float(rows[name]["reward_ci_low"]) > sft_high, (name, rows[name], rows["sft"])
    pairs = [json.loads(x) for x in (out / "prefs" / "pairs.jsonl").read_text().splitlines()]
    per_prompt = {}
    for p in pairs:
        assert isinstance(p["prompt"], str) and p["chosen"].strip() and p["chosen"] != p["rejected"]
        per_prompt[p["prompt"]] = per_prompt.get(p["prompt"], 0) + 1
    assert max(per_prompt.values()) >= 6 - 1          # every pair of a prompt's 4 samples, not one
    summary = json.loads((out / "demo_summary.json").read_text())
    assert 0 <= summary["rm_heldout_accuracy"] <= 1 and len(summary["seeds"]) >= 3
    assert summary["budgets"]["ppo"]["reward_model_calls"] > 0 and "dpo_vs_ppo" in summary
    assert all(command.startswith("preftune ") for command in summary["commands"])
    # a second run reuses the cached base LM and the finished stages
    assert main(["demo", "--quick", "--output_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "cached" in printed and "done already" in printed
