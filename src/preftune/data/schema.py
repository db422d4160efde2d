"""Detect a dataset's kind from its columns and validate each row into a normalised example.

| kind        | columns                                                        |
|-------------|----------------------------------------------------------------|
| text        | text                                                           |
| sft         | prompt + completion                                            |
| messages    | messages (list of {role, content}; the last turn is the answer) |
| preference  | prompt + chosen + rejected (or chosen/rejected conversations sharing a prefix) |
| ranking     | prompt + completions (K ≥ 2) + ranking (best → worst) or scores |
| prompt      | prompt                                                         |

Completions and prompts are strings (standard) or lists of messages (conversational).
"""
from __future__ import annotations

import math

from .errors import DataError
from .load import Row

ROLES = frozenset({"system", "user", "assistant", "tool"})
KIND_COLUMNS = {
    "ranking": ("prompt", "completions"),
    "preference": ("chosen", "rejected"),
    "messages": ("messages",),
    "sft": ("prompt", "completion"),
    "text": ("text",),
    "prompt": ("prompt",),
}


def detect_kind(rows: list[Row], source: str, expect: tuple[str, ...]) -> str:
    """The first kind (most specific first) whose columns the rows carry; must be in ``expect``."""
    columns = set()
    for r in rows:
        columns.update(r.data)
    for kind, needed in KIND_COLUMNS.items():
        if all(c in columns for c in needed) and kind in expect:
            return kind
    wanted = " or ".join("+".join(KIND_COLUMNS[k]) for k in expect)
    raise DataError(source, None, ", ".join(sorted(columns)) or None,
                    f"missing required column(s): this command needs {wanted}; "
                    "map other names with --columns '{theirs: ours}'", kind="missing_column")


def _messages(row: Row, field: str, value) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise row.error(field, "expected a non-empty list of {role, content} messages", "wrong_type")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise row.error(f"{field}[{i}]", "expected an object with 'role' and 'content'", "wrong_type")
        if m["role"] not in ROLES:
            raise row.error(f"{field}[{i}].role", f"unknown role {m['role']!r}; use one of {sorted(ROLES)}",
                            "unknown_role")
        if not isinstance(m["content"], str):
            raise row.error(f"{field}[{i}].content", f"expected a string, got {type(m['content']).__name__}",
                            "wrong_type")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _text_or_messages(row: Row, field: str, *, completion: bool):
    if field not in row.data or row.data[field] is None:
        raise row.error(field, "missing required field", "missing_column")
    value = row.data[field]
    if isinstance(value, str):
        if completion and not value.strip():
            raise row.error(field, "empty completion", "empty_completion")
        return value
    if isinstance(value, list):
        msgs = _messages(row, field, value)
        if completion and not "".join(m["content"] for m in msgs).strip():
            raise row.error(field, "empty completion", "empty_completion")
        return msgs
    raise row.error(field, f"expected a string or a list of messages, got {type(value).__name__}", "wrong_type")


def _split_shared_prefix(row: Row, chosen, rejected):
    """Implicit prompt: chosen and rejected are whole conversations sharing their first turns."""
    if isinstance(chosen, list) and isinstance(rejected, list):
        n = 0
        while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
            n += 1
        if n == 0:
            raise row.error("prompt", "no prompt column, and chosen/rejected share no leading turns", "missing_column")
        return chosen[:n], chosen[n:], rejected[n:]
    raise row.error("prompt", "missing required field (an implicit prompt needs conversational chosen/rejected)",
                    "missing_column")


def validate(row: Row, kind: str) -> dict:
    """Check one row of ``kind`` and return its normalised example (raises DataError)."""
    d = row.data
    if kind == "text":
        return {"prompt": "", "completion": _text_or_messages(row, "text", completion=True)}
    if kind == "prompt":
        return {"prompt": _text_or_messages(row, "prompt", completion=False)}
    if kind == "sft":
        return {"prompt": _text_or_messages(row, "prompt", completion=False),
                "completion": _text_or_messages(row, "completion", completion=True)}
    if kind == "messages":
        msgs = _messages(row, "messages", d.get("messages"))
        if msgs[-1]["role"] != "assistant":
            raise row.error("messages", "the last message must be the assistant's answer", "invalid")
        if not msgs[-1]["content"].strip():
            raise row.error("messages", "empty completion", "empty_completion")
        return {"prompt": msgs[:-1], "completion": msgs[-1:]}
    if kind == "preference":
        chosen = _text_or_messages(row, "chosen", completion=True)
        rejected = _text_or_messages(row, "rejected", completion=True)
        if d.get("prompt") is None:
            prompt, chosen, rejected = _split_shared_prefix(row, chosen, rejected)
        else:
            prompt = _text_or_messages(row, "prompt", completion=False)
        if isinstance(prompt, str) != isinstance(chosen, str) or isinstance(chosen, str) != isinstance(rejected, str):
            raise row.error("prompt", "mixes plain strings and message lists", "wrong_type")
        out = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        if d.get("margin") is not None:
            out["margin"] = _finite_number(row, "margin", d["margin"])
        return out
    if kind == "ranking":
        prompt = _text_or_messages(row, "prompt", completion=False)
        comps = d.get("completions")
        if not isinstance(comps, list) or len(comps) < 2:
            raise row.error("completions", "expected a list of at least 2 completions", "wrong_type")
        completions = []
        for i, _ in enumerate(comps):
            sub = Row(row.source, row.number, {"c": comps[i]}, row.label)
            try:
                completions.append(_text_or_messages(sub, "c", completion=True))
            except DataError as e:
                raise row.error(f"completions[{i}]", e.reason, e.kind) from None
        return {"prompt": prompt, "completions": completions, "ranking": _ranking(row, len(completions))}
    raise ValueError(f"unknown dataset kind {kind!r}")


def _ranking(row: Row, k: int) -> list[int]:
    d = row.data
    if d.get("ranking") is not None:
        rank = d["ranking"]
        if not isinstance(rank, list) or sorted(rank) != list(range(k)) or any(isinstance(i, bool) for i in rank):
            raise row.error("ranking", f"expected a permutation of 0..{k - 1} (best → worst)", "wrong_type")
        return list(rank)
    scores = d.get("scores")
    if not isinstance(scores, list) or len(scores) != k:
        raise row.error("scores", f"expected {k} numbers (or a 'ranking' column)", "missing_column"
                        if scores is None else "wrong_type")
    scores = [_finite_number(row, f"scores[{i}]", s) for i, s in enumerate(scores)]
    return sorted(range(k), key=lambda i: -scores[i])


def _finite_number(row: Row, field: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise row.error(field, f"expected a number, got {type(value).__name__}", "wrong_type")
    if not math.isfinite(value):
        raise row.error(field, f"expected a finite number, got {value}", "not_finite")
    return float(value)
