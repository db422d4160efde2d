"""DPO and its family: π_θ trained straight from preference pairs (or rankings, with
Plackett–Luce) against a frozen π_ref — no reward model, no RL loop (Rafailov et al. 2023).

Chosen and rejected completions go through the policy in one concatenated forward pass, as in
the DPO paper's reference trainer. The reference is a frozen model, the LoRA policy with its
adapters disabled, log-probs precomputed once (cached in the run folder), or absent for
reference-free losses.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from functools import partial
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..config import SFTConfig, train_options
from ..data import batch_sequences
from ..losses.preference import LENGTH_NORMALISED, REFERENCE_FREE, plackett_luce_loss, preference_loss
from ..models import CausalLMScorer, load_causal_lm
from ..models.load import disable_dropout
from ..models.logprobs import sequence_logps
from ..runtime import distributed
from ..runtime.device import move
from ..train import Trainer
from ..train.loop import ExampleStream
from .common import (Inputs, Means, Parts, Result, model_options, model_source, run_recipe, shares,
                     tokenizer_and_data, use_packing)
from .reference import Reference


def completions_of(e: dict) -> list[list[int]]:
    """An example's completions in batch order: chosen then rejected, or the K ranked ones."""
    return e["completions_ids"] if "completions_ids" in e else [e["chosen_ids"], e["rejected_ids"]]


def collate_dpo(examples: list[dict], pad_id: int, packing: bool = False) -> dict:
    """One batch of B·K sequences ordered completion-major (all first completions, then all second
    …), so chosen = sequences [0, B) and rejected = [B, 2B) for pairs; padded or packed."""
    k = len(completions_of(examples[0]))
    seqs = [(e["prompt_ids"], completions_of(e)[j]) for j in range(k) for e in examples]
    batch = batch_sequences(seqs, pad_id, packing=packing)
    batch["ranking"] = torch.tensor([e.get("ranking", [0, 1]) for e in examples])
    if "ref_logps" in examples[0]:
        batch["ref_logps"] = torch.stack([e["ref_logps"] for e in examples])   # (B, K)
    return batch


def grouped(values: torch.Tensor, batch: dict) -> torch.Tensor:
    """(B·K,) per-sequence values of a ``collate_dpo`` batch as (B, K)."""
    return values.view(-1, batch["ranking"].shape[0]).T


def precompute(reference: Reference, examples: list[dict], pad_id: int, setup, cache: Path | None,
               weights: str) -> None:
    """Attach π_ref log-probs to each example: computed once, each process taking its share, gathered,
    and cached in the run folder by rank 0 alone (``cache`` None: kept in memory only). The cache is keyed
    by content — the reference's weights, the dtype and the rows' tokens — with the key inside the one
    safetensors file (written atomically), so a model replaced at the same path, new data or a damaged file
    computes it again."""
    key = data_key(weights, examples)
    if cache is not None and cached_key(cache) == key:
        table = load_file(cache)["ref_logps"]
    else:
        values = []
        for part, _ in shares(examples, setup.cfg.batch_size, setup):
            batch = move(collate_dpo(part, pad_id), setup.device)
            values.append(grouped(reference(batch), batch).float())
        mine = torch.cat(values)
        table = distributed.all_gather(mine).transpose(0, 1).reshape(-1, mine.shape[1])[:len(examples)].cpu()
        if cache is not None and setup.rank == 0:
            tmp = cache.with_name(f".{cache.name}.tmp")
            save_file({"ref_logps": table.contiguous()}, tmp, metadata={"key": key})
            os.replace(tmp, cache)
        distributed.barrier()
    for e, lp in zip(examples, table):
        e["ref_logps"] = lp


def cached_key(cache: Path) -> str | None:
    """The key a reference cache was written with (None: no readable cache)."""
    try:
        with safe_open(cache, "pt") as f:
            if f.keys() != ["ref_logps"]:
                return None
            return (f.metadata() or {}).get("key")
    except Exception:  # noqa: BLE001 - a missing or damaged cache is computed again
        return None


