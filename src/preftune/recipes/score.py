"""``preftune score``: rewards for (prompt, completion) rows from a reward source, as JSONL."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..config import DeviceConfig, opt
from ..data import BadRows, DataError, detect_kind, load_rows, validate
from ..runtime.device import prepare, resolve
from ..rewards import load_reward_source


@dataclass
class ScoreConfig(DeviceConfig):
    reward: str = opt(None, "reward-model folder or module:function")
    data: str = opt(None, "rows with prompt + completion (or prompt + chosen + rejected)")
    output: str = opt("scores.jsonl", "where to write the rows with their reward(s)")
    batch_size: int = opt(32, "rows per forward pass", bounds="[1, inf)")
    on_bad_row: str = opt("error", "error or skip", ["error", "skip"])


def score_rows(cfg: ScoreConfig, *, reward=None, data=None, tokenizer=None) -> tuple[list[dict], BadRows]:
    """The rows of ``data`` (default ``cfg.data``) with their reward(s) from ``reward`` (default
    ``cfg.reward``): ``reward`` for prompt + completion rows, ``reward_chosen`` / ``reward_rejected`` for
    pairs; and the skipped rows."""
    bad = BadRows(cfg.on_bad_row)
    source = cfg.data if data is None else data
    rows = load_rows(source, bad=bad)
    kind = detect_kind(rows, source if isinstance(source, str) else "data", ("preference", "unpaired", "sft"))
    examples = []
    for row in rows:
        try:
            examples.append((row, validate(row, kind)))
        except DataError as err:
            bad.handle(err)
    device = resolve(cfg.device)
    prepare(device)
    reward_fn = load_reward_source(cfg.reward if reward is None else reward, batch_size=cfg.batch_size, device=device,
                                   dtype=cfg.dtype, tokenizer=tokenizer)
    fields = ("chosen", "rejected") if kind == "preference" else ("completion",)
    scores = {f: reward_fn([e["prompt"] for _, e in examples], [e[f] for _, e in examples]) for f in fields}
    out = []
    for i, (row, _) in enumerate(examples):
        record = dict(row.data)
        for f in fields:
            record["reward" if f == "completion" else f"reward_{f}"] = scores[f][i]
        out.append(record)
    return out, bad


def run_score(cfg: ScoreConfig) -> None:
    records, bad = score_rows(cfg)
    with open(cfg.output, "w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    output = Path(cfg.output)
    rejected = f"{output.name.split('.')[0]}.rejected_rows.jsonl"
    bad.write(output.parent, rejected)
    skipped = bad.summary()["skipped_rows"]
    print(f"scored {len(records)} rows into {cfg.output}" +
          (f"; {skipped} skipped, kept in {output.parent / rejected}" if skipped else ""))
