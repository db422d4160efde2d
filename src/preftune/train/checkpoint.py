"""Atomic checkpoints: weights (safetensors), optimizer, scheduler, RNG states and step.

A checkpoint is written into a temporary folder and renamed into place, so a killed run leaves
either a whole checkpoint or none; ``manifest.json`` holds every file's sha256 and the weights' names
and shapes, checked before a checkpoint is used (a damaged one is named and passed over). The data
position is a function of the step (see ``ExampleStream``), so the step is all the loop needs to resume
the data.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..runtime.distributed import barrier

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


MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.rglob("*") if f.is_file() and f.name != MANIFEST)


def _publish(tmp: Path, final: Path, folder: Path, keep: int, tensors: dict | None = None) -> Path:
    """Write the manifest (sha256 of every file; ``tensors``: name → shape), flush, rename into place,
    keep the last ``keep``."""
    manifest = {"files": {str(f.relative_to(tmp)): _sha256(f) for f in _files(tmp)}, "tensors": tensors}
    (tmp / MANIFEST).write_text(json.dumps(manifest))
    for f in tmp.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


class DiskFullError(OSError):
    """No space left for a checkpoint; the message names the folder."""


@contextmanager
def _disk_full_named(tmp: Path):
    """A write that fails for want of space (ENOSPC, or torch's ``file write failed``) leaves no temporary
    folder behind and says so in one line."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if getattr(e, "errno", None) == errno.ENOSPC or "write failed" in str(e) or "No space left" in str(e):
            raise DiskFullError(f"no space left on {tmp.parent} for checkpoint {tmp.name[5:]} (it was not written; "
                                "free space, then --resume)") from None
        raise


def save(folder: Path, step: int, model, optimizer, scheduler, extra: dict, keep: int, *,
         masters: dict | None = None) -> Path:
    """One process's whole state (DDP ranks hold the same): weights, optimizer, scheduler, RNG."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{PREFIX}{step}"
    tmp = folder / f".tmp-{PREFIX}{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = trainable_state(model, masters)
    with _disk_full_named(tmp):
        save_file(weights, tmp / "model.safetensors")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state()},
                   tmp / "trainer_state.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **extra}))
        return _publish(tmp, final, folder, keep, {k: list(v.shape) for k, v in weights.items()})


def save_sharded(folder: Path, step: int, model, optimizer, scheduler, extra: dict, keep: int, *,
                 rank: int, world: int) -> Path:
    """FSDP2: each process writes its shards of the weights and optimizer state through
    ``torch.distributed.checkpoint`` into a temporary folder that rank 0 renames into place once all
    have written (a collective: every process calls it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final, tmp = folder / f"{PREFIX}{step}", folder / f".tmp-{PREFIX}{step}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(tmp / "shards"))
    if rank == 0:
        torch.save({"scheduler": scheduler.state_dict(), "rng": _rng_state()}, tmp / "trainer_state.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, "sharded_over": world, **extra}))
        _publish(tmp, final, folder, keep)
    barrier()
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
    "state"} (a sharded checkpoint's shards are read by ``apply``, collectively). Raises
    CheckpointError naming the path."""
    try:
        _verify(path)
        state = json.loads((path / "state.json").read_text())
        sharded = "sharded_over" in state
        if sharded and not (path / "shards" / ".metadata").exists():
            raise FileNotFoundError("shards/.metadata is missing")
        return {"state": state, "weights": None if sharded else load_file(path / "model.safetensors"),
                "trainer": torch.load(path / "trainer_state.pt", weights_only=True), "path": path}
    except Exception as e:  # noqa: BLE001 - any failure to read means the checkpoint is unusable
        first = (str(e).strip().splitlines() or [""])[0]
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {first})") from e


def _verify(path: Path) -> None:
    """Every file the manifest lists is there with its sha256, and no file is missing from it (a checkpoint
    from before manifests is taken as it is)."""
    if not (path / MANIFEST).exists():
        return
    manifest = json.loads((path / MANIFEST).read_text())
    for name, digest in manifest["files"].items():
        if not (path / name).is_file():
            raise FileNotFoundError(f"{name} is missing")
        if _sha256(path / name) != digest:
            raise ValueError(f"{name} does not match its checksum (damaged)")
    extra = [str(f.relative_to(path)) for f in _files(path) if str(f.relative_to(path)) not in manifest["files"]]
    if extra:
        raise ValueError(f"files not in its manifest: {', '.join(extra[:3])}")
    if manifest.get("tensors") is not None:
        with open(path / "model.safetensors", "rb") as f:   # the header: names and shapes, no tensor data
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        shapes = {k: v["shape"] for k, v in header.items() if k != "__metadata__"}
        if shapes != manifest["tensors"]:
            raise ValueError("model.safetensors does not hold the tensors its manifest names")


def state_names(model: torch.nn.Module) -> set[str]:
    """The names ``trainable_state`` saves for ``model`` (tied weights once)."""
    names, seen = set(), set()
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), t.shape) if t.numel() else None
        if key is None or key not in seen:
            names.add(name)
        seen.add(key)
    return names


def apply(saved: dict, model, optimizer, scheduler, *, masters: dict | None = None, world: int | None = None) -> dict:
    """Restore a ``read`` checkpoint into the given objects (and float32 ``masters``, bf16 runs; for a
    sharded checkpoint, ``world`` processes of an FSDP2 model, collectively); returns its state.json."""
    state = saved["state"]
    if ("sharded_over" in state) != (world is not None):
        raise CheckpointError(f"checkpoint {saved['path']} was made {'with' if 'sharded_over' in state else 'without'}"
                              " --fsdp; resume the same way")
    if world is not None:
        if state["sharded_over"] != world:
            raise CheckpointError(f"checkpoint {saved['path']} is sharded over {state['sharded_over']} processes; "
                                  f"resume with as many (not {world})")
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
        model_state, optim_state = get_state_dict(model, optimizer)
        shards = {"model": model_state, "optimizer": optim_state}
        dcp.load(shards, checkpoint_id=str(saved["path"] / "shards"))
        set_state_dict(model, optimizer, model_state_dict=shards["model"], optim_state_dict=shards["optimizer"])
    else:
        weights = saved["weights"]
        # Tied weights are stored once; loading one name fills the shared tensor, so only
        # unexpected names are an error.
        missing = sorted(state_names(model) - set(weights))
        if missing:
            raise CheckpointError(f"checkpoint {saved['path']} lacks weights this model has: {missing[:5]}")
        unexpected = model.load_state_dict(weights, strict=False).unexpected_keys
        if unexpected:
            raise CheckpointError(f"checkpoint holds weights this model lacks: {unexpected[:5]}")
        with torch.no_grad():
            for name, master in (masters or {}).items():
                master.copy_(weights[name])
        optimizer.load_state_dict(saved["trainer"]["optimizer"])
    scheduler.load_state_dict(saved["trainer"]["scheduler"])
    _set_rng_state(saved["trainer"]["rng"])
    return state


def load(path: Path, model, optimizer, scheduler, *, masters: dict | None = None) -> dict:
    """``apply(read(path), …)``."""
    return apply(read(path), model, optimizer, scheduler, masters=masters)
