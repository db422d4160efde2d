"""KTO (Ethayarajh et al. 2024): π_θ trained from unpaired completions, each labelled desirable or
undesirable, against a frozen π_ref — no pairs needed.

Each micro-batch of B rows is also scored with every prompt paired to another row's completion
(the completions rotated by one, y'_i = y_{i−1}, as TRL does): those mismatched pairs estimate the
reference point z₀ = KL(π‖π_ref) under no gradient. Preference pairs are accepted too and unpaired
(chosen → desirable, rejected → undesirable), as TRL's ``unpair_preference_dataset`` does.
"""
from __future__ import annotations

import dataclasses
from functools import partial

import torch
import torch.distributed as dist

from ..data import batch_sequences
from ..losses.preference import kto_loss, kto_reference_point
from ..models import CausalLMScorer, load_causal_lm
from ..models.load import disable_dropout
from ..models.logprobs import sequence_logps
from ..runtime.device import move
from ..train import Trainer
from ..train.loop import ExampleStream
from .common import (Inputs, Means, Parts, Result, model_options, model_source, run_recipe, shares,
                     tokenizer_and_data, use_packing)
from .reference import Reference


def unpaired(examples: list[dict]) -> list[dict]:
    """Unpaired rows as they are; preference pairs become their desirable rows, then their
    undesirable ones (as TRL's ``unpair_preference_dataset``), so neighbours — the KL estimate's
    mismatched pairs — never share a prompt by construction."""
    if all("label" in e for e in examples):
        return [{"prompt_ids": e["prompt_ids"], "completion_ids": e["completion_ids"], "label": e["label"]}
                for e in examples]
    return [{"prompt_ids": e["prompt_ids"], "completion_ids": e[f"{side}_ids"], "label": side == "chosen"}
            for side in ("chosen", "rejected") for e in examples]


def collate_kto(examples: list[dict], pad_id: int, max_length: int, packing: bool = False) -> dict:
    """The rows' (prompt, completion) sequences, their labels, and under ``kl`` the mismatched
    sequences (prompt_i, completion_{i−1}), completions cut to fit ``max_length``."""
    matched = [(e["prompt_ids"], e["completion_ids"]) for e in examples]
    mismatched = [(e["prompt_ids"], examples[i - 1]["completion_ids"][:max(1, max_length - len(e["prompt_ids"]))])
                  for i, e in enumerate(examples)]
    batch = batch_sequences(matched, pad_id, packing=packing)
    batch["label"] = torch.tensor([e["label"] for e in examples])
    batch["kl"] = batch_sequences(mismatched, pad_id, packing=packing)
    return batch


def _mean(values: torch.Tensor) -> float:
    return float(values.mean()) if len(values) else float("nan")


def row_outputs(cfg, reference: Reference, model, batch) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Per-row losses, the batch's KL reference point z₀ and the per-row values behind the metrics."""
    kl_batch = move(batch["kl"], batch["input_ids"].device)
    policy, _ = sequence_logps(model, batch)
    with torch.no_grad():
        policy_kl = sequence_logps(model, kl_batch)[0]
    ref, ref_kl = reference(batch), reference(kl_batch)
    z0 = kto_reference_point(policy_kl, ref_kl)
    if dist.is_initialized():   # one reference point for the global batch, as TRL gathers it
        dist.all_reduce(z0)
        z0 = z0 / dist.get_world_size()
    losses, rewards = kto_loss(policy, ref, batch["label"], z0, beta=cfg.beta, desirable_weight=cfg.desirable_weight,
                               undesirable_weight=cfg.undesirable_weight)
    return losses, z0, {"rewards": rewards, "logps": policy.detach()}


def make_step(cfg, reference: Reference):
    def step(model, batch):
        losses, z0, rows = row_outputs(cfg, reference, model, batch)
        label = batch["label"]
        chosen, rejected = rows["rewards"][label], rows["rewards"][~label]
        return losses.sum(), {
            "kl": float(z0), "rewards/chosen": _mean(chosen), "rewards/rejected": _mean(rejected),
            "rewards/margins": _mean(chosen) - _mean(rejected), "logps/chosen": _mean(rows["logps"][label]),
            "logps/rejected": _mean(rows["logps"][~label])}
    return step


