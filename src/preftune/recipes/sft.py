"""Supervised fine-tuning: −Σ log π(completion tokens | prompt) / #completion tokens, prompt masked.

Datasets: prompt/completion, messages, text; or, with ``--sft_on_chosen``, the chosen completions
of a preference dataset — the DPO paper's π_ref = argmax_π E[log π(y_w | x)] when no SFT model exists.
"""
from __future__ import annotations

import math
from functools import partial

import torch

from ..data import batch_sequences, collate
from ..models import CausalLMScorer, lm_inputs, load_causal_lm, save_model
from ..train import Trainer
from ..train.loop import ExampleStream
from .common import move, start, summary_extra, tokenizer_and_data, use_packing


def sft_pairs(examples: list[dict]) -> list[tuple[list[int], list[int]]]:
    """(prompt_ids, completion_ids) of SFT examples, or of the chosen side of preference examples."""
    return [(e["prompt_ids"], e["completion_ids"] if "completion_ids" in e else e["chosen_ids"]) for e in examples]


def count_tokens(batch: dict) -> int:
    return int((batch["labels"][:, 1:] != -100).sum())


def sft_step(model, batch):
    logps, _ = model(**lm_inputs(batch))
    return -logps.sum(), {}


@torch.no_grad()
def evaluate_nll(scorer, pairs, pad_id, batch_size, device) -> dict:
    scorer.eval()
    total, count = 0.0, 0
    for i in range(0, len(pairs), batch_size):
        batch = move(collate(pairs[i:i + batch_size], pad_id), device)
        logps, mask = scorer(**lm_inputs(batch))
        total += -float(logps.sum())
        count += int(mask.sum())
    nll = total / max(count, 1)
    return {"nll": nll, "perplexity": math.exp(min(nll, 50))}


def run_sft(cfg) -> dict:
    setup = start(cfg)
    expect = ("messages", "sft", "text") + (("preference",) if cfg.sft_on_chosen else ())
    tokenizer, train, evals, kind = tokenizer_and_data(setup, expect)
    model = load_causal_lm(cfg.model, cfg).to(setup.device)
    scorer = CausalLMScorer(model)
    pad = tokenizer.pad_token_id
    train_pairs, eval_pairs = sft_pairs(train), sft_pairs(evals)
    stream = ExampleStream(train_pairs, partial(batch_sequences, pad_id=pad, packing=use_packing(setup, model),
                                                train_on_prompt=cfg.train_on_prompt),
                           cfg.batch_size, cfg.grad_accum, seed=cfg.seed, rank=setup.rank, world=setup.world)
    trainer = Trainer(
        cfg, setup.run, scorer, stream, sft_step, count_tokens,
        evaluate=(lambda: evaluate_nll(scorer, eval_pairs, pad, cfg.batch_size, setup.device)) if eval_pairs else None,
        save_final=lambda: save_model(model, tokenizer, setup.run.final, merge_lora=cfg.merge_lora),
        rank=setup.rank, world=setup.world, device=setup.device,
        summary_extra=summary_extra(setup, train, evals, kind))
    return trainer.fit()
