"""Reward sources. Each is a callable ``(prompts, completions) -> list[float]``.

* ``RewardModel(folder)``: a reward model trained by ``preftune rm`` (or any one-output
  sequence classifier), scored at the completion's last token, batched.
* ``module:function``: any Python callable with that signature — a programmatic, ground-truth
  reward (e.g. ``preftune.tasks.sentiment:vader_reward``).
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import SimpleNamespace

import torch

from ..data import Encoder, collate
from ..models import RewardScorer, load_reward_model, load_tokenizer


class RewardModel:
    def __init__(self, path: str, *, device=None, dtype: str = "float32", batch_size: int = 32, max_length: int = 1024,
                 trust_remote_code: bool = False):
        self.device = device or torch.device("cpu")
        self.tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        model = load_reward_model(path, SimpleNamespace(dtype=dtype, trust_remote_code=trust_remote_code),
                                  trainable=False, pad_token_id=self.tokenizer.pad_token_id, device=self.device)
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


def load_reward_source(spec: str, **kwargs):
    """A reward-model folder (``kwargs``: device, dtype, batch_size, … of ``RewardModel``), or
    ``module:function`` naming a Python callable."""
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
