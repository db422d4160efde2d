"""A run folder: config.yaml, metrics.jsonl, TensorBoard logs, summary.json, checkpoints, final/."""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..config import save_config


class RunDir:
    def __init__(self, output_dir: str | Path, *, main: bool = True):
        self.path = Path(output_dir)
        self.main = main
        if main:
            self.path.mkdir(parents=True, exist_ok=True)
        self._tb = None

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def final(self) -> Path:
        return self.path / "final"

    def save_config(self, cfg) -> None:
        if self.main:
            save_config(cfg, self.path / "config.yaml")

    def truncate_metrics(self, after_step: int) -> None:
        """On resume: drop lines a killed run logged after its last checkpoint."""
        f = self.path / "metrics.jsonl"
        if self.main and f.exists():
            kept = [line for line in f.read_text().splitlines() if json.loads(line)["step"] <= after_step]
            f.write_text("".join(line + "\n" for line in kept))

    def log(self, step: int, metrics: dict) -> None:
        if not self.main:
            return
        record = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(str(self.path / "tensorboard"))
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self._tb.add_scalar(k, v, step)

    def write_summary(self, summary: dict) -> None:
        if self.main:
            (self.path / "summary.json").write_text(json.dumps(summary, indent=2, default=_jsonable) + "\n")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v
