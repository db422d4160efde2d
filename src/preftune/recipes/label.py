"""``preftune label``: turn sampled completions into preference data with a reward source.

Reads the JSONL that ``preftune generate --num_samples K`` writes (rows grouped by prompt), scores
every completion, and writes ``pairs.jsonl`` (Bradley–Terry-sampled pairs) and ``rankings.jsonl``
(Plackett–Luce-sampled rankings of all K) in the standard formats, with the true rewards kept in
extra columns for evaluation.
"""
from __future__ import annotations

import json
import typing
from dataclasses import dataclass
from pathlib import Path

from ..config import DeviceConfig, opt
from ..data import load_rows
from ..runtime.device import prepare, resolve
from ..rewards import load_reward_source
from ..rewards.labels import preference_rows


@dataclass
class LabelConfig(DeviceConfig):
    data: str = opt(None, "completions JSONL from `preftune generate` (prompt, completion)")
    reward: str = opt(None, "reward source: reward-model folder or module:function")
    output_dir: str = opt("labels", "folder for pairs.jsonl and rankings.jsonl")
    label_temperature: float = opt(0.1, "label noise T: P(y₁ ≻ y₂) = σ((r₁ − r₂)/T); 0 = always the higher reward",
                                   bounds="[0, inf)")
    seed: int = opt(0, "seed of the label sampling")
    all_pairs: bool = opt(False, "label every pair of a prompt's different completions (C(K, 2) pairs), not one")
    RENAMED: typing.ClassVar[dict] = {"temperature": "label_temperature"}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def label(prompts: list, groups: list[list[str]], reward_fn, out: Path, temperature: float, seed: int,
          all_pairs: bool = False) -> dict:
    flat_prompts = [p for p, g in zip(prompts, groups) for _ in g]
    flat = [float(x) for x in reward_fn(flat_prompts, [c for g in groups for c in g])]
    rewards, i = [], 0
    for g in groups:
        rewards.append(flat[i:i + len(g)])
        i += len(g)
    pairs, rankings = preference_rows(prompts, groups, rewards, temperature=temperature, seed=seed,
                                      all_pairs=all_pairs)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "pairs.jsonl", pairs)
    write_jsonl(out / "rankings.jsonl", rankings)
    agree = sum(p["reward_chosen"] >= p["reward_rejected"] for p in pairs) / max(len(pairs), 1)
    return {"prompts": len(prompts), "pairs": len(pairs), "completions": len(flat),
            "mean_reward": sum(flat) / max(len(flat), 1),
            "label_agreement_with_reward": agree}


def label_samples(samples: str, reward_fn, out: Path, temperature: float, seed: int, all_pairs: bool = False) -> dict:
    """Group a ``generate`` JSONL by ``prompt_index`` (or else by prompt), leave out empty completions
    (they cannot be preference data; counted), label the groups of ≥ 2 and write label_stats.json."""
    groups: dict[str, list[str]] = {}
    prompts: dict[str, object] = {}
    empty = 0
    for row in load_rows(samples):
        key = str(row.data.get("prompt_index", json.dumps(row.data["prompt"])))
        prompts[key] = row.data["prompt"]
        if not str(row.data["completion"]).strip():
            empty += 1
            continue
        groups.setdefault(key, []).append(row.data["completion"])
    keys = [k for k in groups if len(groups[k]) >= 2]
    if not keys:
        raise ValueError(f"{samples}: no prompt has two or more completions (use generate --num_samples ≥ 2)")
    stats = label([prompts[k] for k in keys], [groups[k] for k in keys], reward_fn, out, temperature, seed, all_pairs)
    stats.update(empty_completions_left_out=empty, prompts_left_out=len(prompts) - len(keys))
    (out / "label_stats.json").write_text(json.dumps(stats, indent=1))
    return stats


def run_label(cfg: LabelConfig) -> None:
    device = resolve(cfg.device)
    prepare(device)
    reward_fn = load_reward_source(cfg.reward, device=device, dtype=cfg.dtype)
    stats = label_samples(cfg.data, reward_fn, Path(cfg.output_dir), cfg.label_temperature, cfg.seed, cfg.all_pairs)
    print(json.dumps(stats))