@torch.no_grad()
def evaluate_kto(cfg, scorer, reference, examples, collate, setup) -> dict:
    """Held-out loss, KL estimate and rewards of desirable and undesirable rows; each process its
    share, in batches of ≥ 2 rows (a row's KL pair is another row's completion)."""
    scorer.eval()
    means = Means()
    count, size = -(-len(examples) // setup.world), cfg.batch_size
    while count % size == 1 and size < count:   # no last batch of a single row
        size += 1
    for part, weights in shares(examples, size, setup):
        if len(part) == 1:   # a one-row share: no other row to pair with
            continue
        batch = move(collate(part), setup.device)
        losses, z0, rows = row_outputs(cfg, reference, scorer, batch)
        label = batch["label"].cpu()
        means.add(weights, loss=losses.cpu(), kl=z0.expand(len(part)).cpu())
        means.add(weights * label, **{"rewards/chosen": rows["rewards"].cpu(), "logps/chosen": rows["logps"].cpu()})
        means.add(weights * ~label, **{"rewards/rejected": rows["rewards"].cpu(),
                                       "logps/rejected": rows["logps"].cpu()})
    out = means.result(setup.device)
    out["rewards/margins"] = out.get("rewards/chosen", 0.0) - out.get("rewards/rejected", 0.0)
    return out


def load_kto(setup, inputs: Inputs) -> Parts:
    """Paths or objects → the policy, its reference and the unpaired examples (pairs unpaired)."""
    cfg = setup.cfg
    examples = tokenizer_and_data(setup, inputs, ("unpaired", "preference"))
    examples = dataclasses.replace(examples, train=unpaired(examples.train), evals=unpaired(examples.evals))
    train = examples.train
    desirable = sum(e["label"] for e in train)
    if not 0 < desirable < len(train):
        raise ValueError(f"{cfg.data if inputs.data is None else 'data'}: KTO needs desirable and undesirable rows; "
                         f"found {desirable} of {len(train)} desirable")
    ratio = cfg.desirable_weight * desirable / (cfg.undesirable_weight * (len(train) - desirable))
    if not 1 <= ratio <= 4 / 3 and setup.rank == 0:
        print(f"kto: λ_D·n_D / (λ_U·n_U) = {ratio:.2f}; the KTO paper advises [1, 4/3] "
              "(set --desirable_weight or --undesirable_weight)")
    model = load_causal_lm(model_source(cfg, inputs), **model_options(setup))
    disable_dropout(model)
    scorer = CausalLMScorer(model)
    reference = Reference(setup, scorer, examples.tokenizer, inputs)
    return Parts(model, examples, {"scorer": scorer, "reference": reference, "desirable": desirable})


def build_kto(setup, parts: Parts) -> Trainer:
    cfg, model, examples = setup.cfg, parts.model, parts.examples
    scorer, reference, desirable = parts.extra["scorer"], parts.extra["reference"], parts.extra["desirable"]
    pad = examples.tokenizer.pad_token_id
    collate = partial(collate_kto, pad_id=pad, max_length=cfg.max_length,
                      packing=use_packing(setup, model, reference.lm))
    stream = ExampleStream(examples.train, collate, cfg.batch_size, cfg.grad_accum, seed=cfg.seed, rank=setup.rank,
                           world=setup.world)
    padded = partial(collate_kto, pad_id=pad, max_length=cfg.max_length)
    evals = examples.evals
    return Trainer(setup, scorer, stream, make_step(cfg, reference), lambda b: len(b["label"]), examples=examples,
                   save=model,
                   evaluate=(lambda: evaluate_kto(cfg, scorer, reference, evals, padded, setup)) if evals else None,
                   summary_extra={"desirable_examples": desirable,
                                  "undesirable_examples": len(examples.train) - desirable, "beta": cfg.beta})


def train_kto(cfg, inputs: Inputs | None = None, on_log=None) -> Result:
    return run_recipe(cfg, load_kto, build_kto, inputs, on_log)


def run_kto(cfg) -> dict:
    return train_kto(cfg).summary
