"""Supervised fine-tuning: −Σ log π(completion tokens | prompt) / #completion tokens, prompt masked.

Datasets: prompt/completion, messages, text; or, with ``--sft_on_chosen``, the chosen completions
of a preference dataset — the DPO paper's π_ref = argmax_π E[log π(y_w | x)] when no SFT model exists.
"""
from __future__ import annotations

import math
from functools import partial

import torch

from ..data import DataError, batch_sequences, collate
from ..models import CausalLMScorer, lm_inputs, load_causal_lm, save_model
from ..train import Trainer
from ..train.loop import ExampleStream
from .common import (Means, fingerprint, move, shares, start, steps_per_epoch, summary_extra, tokenizer_and_data,
                     use_packing)


def sft_pairs(examples: list[dict]) -> list[tuple[list[int], list[int]]]:
    """(prompt_ids, completion_ids) of SFT examples, or of the chosen side of preference examples."""
    return [(e["prompt_ids"], e["completion_ids"] if "completion_ids" in e else e["chosen_ids"]) for e in examples]


def count_tokens(batch: dict) -> int:
    return int((batch["labels"][:, 1:] != -100).sum())


def sft_step(model, batch):
    logps, _ = model(**lm_inputs(batch))
    return -logps.sum(), {}


@torch.no_grad()
def evaluate_nll(scorer, pairs, pad_id, setup) -> dict:
    """Held-out NLL per completion token and perplexity; each process its share."""
    scorer.eval()
    means = Means()
    for part, weights in shares(pairs, setup.cfg.batch_size, setup):
        logps, mask = scorer(**lm_inputs(move(collate(part, pad_id), setup.device)))
        tokens = mask.sum(1).cpu()
        means.add(weights * tokens, nll=-logps.sum(1).cpu() / tokens.clamp(min=1))
    nll = means.result(setup.device)["nll"]
    return {"nll": nll, "perplexity": math.exp(min(nll, 50))}


def run_sft(cfg) -> dict:
    setup = start(cfg)
    expect = ("messages", "sft", "text", "unpaired") + (("preference",) if cfg.sft_on_chosen else ())
    tokenizer, train, evals, kind = tokenizer_and_data(setup, expect)
    extra = {}
    if kind == "unpaired":
        if not cfg.desirable_only:
            raise DataError(cfg.data, None, "label", "unpaired rows: sft would learn the undesirable (label: false) "
                                                     "completions too; pass --desirable_only true to learn the "
                                                     "desirable ones, or train with preftune kto", kind="wrong_kind")
        extra["undesirable_rows_left_out"] = sum(not e["label"] for e in train + evals)
        train, evals = [e for e in train if e["label"]], [e for e in evals if e["label"]]
        if not train:
            raise DataError(cfg.data, None, "label", "no desirable (label: true) rows", kind="empty_dataset")
    model = load_causal_lm(cfg.model, cfg, device=setup.device)
    scorer = CausalLMScorer(model)
    pad = tokenizer.pad_token_id
    train_pairs, eval_pairs = sft_pairs(train), sft_pairs(evals)
    stream = ExampleStream(train_pairs, partial(batch_sequences, pad_id=pad, packing=use_packing(setup, model),
                                                train_on_prompt=cfg.train_on_prompt),
                           cfg.batch_size, cfg.grad_accum, seed=cfg.seed, rank=setup.rank, world=setup.world)
    trainer = Trainer(
        cfg, setup.run, scorer, stream, sft_step, count_tokens,
        evaluate=(lambda: evaluate_nll(scorer, eval_pairs, pad, setup)) if eval_pairs else None,
        save_final=lambda: save_model(model, tokenizer, setup.run.final, merge_lora=cfg.merge_lora,
                                       main=setup.rank == 0),
        rank=setup.rank, world=setup.world, device=setup.device, data_fingerprint=fingerprint(train),
        steps_per_epoch=steps_per_epoch(setup, len(train_pairs)),
        summary_extra={**summary_extra(setup, train, evals, kind), **extra})
    return trainer.fit()
