"""A run folder: config.yaml, metrics.jsonl, tracker logs (TensorBoard's by default), summary.json,
checkpoints, final/.

A folder holding a run is refused unless the run is resumed or overwritten; a lock file keeps two
runs out of one folder; summary.json is written last (atomically), so a run — and a pipeline stage
built on it — counts as done only once it exists.
"""
from __future__ import annotations

import atexit
import json
import math
import os
import shutil
import socket
from pathlib import Path

from ..config import save_config
from .trackers import open_trackers, scalars

# what training writes; --overwrite removes exactly these once the new run starts training
ARTEFACTS = ("metrics.jsonl", "summary.json", "checkpoints", "final", "tensorboard", "wandb")
# the options that name what a run reads (models, data, rewards): never written over, compared resolved on resume
INPUT_OPTIONS = ("model", "ref_model", "data", "eval_data", "reward", "value_model", "ptx_data")
LOCK = ".lock"
_HELD: list["RunDir"] = []   # folders this process has locked


def release_all() -> None:
    """Unlock every folder this process holds (a command that failed part-way)."""
    for run in list(_HELD):
        run.release()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunDir:
    """The run folder, or with ``output_dir`` None (the Python API's in-memory run) no folder at all:
    nothing is locked or written."""

    def __init__(self, output_dir: str | Path | None, *, main: bool = True):
        self.path = None if output_dir is None else Path(output_dir)
        self.main = main and self.path is not None
        self._trackers = []
        self._locked = False

    @property
    def checkpoints(self) -> Path | None:
        return None if self.path is None else self.path / "checkpoints"

    @property
    def final(self) -> Path | None:
        return None if self.path is None else self.path / "final"

    def holds_run(self) -> list[str]:
        """The run artefacts already in the folder (a config.yaml alone is a run that never started)."""
        if self.path is None:
            return []
        return [name for name in ("metrics.jsonl", "checkpoints", "final", "summary.json")
                if (self.path / name).exists()]

    def claim(self, *, resume: bool, overwrite: bool) -> None:
        """Lock the folder for this process and refuse a folder holding a run unless it is to be
        resumed or overwritten. Nothing of the old run changes until ``begin``."""
        if not self.main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock()
        found = self.holds_run()
        if found and not (resume or overwrite):
            self.release()
            raise ValueError(f"--output_dir {self.path} holds a run ({', '.join(found)}): pass --resume to continue "
                             "it or --overwrite true to replace it")

    def begin(self, cfg, *, overwrite: bool) -> None:
        """Training starts (data, models and any resume checks passed): an overwritten run's artefacts
        go, the run is no longer done (its summary goes), and the config it runs with is saved."""
        if not self.main:
            return
        for name in ARTEFACTS if overwrite else ("summary.json",):
            target = self.path / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        save_config(cfg, self.path / "config.yaml")
        self._trackers = open_trackers(cfg.report_to, self.path, cfg)

    def _lock(self) -> None:
        lock = self.path / LOCK
        me = f"{os.getpid()} {socket.gethostname()}"
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pid, _, host = lock.read_text().partition(" ")
                ours = pid == str(os.getpid())   # left by an earlier run of this process that failed
                if not ours and (host.strip() != socket.gethostname() or (pid.isdigit() and _alive(int(pid)))):
                    raise ValueError(f"--output_dir {self.path} is in use by another run (process {pid} on "
                                     f"{host.strip()}; remove {lock} if that run is gone)") from None
                lock.unlink(missing_ok=True)   # left by a run that was killed or failed
                continue
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self._locked = True
            _HELD.append(self)
            atexit.register(self.release)
            return

    def release(self) -> None:
        if self._locked:
            (self.path / LOCK).unlink(missing_ok=True)
            self._locked = False
            _HELD.remove(self)

    def truncate_metrics(self, after_step: int) -> None:
        """On resume: drop lines a killed run logged after its last checkpoint (all of them when it
        made none)."""
        f = self.path / "metrics.jsonl"
        if not (self.main and f.exists()):
            return
        lines, kept = f.read_text(errors="replace").splitlines(), []
        for i, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if i < len(lines):
                    raise ValueError(f"--resume: {f} line {i} is not JSON (only a last line cut short by a full disk "
                                     "or a kill is dropped)") from None
                print(f"--resume: dropped the half-written last line of {f}")
                continue
            if record["step"] <= after_step:
                kept.append(line)
        f.write_text("".join(line + "\n" for line in kept))

    def log(self, step: int, metrics: dict) -> None:
        if not self.main:
            return
        record = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        values = scalars(metrics)
        for tracker in self._trackers:
            tracker.log(step, values)

    def write_summary(self, summary: dict) -> None:
        """summary.json, atomically: its presence marks the run (and a stage built on it) done."""
        if self.main:
            tmp = self.path / ".summary.json.tmp"
            tmp.write_text(json.dumps(summary, indent=2, default=_jsonable) + "\n")
            os.replace(tmp, self.path / "summary.json")

    def close(self) -> None:
        for tracker in self._trackers:
            tracker.close()
        self._trackers = []
        self.release()


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v
