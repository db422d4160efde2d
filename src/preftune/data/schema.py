"""Detect a dataset's kind from its columns and validate each row into a normalised example.

| kind        | columns                                                        |
|-------------|----------------------------------------------------------------|
| text        | text                                                           |
| sft         | prompt + completion                                            |
| messages    | messages (list of {role, content}; the last turn is the answer) |
| preference  | prompt + chosen + rejected; or chosen + rejected sharing their prompt as a prefix |
| ranking     | prompt + completions (K ≥ 2) + ranking (best → worst) or scores |
| unpaired    | prompt + completion + label (true = desirable; KTO)            |
| prompt      | prompt                                                         |

Completions and prompts are strings (standard) or lists of messages (conversational). A prompt
string beside full conversations (UltraFeedback) becomes the conversation minus its last turn, and
must agree with that conversation's last user turn; beside completion-only message lists it becomes
one user turn. Without a prompt column, chosen and rejected give their shared prefix: the shared
leading turns of conversations, or for plain transcripts (HH-RLHF) the shared text up to its last
assistant marker ("\n\nAssistant:"), else the whole shared prefix (as TRL's extract_prompt).
"""
from __future__ import annotations

import math

from .errors import DataError
from .load import Row
from .tokenize import common_prefix

ROLES = frozenset({"system", "user", "assistant", "tool"})
KIND_COLUMNS = {   # most specific first
    "ranking": ("prompt", "completions"),
    "preference": ("chosen", "rejected"),
    "messages": ("messages",),
    "unpaired": ("prompt", "completion", "label"),
    "sft": ("prompt", "completion"),
    "text": ("text",),
    "prompt": ("prompt",),
}
KIND_HINTS = {
    "unpaired": "unpaired preference rows: they train with `preftune kto`, or `preftune sft --desirable_only` on "
                "their label: true rows",
    "preference": "preference pairs: they train with `preftune dpo`, `kto` or `rm`, or `preftune sft --sft_on_chosen` "
                  "on their chosen completions",
    "ranking": "rankings: they train with `preftune rm` or `preftune dpo` (Plackett–Luce)",
}
ASSISTANT_MARKERS = ("\n\nAssistant:", "<|im_start|>assistant\n", "<|assistant|>\n", "[/INST]", "### Response:")


def detect_kind(rows: list[Row], source: str, expect: tuple[str, ...]) -> str:
    """The most specific kind whose columns the rows carry; it must be one of ``expect``."""
    columns = set()
    for r in rows:
        columns.update(r.data)
    wanted = " or ".join("+".join(KIND_COLUMNS[k]) for k in expect)
    for kind, needed in KIND_COLUMNS.items():
        if all(c in columns for c in needed):
            if kind in expect:
                return kind
            if kind in KIND_HINTS:
                raise DataError(source, None, None, f"these rows ({', '.join(needed)}) are {KIND_HINTS[kind]}; "
                                                    f"this command needs {wanted}", kind="wrong_kind")
    raise DataError(source, None, None, f"missing required column(s): this command needs {wanted}, the rows have "
                                        f"{', '.join(sorted(columns)) or 'none'}; map other names with --columns "
                                        "'{theirs: ours}'", kind="missing_column")


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


def _implicit_prompt(row: Row, chosen, rejected):
    """No prompt column: the prompt chosen and rejected share as a prefix (see the module docstring)."""
    if isinstance(chosen, list) and isinstance(rejected, list):
        n = min(common_prefix(chosen, rejected), len(chosen) - 1, len(rejected) - 1)
        if n == 0:
            raise row.error("prompt", "no prompt column, and chosen/rejected share no leading turns", "missing_column")
        return chosen[:n], chosen[n:], rejected[n:]
    if isinstance(chosen, str) and isinstance(rejected, str):
        n = common_prefix(chosen, rejected)
        shared = chosen[:n]
        ends = [shared.rfind(m) + len(m) for m in ASSISTANT_MARKERS if m in shared]
        if ends:
            n = max(ends)
            for field, text in (("chosen", chosen), ("rejected", rejected)):
                later = [m for m in ("\n\nHuman:", "\n\nAssistant:") if m in text[n:]]
                if later:   # the transcripts part before their last turn: the completion would hold more turns
                    raise row.error(field, f"chosen and rejected differ before their last assistant turn (the "
                                           f"completion would contain {later[0].strip()!r})", "invalid")
        elif 0 < n < min(len(chosen), len(rejected)) and chosen[n - 1] == " ":
            n -= 1   # the space starts the completion
        if n == 0:
            raise row.error("prompt", "no prompt column, and chosen/rejected share no prefix", "missing_column")
        return chosen[:n], chosen[n:], rejected[n:]
    raise row.error("chosen", "mixes plain strings and message lists", "wrong_type")


