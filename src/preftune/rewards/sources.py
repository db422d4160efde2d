"""Reward sources. Each is a callable ``(prompts, completions) -> list[float]``.

* ``RewardModel(folder or model object)``: a reward model trained by ``preftune rm`` (or any one-output
  sequence classifier), scored at the completion's last token, batched.
* ``module:function``: any Python callable with that signature — a programmatic, ground-truth
  reward (e.g. ``preftune.tasks.sentiment:vader_reward``).
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path

import torch
from torch import nn

from ..data import Encoder, collate
from ..models import RewardScorer, load_reward_model, load_tokenizer


class RewardModel:
    """A frozen one-output classifier from a folder (with its tokenizer) or a model object (with the
    ``tokenizer`` given, or the one of the folder it was loaded from)."""

    def __init__(self, source, *, tokenizer=None, device=None, dtype: str = "float32", batch_size: int = 32,
                 max_length: int = 1024, trust_remote_code: bool = False):
        self.source = source
        if isinstance(source, nn.Module) and tokenizer is None:
            tokenizer = getattr(source.config, "_name_or_path", None)
            if not tokenizer:
                raise ValueError("reward: a reward-model object needs its tokenizer (tokenizer=)")
        self.device = device or (next(source.parameters()).device if isinstance(source, nn.Module) else
                                 torch.device("cpu"))
        self.tokenizer = load_tokenizer(tokenizer if tokenizer is not None else source,
                                        trust_remote_code=trust_remote_code)
        model = load_reward_model(source, trainable=False, pad_token_id=self.tokenizer.pad_token_id,
                                  device=self.device, dtype=dtype, trust_remote_code=trust_remote_code)
        self.scorer = RewardScorer(model).eval()
        max_length = min(max_length, self.tokenizer.model_max_length)   # an encoder's learned positions
        self.encoder = Encoder(self.tokenizer, max_length, max_length // 2)
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, prompts, completions) -> list[float]:
        seqs = []
        for p, c in zip(prompts, completions):
            _, prompt_ids, (completion_ids,) = self.encoder.encode_parts(p, [c])
            seqs.append((prompt_ids, completion_ids))
        out = []
        for i in range(0, len(seqs), self.batch_size):
            batch = collate(seqs[i:i + self.batch_size], self.tokenizer.pad_token_id)
            out += self.scorer(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)).tolist()
        return out


def load_reward_source(spec, *, tokenizer=None, **kwargs):
    """A reward-model folder (``kwargs``: device, dtype, batch_size, … of ``RewardModel``), ``module:function``
    naming a Python callable, or an object: a ``RewardModel``, a one-output classifier (scored with
    ``tokenizer``, the policy's), or a callable."""
    if isinstance(spec, RewardModel):
        return spec
    if isinstance(spec, nn.Module):
        return RewardModel(spec, tokenizer=tokenizer, **kwargs)
    if callable(spec):
        return spec
    if not isinstance(spec, (str, Path)):
        raise ValueError(f"reward: expected a reward-model folder, module:function, a model or a callable; got "
                         f"{type(spec).__name__}")
    spec = str(spec)
    if os.path.isdir(spec) or Path(spec).exists():
        return RewardModel(spec, **kwargs)
    if ":" in spec:
        module, _, name = spec.partition(":")
        try:
            fn = getattr(importlib.import_module(module), name, None)
        except ImportError as e:
            raise ValueError(f"reward {spec!r}: cannot import {module!r} ({e})") from None
        if not callable(fn):
            raise ValueError(f"reward {spec!r}: {module} has no callable {name!r}")
        return fn
    raise ValueError(f"reward {spec!r} is neither a reward-model folder nor module:function")
