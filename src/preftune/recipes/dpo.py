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
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..config import SFTConfig
from ..data import batch_sequences
from ..losses.preference import LENGTH_NORMALISED, REFERENCE_FREE, plackett_luce_loss, preference_loss
from ..models import CausalLMScorer, load_causal_lm, save_model
from ..models.load import disable_dropout
from ..models.logprobs import sequence_logps
from ..train import Trainer
from ..train.loop import ExampleStream
from .common import fingerprint, move, start, steps_per_epoch, summary_extra, tokenizer_and_data, use_packing
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


def precompute(reference: Reference, examples: list[dict], pad_id: int, batch_size: int, device,
               cache: Path, key: str) -> None:
    """Attach π_ref log-probs to each example, computed once and cached in the run folder."""
    if cache.exists():
        stored = load_file(cache)
        meta = json.loads(cache.with_suffix(".json").read_text())
        if meta.get("key") == key and len(stored["ref_logps"]) == len(examples):
            for e, lp in zip(examples, stored["ref_logps"]):
                e["ref_logps"] = lp
            return
    values = []
    for i in range(0, len(examples), batch_size):
        batch = move(collate_dpo(examples[i:i + batch_size], pad_id), device)
        values.append(grouped(reference(batch), batch).float().cpu())
    table = torch.cat(values)
    for e, lp in zip(examples, table):
        e["ref_logps"] = lp
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_file({"ref_logps": table.contiguous()}, cache)
    cache.with_suffix(".json").write_text(json.dumps({"key": key}))


def data_key(cfg, examples) -> str:
    h = hashlib.sha256(json.dumps([cfg.ref_model or cfg.model, cfg.dtype]).encode())
    for e in examples:
        h.update(json.dumps([e["prompt_ids"], completions_of(e)]).encode())
    return h.hexdigest()


def pair_metrics(chosen_rewards, rejected_rewards, chosen_logps, rejected_logps) -> dict:
    return {"rewards/chosen": float(chosen_rewards.mean()), "rewards/rejected": float(rejected_rewards.mean()),
            "rewards/accuracies": float((chosen_rewards > rejected_rewards).float().mean()),
            "rewards/margins": float((chosen_rewards - rejected_rewards).mean()),
            "logps/chosen": float(chosen_logps.detach().mean()), "logps/rejected": float(rejected_logps.detach().mean())}


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
    hp = {"label_smoothing": cfg.label_smoothing, "gamma": cfg.gamma, "lambda_": cfg.lambda_}
    return preference_loss(cfg.loss, policy[:, 0], policy[:, 1], None if ref is None else ref[:, 0],
                           None if ref is None else ref[:, 1], beta=cfg.beta, chosen_lengths=lengths[:, 0],
                           rejected_lengths=lengths[:, 1], **hp)


def nll_coef(cfg) -> float:
    return cfg.nll_coef if cfg.nll_coef is not None else (1.0 if cfg.loss == "orpo" else 0.0)


def make_step(cfg, reference: Reference | None):
    coef = nll_coef(cfg)

    def step(model, batch):
        policy, lengths = (grouped(x, batch) for x in sequence_logps(model, batch))
        if "ref_logps" in batch:
            ref = batch["ref_logps"]
        else:
            ref = None if reference is None else grouped(reference(batch), batch)
        ranking = batch["ranking"]
        losses, chosen_r, rejected_r = dpo_losses(cfg, policy, lengths, ref, ranking)
        loss = losses.sum()
        best = policy.gather(1, ranking[:, :1])[:, 0]
        worst = policy.gather(1, ranking[:, -1:])[:, 0]
        if coef:
            best_len = lengths.gather(1, ranking[:, :1])[:, 0]
            loss = loss + coef * (-best / best_len).sum()
        return loss, pair_metrics(chosen_r, rejected_r, best, worst)
    return step