def _align(row: Row, prompt, completions: dict):
    """Prompt and completions both strings or both message lists: a prompt string beside full
    conversations becomes their shared turns before the last (checked against the string), beside
    completion-only message lists one user turn."""
    kinds = {isinstance(c, str) for c in completions.values()}
    if len(kinds) > 1:
        raise row.error(next(iter(completions)), "mixes plain strings and message lists", "wrong_type")
    if isinstance(prompt, str) == kinds.pop():
        return prompt, completions
    if not isinstance(prompt, str):
        raise row.error("prompt", "a conversation prompt needs conversational completions, not plain strings",
                        "wrong_type")
    if all(len(c) == 1 for c in completions.values()):
        return [{"role": "user", "content": prompt}], completions
    turns = {field: c[:-1] for field, c in completions.items()}
    first_field, shared = next(iter(turns.items()))
    for field, t in turns.items():
        if t != shared:
            raise row.error(field, f"differs from {first_field} before its last turn", "invalid")
    users = [m["content"] for m in shared if m["role"] == "user"]
    if not users or users[-1].strip() != prompt.strip():
        raise row.error("prompt", "does not agree with the conversation's last user turn", "invalid")
    return shared, {field: c[-1:] for field, c in completions.items()}


def validate(row: Row, kind: str) -> dict:
    """Check one row of ``kind`` and return its normalised example (raises DataError)."""
    d = row.data
    if kind == "text":
        return {"prompt": "", "completion": _text_or_messages(row, "text", completion=True)}
    if kind == "prompt":
        return {"prompt": _text_or_messages(row, "prompt", completion=False)}
    if kind in ("sft", "unpaired"):
        prompt, out = _align(row, _text_or_messages(row, "prompt", completion=False),
                             {"completion": _text_or_messages(row, "completion", completion=True)})
        out["prompt"] = prompt
        if kind == "unpaired":
            out["label"] = _label(row, d.get("label"))
        return out
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
            prompt, chosen, rejected = _implicit_prompt(row, chosen, rejected)
            for field, value in (("chosen", chosen), ("rejected", rejected)):
                if not (value.strip() if isinstance(value, str) else value):
                    raise row.error(field, "empty completion after the shared prompt", "empty_completion")
        else:
            prompt = _text_or_messages(row, "prompt", completion=False)
        prompt, sides = _align(row, prompt, {"chosen": chosen, "rejected": rejected})
        if sides["chosen"] == sides["rejected"]:
            raise row.error("rejected", "the same completion as chosen: the pair states no preference",
                            "identical_completions")
        out = {"prompt": prompt, **sides}
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
        prompt, aligned = _align(row, prompt, {f"completions[{i}]": c for i, c in enumerate(completions)})
        return {"prompt": prompt, "completions": list(aligned.values()), "ranking": _ranking(row, len(completions))}
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
    """A number (a numeric string too: CSV cells are text)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise row.error(field, f"expected a number, got the text {value!r}", "wrong_type") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise row.error(field, f"expected a number, got {type(value).__name__}", "wrong_type")
    if not math.isfinite(value):
        raise row.error(field, f"expected a finite number, got {value}", "not_finite")
    return float(value)


LABELS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _label(row: Row, value) -> bool:
    """An unpaired row's label: a boolean, 0/1, or the text true/false/yes/no/1/0 (CSV cells are text)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in LABELS:
        return LABELS[value.strip().lower()]
    raise row.error("label", f"expected true or false (or 1/0, yes/no), got {value!r}", "wrong_type")
