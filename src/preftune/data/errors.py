"""Bad input: one error type that names the file, row and field, and the record of skipped rows."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path


class DataError(ValueError):
    """A problem with one input row (or the whole file when ``row`` is None)."""

    def __init__(self, source: str, row: int | None, field: str | None, reason: str, *,
                 kind: str = "invalid", raw=None, row_label: str = "row"):
        where = [str(source)]
        if row is not None:
            where.append(f"{row_label} {row}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {reason}")
        self.source, self.row, self.field, self.reason = source, row, field, reason
        self.kind, self.raw = kind, raw


class BadRows:
    """Applies ``--on_bad_row``: ``error`` raises the DataError, ``skip`` counts it by kind and keeps
    the row whole for ``rejected_rows.jsonl``."""

    def __init__(self, mode: str = "error"):
        if mode not in ("error", "skip"):
            raise ValueError(f"on_bad_row must be 'error' or 'skip', got {mode!r}")
        self.mode = mode
        self.rejected: list[dict] = []
        self.counts: Counter[str] = Counter()

    def handle(self, err: DataError) -> None:
        if self.mode == "error":
            raise err
        self.counts[err.kind] += 1
        self.rejected.append({"source": str(err.source), "row": err.row, "field": err.field,
                              "kind": err.kind, "reason": err.reason, "data": err.raw})

    def write(self, run_dir: Path, name: str = "rejected_rows.jsonl") -> None:
        """The skipped rows, whole; a file left by an earlier run that skipped rows goes."""
        if not self.rejected:
            (run_dir / name).unlink(missing_ok=True)
            return
        with open(run_dir / name, "w", encoding="utf-8") as f:
            for rec in self.rejected:
                f.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")

    def summary(self) -> dict:
        return {"skipped_rows": sum(self.counts.values()), "skipped_by_reason": dict(self.counts)}
