"""What every recipe shares: the objects a Python caller may hand in (``Inputs``), the result it gets
back (``Result``), the model-loading options of a config, the tokenizer and data, and the composition
``run_recipe(cfg, load, build)`` — a loader (paths or objects → a recipe's parts) under a builder (parts →
``Trainer``) — that every ``run_x(cfg)`` and ``preftune.x(...)`` is."""
from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..data import build_examples
from ..models import LoraSpec, load_tokenizer
from ..models.load import packs_exactly
from ..runtime import distributed
from ..train import Trainer
from ..train.setup import Examples, Setup, start


@dataclass
class Inputs:
    """Objects a Python caller hands a recipe in place of the config's paths (None: the path)."""
    model: Any = None         # a PreTrainedModel or PeftModel, trained in place
    tokenizer: Any = None     # a tokenizer object
    data: Any = None          # an iterable of row dicts or a datasets.Dataset
    eval_data: Any = None
    ref_model: Any = None     # a frozen reference PreTrainedModel
    reward: Any = None        # a reward model, a callable, or a list of them (ppo)
    value_model: Any = None   # the critic's initial model (ppo)


@dataclass
class Result:
    """What a training run gives back: the trained model (on its device; a PeftModel keeps its adapters),
    its tokenizer, summary.json's content and every logged metrics record."""
    model: Any
    tokenizer: Any
    summary: dict
    metrics: list[dict] = field(default_factory=list)


def model_source(cfg, inputs: Inputs):
    """The model object the caller gave, else ``--model``."""
    if inputs.model is not None:
        return inputs.model
    if not cfg.model:
        raise ValueError("--model is required (a folder or a hub name); `preftune demo` builds a tiny one")
    return cfg.model


def tokenizer_source(cfg, inputs: Inputs):
    """The tokenizer object the caller gave, else ``--model``'s; for a model object without one, the
    folder or hub name it was loaded from (as TRL does: ``model.config._name_or_path``)."""
    if inputs.tokenizer is not None:
        return inputs.tokenizer
    source = model_source(cfg, inputs)
    if isinstance(source, torch.nn.Module):
        name = getattr(getattr(source, "config", None), "_name_or_path", "") or ""
        if not name:
            raise ValueError("tokenizer: the model object names no folder it came from; pass tokenizer=")
        return name
    return source


def lora_spec(cfg) -> LoraSpec | None:
    return LoraSpec(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, tuple(cfg.lora_target_modules)) \
        if cfg.lora_r > 0 else None


def model_options(setup: Setup, *, trainable: bool = True) -> dict:
    """The keyword arguments of ``load_causal_lm`` / ``load_reward_model`` that a training config sets."""
    cfg = setup.cfg
    return {"trainable": trainable, "device": setup.device, "dtype": cfg.dtype,
            "trust_remote_code": cfg.trust_remote_code, "gradient_checkpointing": cfg.gradient_checkpointing,
            "lora": lora_spec(cfg) if trainable else None}


def tokenizer_and_data(setup: Setup, inputs: Inputs, expect: tuple[str, ...]) -> Examples:
    """Tokenizer of --model (or the caller's) and the tokenised train / eval examples; skipped rows are
    written out."""
    cfg = setup.cfg
    tokenizer = load_tokenizer(tokenizer_source(cfg, inputs), trust_remote_code=cfg.trust_remote_code)
    limit = tokenizer.model_max_length
    if limit < 1_000_000 and cfg.max_length > limit:   # e.g. an encoder's 512 learned positions
        if setup.rank == 0:
            print(f"--max_length {cfg.max_length} > the model's {limit} positions: sequences are cut to {limit}")
        cfg.max_length, cfg.max_prompt_length = limit, min(cfg.max_prompt_length, limit // 2)

    def build():
        try:
            return build_examples(cfg, tokenizer, expect, setup.bad, margins=getattr(cfg, "use_margin", False),
                                  truncated=setup.truncated, data=inputs.data, eval_data=inputs.eval_data)
        finally:
            if setup.run.main:
                setup.bad.write(setup.run.path)

    train, evals, kind = once_per_node(setup, build)
    return Examples(tokenizer, train, evals, kind)


@dataclass
class Parts:
    """What a recipe's loader hands its builder: the model the run trains and returns, the examples, and
    whatever else the recipe loaded (reference, reward, critic, …)."""
    model: Any
    examples: Examples
    extra: dict = field(default_factory=dict)


def run_recipe(cfg, load: Callable[[Setup, Inputs], Parts], build: Callable[[Setup, Parts], Trainer],
               inputs: Inputs | None = None, on_log: Callable[[dict], None] | None = None) -> Result:
    """``build(setup, load(setup, inputs)).fit()``: the run from its config and the caller's objects."""
    setup = start(cfg)
    parts = load(setup, inputs or Inputs())
    trainer = build(setup, parts)
    if on_log is not None:
        trainer.on_log.append(on_log)
    summary = trainer.fit()
    return Result(parts.model, parts.examples.tokenizer, summary, trainer.logged)


def once_per_node(setup: Setup, build):
    """``build()`` run by each node's first process (LOCAL_RANK 0) alone, its result handed to the
    node's other processes through a node-local file: a dataset is tokenised once per node."""
    if setup.world == 1:
        return build()
    first = os.environ.get("LOCAL_RANK", "0") == "0"
    run = f"{os.environ.get('TORCHELASTIC_RUN_ID', '')}:{os.path.abspath(str(setup.cfg.output_dir))}"
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
