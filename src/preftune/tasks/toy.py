"""A programmatic toy reward for smoke tests and examples: the share of completion words that are
"great". Use it as ``--reward preftune.tasks.toy:great_share``."""
from __future__ import annotations


def great_share(prompts: list[str], completions: list[str]) -> list[float]:
    out = []
    for text in completions:
        words = [w.strip(".,!?").lower() for w in text.split()]
        out.append(sum(w == "great" for w in words) / max(len(words), 1))
    return out
