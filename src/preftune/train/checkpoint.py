"""Atomic checkpoints: weights (safetensors), optimizer, scheduler, RNG states and step.

A checkpoint is written into a temporary folder and renamed into place, so a killed run leaves
either a whole checkpoint or none. The data position is a function of the step (see
``ExampleStream``), so the step is all the loop needs to resume the data.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

PREFIX = "step-"


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: torch.nn.Module, masters: dict | None = None) -> dict:
    """Every parameter and buffer, contiguous and de-duplicated (tied weights are stored once);
    ``masters`` ({name: float32 tensor}, bf16 runs) replace the named parameters' values."""
    state, seen = {}, {}
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), t.shape) if t.numel() else None
        if key is not None and key in seen:
            continue
        seen[key] = name
        state[name] = (masters or {}).get(name, t).detach().contiguous().cpu()
    return state


def save(folder: Path, step: int, model, optimizer, scheduler, extra: dict, keep: int, *,
         masters: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{PREFIX}{step}"
    tmp = folder / f".tmp-{PREFIX}{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(trainable_state(model, masters), tmp / "model.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state()},
               tmp / "trainer_state.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, **extra}))
    for f in tmp.iterdir():  # flush file contents before the rename makes them visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(folder: Path) -> list[Path]:
    if not folder.exists():
        return []
    found = [p for p in folder.iterdir() if p.name.startswith(PREFIX) and (p / "state.json").exists()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


class CheckpointError(RuntimeError):
    """An unreadable checkpoint (truncated or corrupt file); the message names its path."""


def read(path: Path) -> dict:
    """Every file of a checkpoint, read and parsed before anything is applied: {"weights", "trainer",
    "state"}. Raises CheckpointError naming the path."""
    try:
        return {"state": json.loads((path / "state.json").read_text()),
                "weights": load_file(path / "model.safetensors"),
                "trainer": torch.load(path / "trainer_state.pt", weights_only=True)}
    except Exception as e:  # noqa: BLE001 - any failure to read means the checkpoint is unusable
        first = (str(e).strip().splitlines() or [""])[0]
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {first})") from e


def apply(saved: dict, model, optimizer, scheduler, *, masters: dict | None = None) -> dict:
    """Restore a ``read`` checkpoint into the given objects (and float32 ``masters``, bf16 runs);
    returns its state.json."""
    weights = saved["weights"]
    # Tied weights are stored once; loading one name fills the shared tensor, so only
    # unexpected names are an error.
    unexpected = model.load_state_dict(weights, strict=False).unexpected_keys
    if unexpected:
        raise CheckpointError(f"checkpoint holds weights this model lacks: {unexpected[:5]}")
    with torch.no_grad():
        for name, master in (masters or {}).items():
            master.copy_(weights[name])
    optimizer.load_state_dict(saved["trainer"]["optimizer"])
    scheduler.load_state_dict(saved["trainer"]["scheduler"])
    _set_rng_state(saved["trainer"]["rng"])
    return saved["state"]


def load(path: Path, model, optimizer, scheduler, *, masters: dict | None = None) -> dict:
    """``apply(read(path), …)``."""
    return apply(read(path), model, optimizer, scheduler, masters=masters)