@torch.no_grad()
def evaluate_dpo(cfg, scorer, reference, examples, pad_id, device) -> dict:
    """Held-out loss, implicit-reward preference accuracy and margins."""
    scorer.eval()
    sums, n = {}, 0
    step = make_step(cfg, reference)
    for i in range(0, len(examples), cfg.batch_size):
        part = examples[i:i + cfg.batch_size]
        loss, metrics = step(scorer, move(collate_dpo(part, pad_id), device))
        for k, v in {"loss": float(loss) / len(part), **metrics}.items():
            sums[k] = sums.get(k, 0.0) + v * len(part)
        n += len(part)
    return {k: v / max(n, 1) for k, v in sums.items()}


def sft_reference_first(cfg) -> str:
    """The notes' recipe when no SFT model exists: π_ref = argmax_π E[log π(y_w | x)]."""
    from .sft import run_sft
    fields = {f.name for f in dataclasses.fields(SFTConfig)}
    sft_cfg = SFTConfig(**{k: v for k, v in dataclasses.asdict(cfg).items() if k in fields})
    sft_cfg.output_dir = str(Path(cfg.output_dir) / "sft")
    sft_cfg.max_steps, sft_cfg.epochs, sft_cfg.sft_on_chosen, sft_cfg.lr = cfg.sft_steps, None, True, SFTConfig.lr
    sft_cfg.save_steps, sft_cfg.lora_r, sft_cfg.resume, sft_cfg.overwrite = 0, 0, True, False
    if not (Path(sft_cfg.output_dir) / "summary.json").exists():   # done once; a killed phase starts over
        run_sft(sft_cfg)
    return str(Path(sft_cfg.output_dir) / "final")


def run_dpo(cfg) -> dict:
    if cfg.ref == "none" and cfg.loss not in REFERENCE_FREE:
        raise ValueError(f"--ref none works only with a reference-free loss ({', '.join(sorted(REFERENCE_FREE))})")
    if cfg.sft_on_chosen:
        cfg = dataclasses.replace(cfg, model=sft_reference_first(cfg), sft_on_chosen=False)
    setup = start(cfg)
    tokenizer, train, evals, kind = tokenizer_and_data(setup, ("ranking", "preference"))
    if kind == "ranking":
        ks = {len(e["completions_ids"]) for e in train + evals}
        if len(ks) > 1:
            raise ValueError(f"{cfg.data}: ranking rows must all have the same number of completions, found {sorted(ks)}")
        if ks != {2} and (cfg.loss != "sigmoid" or cfg.ref == "none"):
            raise ValueError("ranking data trains with Plackett–Luce: use --loss sigmoid with a reference")
    model = load_causal_lm(cfg.model, cfg).to(setup.device)
    disable_dropout(model)
    scorer = CausalLMScorer(model)
    reference = None if cfg.loss in REFERENCE_FREE else Reference(cfg, model, tokenizer, setup.device)
    pad = tokenizer.pad_token_id
    if cfg.ref == "precomputed" and reference is not None:
        for name, part in (("train", train), ("eval", evals)):
            if part:
                precompute(reference, part, pad, cfg.batch_size, setup.device,
                           setup.run.path / f"ref_logps_{name}.safetensors", data_key(cfg, part))
        reference = None   # free the reference: its log-probs now travel with the data
    packing = use_packing(setup, model, reference.lm if reference is not None else None)
    stream = ExampleStream(train, partial(collate_dpo, pad_id=pad, packing=packing), cfg.batch_size, cfg.grad_accum,
                           seed=cfg.seed, rank=setup.rank, world=setup.world)
    trainer = Trainer(
        cfg, setup.run, scorer, stream, make_step(cfg, reference), lambda b: b["ranking"].shape[0],
        evaluate=(lambda: evaluate_dpo(cfg, scorer, reference, evals, pad, setup.device)) if evals else None,
        save_final=lambda: save_model(model, tokenizer, setup.run.final, merge_lora=cfg.merge_lora),
        rank=setup.rank, world=setup.world, device=setup.device, data_fingerprint=fingerprint(train),
        steps_per_epoch=steps_per_epoch(setup, len(train)),
        summary_extra={**summary_extra(setup, train, evals, kind), "loss": cfg.loss, "beta": cfg.beta, "ref": cfg.ref})
    return trainer.fit()
