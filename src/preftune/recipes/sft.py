"""Supervised fine-tuning: −Σ log π(completion tokens | prompt) / #completion tokens, prompt masked.

Datasets: prompt/completion, messages, text; or, with ``--sft_on_chosen``, the chosen completions
of a preference dataset — the DPO paper's π_ref = argmax_π E[log π(y_w | x)] when no SFT model exists.
"""
from __future__ import annotations

import dataclasses
import math
from functools import partial

import torch

from ..data import IGNORE, DataError, batch_sequences, collate
from ..models import CausalLMScorer, lm_inputs, load_causal_lm
from ..runtime.device import move
from ..train import Trainer
from ..train.loop import ExampleStream
from .common import (Inputs, Means, Parts, Result, model_options, model_source, run_recipe, shares, tokenizer_and_data,
                     use_packing)


def sft_pairs(examples: list[dict]) -> list[tuple[list[int], list[int]]]:
    """(prompt_ids, completion_ids) of SFT examples, or of the chosen side of preference examples."""
    return [(e["prompt_ids"], e["completion_ids"] if "completion_ids" in e else e["chosen_ids"]) for e in examples]


def count_tokens(batch: dict) -> int:
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def sft_step(model, batch):
    return -model(**lm_inputs(batch)).logps.sum(), {}


@torch.no_grad()
def evaluate_nll(scorer, pairs, pad_id, setup) -> dict:
    """Held-out NLL per completion token and perplexity; each process its share."""
    scorer.eval()
    means = Means()
    for part, weights in shares(pairs, setup.cfg.batch_size, setup):
        out = scorer(**lm_inputs(move(collate(part, pad_id), setup.device)))
        tokens = out.mask.sum(1).cpu()
        means.add(weights * tokens, nll=-out.logps.sum(1).cpu() / tokens.clamp(min=1))
    nll = means.result(setup.device)["nll"]
    return {"nll": nll, "perplexity": math.exp(min(nll, 50))}


def load_sft(setup, inputs: Inputs) -> Parts:
    """Paths or objects → the model, its tokenizer and the SFT examples (unpaired rows: the desirable ones,
    with --desirable_only)."""
    cfg = setup.cfg
    expect = ("messages", "sft", "text", "unpaired") + (("preference",) if cfg.sft_on_chosen else ())
    examples = tokenizer_and_data(setup, inputs, expect)
    extra = {}
    if examples.kind == "unpaired":
        source = cfg.data if inputs.data is None else "data"
        if not cfg.desirable_only:
            raise DataError(source, None, "label", "unpaired rows: sft would learn the undesirable (label: false) "
                                                   "completions too; pass --desirable_only true to learn the "
                                                   "desirable ones, or train with preftune kto", kind="wrong_kind")
        extra["undesirable_rows_left_out"] = sum(not e["label"] for e in examples.train + examples.evals)
        examples = dataclasses.replace(examples, train=[e for e in examples.train if e["label"]],
                                       evals=[e for e in examples.evals if e["label"]])
        if not examples.train:
            raise DataError(source, None, "label", "no desirable (label: true) rows", kind="empty_dataset")
    model = load_causal_lm(model_source(cfg, inputs), **model_options(setup))
    return Parts(model, examples, {"summary": extra})


def build_sft(setup, parts: Parts) -> Trainer:
    cfg, model, examples = setup.cfg, parts.model, parts.examples
    scorer = CausalLMScorer(model)
    pad = examples.tokenizer.pad_token_id
    eval_pairs = sft_pairs(examples.evals)
    stream = ExampleStream(sft_pairs(examples.train),
                           partial(batch_sequences, pad_id=pad, packing=use_packing(setup, model),
                                   train_on_prompt=cfg.train_on_prompt),
                           cfg.batch_size, cfg.grad_accum, seed=cfg.seed, rank=setup.rank, world=setup.world)
    return Trainer(setup, scorer, stream, sft_step, count_tokens, examples=examples, save=model,
                   evaluate=(lambda: evaluate_nll(scorer, eval_pairs, pad, setup)) if eval_pairs else None,
                   summary_extra=parts.extra["summary"])


def train_sft(cfg, inputs: Inputs | None = None, on_log=None) -> Result:
    return run_recipe(cfg, load_sft, build_sft, inputs, on_log)


def run_sft(cfg) -> dict:
    return train_sft(cfg).summary
