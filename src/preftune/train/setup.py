"""What every training run starts from: its config, run folder, process group and device (``Setup``),
and its tokenised rows (``Examples``)."""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data import BadRows
from ..runtime import distributed
from .run import ARTEFACTS, INPUT_OPTIONS, RunDir


@dataclass
class Setup:
    cfg: object                    # the command's TrainConfig subclass
    run: RunDir                    # the run folder (``RunDir(None)``: nothing is written)
    bad: BadRows                   # rows skipped under --on_bad_row skip
    rank: int
    world: int
    device: torch.device
    truncated: dict = field(default_factory=dict)   # rows and tokens cut by truncation (summary.json)

    @property
    def main(self) -> bool:
        return self.rank == 0


def seed_everything(seed: int) -> None:
    """The run's ``--seed`` for Python's, NumPy's and torch's global generators (as transformers'
    ``set_seed``): weights of new heads, dropout and sampling draw from them."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def start(cfg) -> Setup:
    """Threads (only when ``--threads`` asks), process group, seeds, the run folder locked."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rank, world, device = distributed.init(fsdp=cfg.fsdp, device=cfg.device)
    if cfg.max_prompt_length >= cfg.max_length:
        if rank == 0:
            print(f"--max_prompt_length {cfg.max_prompt_length} ≥ --max_length {cfg.max_length}: prompts are cut to "
                  f"{cfg.max_length // 2} tokens so that completions keep room")
        cfg.max_prompt_length = cfg.max_length // 2
    seed_everything(cfg.seed)
    refuse_reading_inside(cfg)
    run = RunDir(cfg.output_dir, main=rank == 0)
    run.claim(resume=cfg.resume, overwrite=cfg.overwrite)
    distributed.barrier()
    return Setup(cfg, run, BadRows(cfg.on_bad_row), rank, world, device)


def refuse_reading_inside(cfg) -> None:
    """A run must not write where it reads: ``--output_dir`` may not be an input, lie inside one, or hold one
    among its run artefacts (``--overwrite`` removes them: a model given as ``R/final`` would go). An input
    elsewhere in the folder (a phase's own ``sft/final``) is left alone by ``--overwrite`` and allowed."""
    if cfg.output_dir is None:
        return
    out = Path(cfg.output_dir).resolve()
    for option in INPUT_OPTIONS:
        value = getattr(cfg, option, None)
        if not isinstance(value, str) or not Path(value).exists():
            continue
        read = Path(value).resolve()
        if read == out or read in out.parents or any(read == out / a or out / a in read.parents for a in ARTEFACTS):
            where = "is" if read == out else "is inside" if read in out.parents else "holds"
            raise ValueError(f"--output_dir {cfg.output_dir} {where} --{option} {value}: a run must not write where "
                             "it reads (--overwrite would delete it); choose another --output_dir")


@dataclass
class Examples:
    """A run's tokenizer and tokenised rows (``data.build_examples``)."""
    tokenizer: object
    train: list[dict]
    evals: list[dict]
    kind: str

    def fingerprint(self) -> str:
        """A hash of the training rows' ids, labels, rankings and margins: a resumed run must train on the
        same rows."""
        h = hashlib.sha256()
        for e in self.train:
            h.update(json.dumps({k: v for k, v in sorted(e.items())
                                 if k.endswith("_ids") or k in ("label", "ranking", "margin")}).encode())
        return h.hexdigest()

    def summary(self, setup: Setup) -> dict:
        return {"dataset_kind": self.kind, "train_examples": len(self.train), "eval_examples": len(self.evals),
                "world_size": setup.world, **setup.bad.summary(), "truncated": setup.truncated}
