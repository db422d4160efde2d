"""From a data source to tokenised examples: load, detect the kind, validate, render, tokenise."""
from __future__ import annotations

import os
import random

from .errors import BadRows, DataError
from .load import Row, load_rows
from .schema import detect_kind, validate
from .tokenize import Encoder

EVAL_SPLITS = ("test", "validation", "valid", "eval", "dev")


def encode_rows(rows: list[Row], kind: str, encoder: Encoder, bad: BadRows, *, margins: bool = False) -> list[dict]:
    """Validated, tokenised examples of ``rows``. With ``margins``, a margin is all-or-none: when any
    row has one, a row without one is a bad row (a per-batch fallback would silently drop them all)."""
    with_margin = sum(r.data.get("margin") is not None for r in rows) if margins else 0
    examples = []
    for row in rows:
        try:
            if 0 < with_margin < len(rows) and row.data.get("margin") is None:
                raise row.error("margin", f"missing, while {with_margin} of {len(rows)} rows have one: give every row "
                                          "a margin or none (or --use_margin false)", "missing_column")
            examples.append(encoder.encode(row, validate(row, kind)))
        except DataError as err:
            bad.handle(err)
    return examples


def _files(rows: list[Row]) -> set[str]:
    return {os.path.realpath(r.source) for r in rows if r.label != "index"}


def build_examples(cfg, tokenizer, expect: tuple[str, ...], bad: BadRows, *, margins: bool = False,
                   truncated: dict | None = None, data=None, eval_data=None):
    """Train and eval examples from ``data`` (default ``cfg.data``: a path, or rows as Python objects)
    and ``eval_data`` (default ``cfg.eval_data``), or ``cfg.eval_fraction`` of the training rows.

    Returns (train, eval, kind). Bad rows raise or are recorded in ``bad``; an empty result is an
    error either way; eval data read from a training file is refused. ``truncated`` receives the
    counts of rows and tokens cut (``Encoder.truncated``).
    """
    data = cfg.data if data is None else data
    eval_data = cfg.eval_data if eval_data is None else eval_data
    if data is None or (isinstance(data, str) and not data):
        raise DataError("--data", None, None, "no training data given", kind="missing_file")
    source = data if isinstance(data, str) else "data"
    encoder = Encoder(tokenizer, cfg.max_length, cfg.max_prompt_length, cfg.truncation_side)
    rows = load_rows(data, split=cfg.split, columns=cfg.columns, bad=bad)
    kind = detect_kind(rows, source, expect)
    train = encode_rows(rows, kind, encoder, bad, margins=margins)
    evals = []
    if eval_data is not None and not (isinstance(eval_data, str) and not eval_data):
        eval_source = eval_data if isinstance(eval_data, str) else "eval_data"
        eval_rows = load_rows(eval_data, split=EVAL_SPLITS, columns=cfg.columns, bad=bad, name="eval_data")
        shared = sorted(_files(eval_rows) & _files(rows))
        if shared:
            raise DataError(eval_source, None, None, f"--eval_data reads training file(s) of --data: "
                                                     f"{', '.join(shared)}", kind="invalid")
        evals = encode_rows(eval_rows, detect_kind(eval_rows, eval_source, (kind,)), encoder, bad, margins=margins)
    elif cfg.eval_fraction > 0 and len(train) > 1:
        order = list(range(len(train)))
        random.Random(cfg.seed).shuffle(order)
        n_eval = max(1, int(round(cfg.eval_fraction * len(train))))
        evals = [train[i] for i in sorted(order[:n_eval])]
        train = [train[i] for i in sorted(order[n_eval:])]
    if truncated is not None:
        truncated.update(encoder.truncated)
    if not train and evals:
        raise DataError(source, None, None, f"all {len(evals)} usable rows went to evaluation (--eval_fraction "
                                            f"{cfg.eval_fraction})", kind="empty_dataset")
    if not train:
        raise DataError(source, None, None,
                        f"no usable rows ({bad.summary()['skipped_rows']} skipped; see rejected_rows.jsonl)",
                        kind="empty_dataset")
    return train, evals, kind
