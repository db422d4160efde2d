"""Set-up shared by every recipe: threads, seeds, process group, run folder, tokenizer, data."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data import BadRows, build_examples
from ..models import load_tokenizer
from ..models.load import packs_exactly
from ..train import RunDir
from ..train import distributed


@dataclass
class Setup:
    cfg: object
    run: RunDir
    bad: BadRows
    rank: int
    world: int
    device: torch.device
    truncated: dict = field(default_factory=dict)   # rows and tokens cut by truncation (summary.json)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def start(cfg) -> Setup:
    """Threads, process group, seeds, the run folder with its config.yaml."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rank, world, device = distributed.init(fsdp=cfg.fsdp, device=cfg.device, dtype=cfg.dtype)
    if cfg.max_prompt_length >= cfg.max_length:
        if rank == 0:
            print(f"--max_prompt_length {cfg.max_prompt_length} ≥ --max_length {cfg.max_length}: prompts are cut to "
                  f"{cfg.max_length // 2} tokens so that completions keep room")
        cfg.max_prompt_length = cfg.max_length // 2
    seed_everything(cfg.seed)
    run = RunDir(cfg.output_dir, main=rank == 0)
    run.claim(resume=cfg.resume, overwrite=cfg.overwrite)
    distributed.barrier()
    return Setup(cfg, run, BadRows(cfg.on_bad_row), rank, world, device)


def require_model(cfg) -> str:
    if not cfg.model:
        raise ValueError("--model is required (a folder or a hub name); `preftune demo` builds a tiny one")
    return cfg.model


def tokenizer_and_data(setup: Setup, expect: tuple[str, ...]):
    """Tokenizer of --model and the tokenised train / eval examples; skipped rows are written out."""
    cfg = setup.cfg
    tokenizer = load_tokenizer(require_model(cfg), trust_remote_code=cfg.trust_remote_code)
    limit = tokenizer.model_max_length
    if limit < 1_000_000 and cfg.max_length > limit:   # e.g. an encoder's 512 learned positions
        if setup.rank == 0:
            print(f"--max_length {cfg.max_length} > the model's {limit} positions: sequences are cut to {limit}")
        cfg.max_length, cfg.max_prompt_length = limit, min(cfg.max_prompt_length, limit // 2)
    def build():
        try:
            return build_examples(cfg, tokenizer, expect, setup.bad, margins=getattr(cfg, "use_margin", False),
                                  truncated=setup.truncated)
        finally:
            if setup.rank == 0:
                setup.bad.write(setup.run.path)

    train, evals, kind = once_per_node(setup, build)
    return tokenizer, train, evals, kind


def once_per_node(setup: Setup, build):
    """``build()`` run by each node's first process (LOCAL_RANK 0) alone, its result handed to the
    node's other processes through a node-local file: a dataset is tokenised once per node."""
    if setup.world == 1:
        return build()
    first = os.environ.get("LOCAL_RANK", "0") == "0"
    run = f"{os.environ.get('TORCHELASTIC_RUN_ID', '')}:{os.path.abspath(setup.cfg.output_dir)}"
    path = Path(tempfile.gettempdir()) / f"preftune-data-{hashlib.sha256(run.encode()).hexdigest()[:16]}.pkl"
    if first:
        result = build()
        with open(path.with_suffix(".tmp"), "wb") as f:
            pickle.dump(result, f)
        os.replace(path.with_suffix(".tmp"), path)
    distributed.barrier()
    if not first:
        with open(path, "rb") as f:
            result = pickle.load(f)
    distributed.barrier()
    if first:
        path.unlink()
    return result


def steps_per_epoch(setup: Setup, n_train: int) -> float:
    """Optimizer steps in one pass over ``n_train`` examples (for ``--epochs``)."""
    cfg = setup.cfg
    return n_train / (cfg.batch_size * cfg.grad_accum * setup.world)


def fingerprint(examples: list[dict]) -> str:
    """A hash of tokenised examples (ids, labels, rankings, margins): a resumed run must train on the
    same rows."""
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps({k: v for k, v in sorted(e.items())
                             if k.endswith("_ids") or k in ("label", "ranking", "margin")}).encode())
    return h.hexdigest()


def summary_extra(setup: Setup, train, evals, kind: str) -> dict:
    return {"dataset_kind": kind, "train_examples": len(train), "eval_examples": len(evals),
            "world_size": setup.world, **setup.bad.summary(), "truncated": setup.truncated}


def move(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def use_packing(setup: Setup, *models) -> bool:
    """``--packing`` where it is exact for every model that reads the batches; said once where not."""
    if not setup.cfg.packing:
        return False
    others = sorted({m.config.model_type for m in models if m is not None and not packs_exactly(m)})
    if others and setup.rank == 0:
        print(f"packing off: packed sequences would see each other in {', '.join(others)} models "
              "(attention not separated per sequence); training on padded batches")
    return not others


def shares(examples: list, batch_size: int, setup: Setup):
    """This process's share of ``examples`` (every world-th one), in batches, with each row's weight.
    Every process runs as many batches (an FSDP2 model computes collectively), so a share short of a
    row repeats its first one with weight 0."""
    count = -(-len(examples) // setup.world)
    mine = examples[setup.rank::setup.world]
    weights = [1.0] * len(mine) + [0.0] * (count - len(mine))
    mine = mine + [examples[0]] * (count - len(mine))
    for i in range(0, count, batch_size):
        yield mine[i:i + batch_size], torch.tensor(weights[i:i + batch_size])


class Means:
    """Weighted means of per-row values, over every process's rows (evaluation split across ranks)."""

    def __init__(self):
        self.sums: dict[str, list[float]] = {}

    def add(self, weights: torch.Tensor, **values: torch.Tensor) -> None:
        """values: name → (rows,) tensor; weights: (rows,) (the rows' weights, or token counts)."""
        for name, v in values.items():
            total = self.sums.setdefault(name, [0.0, 0.0])
            w = weights.to(v.device, torch.float64)
            total[0] += float((v.detach().double() * w).sum())
            total[1] += float(w.sum())

    def result(self, device) -> dict:
        names = sorted(self.sums)
        reduced = distributed.all_sum([x for n in names for x in self.sums[n]], device)
        return {n: reduced[2 * i] / max(reduced[2 * i + 1], 1e-12) for i, n in enumerate(names)}