def weights_key(reference: Reference, dtype: str) -> str:
    """sha256 over the reference's weights (every tensor's name, dtype, shape and bytes, LoRA adapters
    included: they are off but must match) and the dtype the log-probs are computed in."""
    h = hashlib.sha256(dtype.encode())
    for name, t in sorted(reference.lm.state_dict().items()):
        t = t.full_tensor() if hasattr(t, "full_tensor") else t   # FSDP2: the same key on every process
        h.update(f"{name}{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def data_key(weights: str, examples: list[dict]) -> str:
    """The cache key: the reference's ``weights_key`` and the rows' tokens."""
    h = hashlib.sha256(weights.encode())
    for e in examples:
        h.update(json.dumps([e["prompt_ids"], completions_of(e)]).encode())
    return h.hexdigest()


def dpo_losses(cfg, policy, lengths, ref, ranking):
    """Per-example losses and (chosen, rejected) implicit rewards from (B, K) log-probs.
    K > 2 (rankings) trains with Plackett–Luce and reports the best and worst completions' rewards."""
    if policy.shape[1] > 2:
        losses = plackett_luce_loss(policy, ref, ranking, beta=cfg.beta)
        scores = (cfg.beta * (policy - ref)).detach()
        return losses, scores.gather(1, ranking[:, :1])[:, 0], scores.gather(1, ranking[:, -1:])[:, 0]
    policy, lengths = policy.gather(1, ranking), lengths.gather(1, ranking)   # (chosen, rejected)
    ref = None if ref is None else ref.gather(1, ranking)
    if cfg.loss in LENGTH_NORMALISED and cfg.ipo_average_logps:
        policy, ref = policy / lengths, ref / lengths
    hp = {"label_smoothing": cfg.label_smoothing, "gamma": cfg.simpo_gamma, "lambda_": cfg.dpop_lambda}
    return preference_loss(cfg.loss, policy[:, 0], policy[:, 1], None if ref is None else ref[:, 0],
                           None if ref is None else ref[:, 1], beta=cfg.beta, chosen_lengths=lengths[:, 0],
                           rejected_lengths=lengths[:, 1], **hp)


def nll_coef(cfg) -> float:
    return cfg.nll_coef if cfg.nll_coef is not None else (1.0 if cfg.loss == "orpo" else 0.0)


def pair_outputs(cfg, reference: Reference | None, model, batch) -> tuple[torch.Tensor, dict]:
    """Per-example (B,) losses (with ORPO's NLL term) and the TRL-named metrics of each example."""
    policy, lengths = (grouped(x, batch) for x in sequence_logps(model, batch))
    if "ref_logps" in batch:
        ref = batch["ref_logps"]
    else:
        ref = None if reference is None else grouped(reference(batch), batch)
    ranking = batch["ranking"]
    losses, chosen_r, rejected_r = dpo_losses(cfg, policy, lengths, ref, ranking)
    best = policy.gather(1, ranking[:, :1])[:, 0]
    worst = policy.gather(1, ranking[:, -1:])[:, 0]
    coef = nll_coef(cfg)
    if coef:
        losses = losses + coef * (-best / lengths.gather(1, ranking[:, :1])[:, 0])
    return losses, {"rewards/chosen": chosen_r, "rewards/rejected": rejected_r,
                    "rewards/accuracies": (chosen_r > rejected_r).float(), "rewards/margins": chosen_r - rejected_r,
                    "logps/chosen": best.detach(), "logps/rejected": worst.detach()}


def make_step(cfg, reference: Reference | None):
    def step(model, batch):
        losses, rows = pair_outputs(cfg, reference, model, batch)
        return losses.sum(), {k: float(v.mean()) for k, v in rows.items()}
    return step


@torch.no_grad()
def evaluate_dpo(cfg, scorer, reference, examples, pad_id, setup) -> dict:
    """Held-out loss, implicit-reward preference accuracy and margins; each process its share."""
    scorer.eval()
    means = Means()
    for part, weights in shares(examples, cfg.batch_size, setup):
        losses, rows = pair_outputs(cfg, reference, scorer, move(collate_dpo(part, pad_id), setup.device))
        means.add(weights, loss=losses, **rows)
    return means.result(setup.device)


def sft_phase(cfg) -> SFTConfig:
    """The SFT phase's config: the training options every command shares (data, lengths, batches, device,
    …) as dpo was given them, SFT's own learning rate, ``--sft_steps`` steps, no LoRA, no checkpoints."""
    folder = None if cfg.output_dir is None else str(Path(cfg.output_dir) / "sft")
    return SFTConfig(**{**train_options(cfg), "output_dir": folder, "max_steps": cfg.sft_steps, "epochs": None,
                        "lr": SFTConfig.lr, "save_steps": 0, "lora_r": 0,
                        "resume": folder is not None and not cfg.overwrite, "overwrite": cfg.overwrite},
                     sft_on_chosen=True)


def sft_reference_first(cfg, inputs: Inputs):
    """The notes' recipe when no SFT model exists: π_ref = argmax_π E[log π(y_w | x)], then DPO from it.
    With a run folder the phase runs once into ``<output_dir>/sft`` (a killed phase starts over) and DPO
    starts from its final/; without one, from the model it returns."""
    from .sft import train_sft
    sft_cfg = sft_phase(cfg)
    if sft_cfg.output_dir is None:
        result = train_sft(sft_cfg, inputs)
        return dataclasses.replace(cfg, sft_on_chosen=False), dataclasses.replace(
            inputs, model=result.model, tokenizer=result.tokenizer)
    if sft_cfg.overwrite or not (Path(sft_cfg.output_dir) / "summary.json").exists():
        train_sft(sft_cfg, inputs)   # --overwrite trains the phase again (its data or model may be new)
    final = str(Path(sft_cfg.output_dir) / "final")
    return dataclasses.replace(cfg, model=final, sft_on_chosen=False), dataclasses.replace(
        inputs, model=None, tokenizer=None)


def load_dpo(setup, inputs: Inputs) -> Parts:
    """Paths or objects → the policy, its reference (or, with --ref precomputed, the reference's log-probs
    attached to the examples) and the pair / ranking examples."""
    cfg = setup.cfg
    examples = tokenizer_and_data(setup, inputs, ("ranking", "preference"))
    if examples.kind == "ranking":
        ks = {len(e["completions_ids"]) for e in examples.train + examples.evals}
        if len(ks) > 1:
            raise ValueError(f"{cfg.data if inputs.data is None else 'data'}: ranking rows must all have the same "
                             f"number of completions, found {sorted(ks)}")
        if ks != {2} and (cfg.loss != "sigmoid" or cfg.ref == "none"):
            raise ValueError("ranking data trains with Plackett–Luce: use --loss sigmoid with a reference")
    model = load_causal_lm(model_source(cfg, inputs), **model_options(setup))
    disable_dropout(model)
    scorer = CausalLMScorer(model)
    reference = None if cfg.loss in REFERENCE_FREE else Reference(setup, scorer, examples.tokenizer, inputs)
    if cfg.ref == "precomputed" and reference is not None:
        weights = weights_key(reference, cfg.dtype)   # hashed once for both splits
        for name, part in (("train", examples.train), ("eval", examples.evals)):
            if part:
                cache = None if setup.run.path is None else setup.run.path / f"ref_logps_{name}.safetensors"
                precompute(reference, part, examples.tokenizer.pad_token_id, setup, cache, weights)
        reference = None   # free the reference: its log-probs now travel with the data
    return Parts(model, examples, {"scorer": scorer, "reference": reference})


def build_dpo(setup, parts: Parts) -> Trainer:
    cfg, model, examples = setup.cfg, parts.model, parts.examples
    scorer, reference = parts.extra["scorer"], parts.extra["reference"]
    pad = examples.tokenizer.pad_token_id
    packing = use_packing(setup, model, reference.lm if reference is not None else None)
    stream = ExampleStream(examples.train, partial(collate_dpo, pad_id=pad, packing=packing), cfg.batch_size,
                           cfg.grad_accum, seed=cfg.seed, rank=setup.rank, world=setup.world)
    evals = examples.evals
    return Trainer(setup, scorer, stream, make_step(cfg, reference), lambda b: b["ranking"].shape[0],
                   examples=examples, save=model,
                   evaluate=(lambda: evaluate_dpo(cfg, scorer, reference, evals, pad, setup)) if evals else None,
                   summary_extra={"loss": cfg.loss, "beta": cfg.beta, "ref": cfg.ref})


def train_dpo(cfg, inputs: Inputs | None = None, on_log=None) -> Result:
    if cfg.ref == "none" and cfg.loss not in REFERENCE_FREE:
        raise ValueError(f"--ref none works only with a reference-free loss ({', '.join(sorted(REFERENCE_FREE))})")
    inputs = inputs or Inputs()
    if cfg.sft_on_chosen:
        cfg, inputs = sft_reference_first(cfg, inputs)
    return run_recipe(cfg, load_dpo, build_dpo, inputs, on_log)


def run_dpo(cfg) -> dict:
    return train_dpo(cfg).summary
