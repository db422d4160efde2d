"""Reward model: AutoModelForSequenceClassification with one output, read at the last real token.

Pairwise data trains with Bradley–Terry, −log σ(r_w − r_l − margin); ranking data with all C(K,2)
ordered pairs of a prompt in one batch element (InstructGPT), one forward pass per completion, or
with the K-way best-of-n cross-entropy.
"""
from __future__ import annotations

from functools import partial

import torch

from ..data import batch_sequences
from ..losses.reward import best_of_n_loss, centering_loss, pairwise_loss, ranking_loss
from ..models import RewardScorer, load_reward_model, rm_inputs, save_model
from ..models.load import disable_dropout
from ..train import Trainer
from ..train.loop import ExampleStream
from .common import fingerprint, move, start, steps_per_epoch, summary_extra, tokenizer_and_data, use_packing


def groups(examples: list[dict]) -> list[dict]:
    """Each example as K completions with a ranking (a preference pair is K = 2, chosen first)."""
    out = []
    for e in examples:
        if "completions_ids" in e:
            out.append({"prompt_ids": e["prompt_ids"], "completions": e["completions_ids"], "ranking": e["ranking"]})
        else:
            out.append({"prompt_ids": e["prompt_ids"], "completions": [e["chosen_ids"], e["rejected_ids"]],
                        "ranking": [0, 1], "margin": e.get("margin")})
    return out


def collate_groups(items: list[dict], pad_id: int, packing: bool = False) -> dict:
    """All completions of all prompts flattened into one batch (one forward pass per completion)."""
    batch = batch_sequences([(g["prompt_ids"], c) for g in items for c in g["completions"]], pad_id, packing=packing)
    batch["group_sizes"] = torch.tensor([len(g["completions"]) for g in items])
    batch["rankings"] = [torch.tensor(g["ranking"]) for g in items]
    margins = [g.get("margin") for g in items]
    batch["margins"] = None if any(m is None for m in margins) else torch.tensor(margins, dtype=torch.float32)
    return batch


def group_losses(rewards: torch.Tensor, batch: dict, objective: str, use_margin: bool):
    """Per-prompt losses and per-prompt (correctly ordered pairs, pairs, mean best-minus-worst margin)."""
    losses, correct, pairs, margins = [], 0, 0, []
    start = 0
    for size, ranking in zip(batch["group_sizes"].tolist(), batch["rankings"]):
        r = rewards[start:start + size][None]
        ranking = ranking.to(r.device)[None]
        start += size
        if size == 2 and use_margin and batch["margins"] is not None:
            i = len(losses)
            losses.append(pairwise_loss(r[:, ranking[0, 0]], r[:, ranking[0, 1]], margin=batch["margins"][i:i + 1].to(r.device)))
        elif objective == "best_of_n" and size > 2:
            losses.append(best_of_n_loss(r, ranking[:, 0]))
        else:
            losses.append(ranking_loss(r, ranking))
        ordered = r.gather(1, ranking)[0].detach()
        diffs = ordered[:, None] - ordered[None, :]
        upper = torch.triu(torch.ones(size, size, dtype=torch.bool, device=r.device), 1)
        correct += int((diffs[upper] > 0).sum())
        pairs += int(upper.sum())
        margins.append(float(ordered[0] - ordered[-1]))
    return torch.cat(losses), correct, pairs, margins


def make_step(cfg):
    def step(model, batch):
        rewards = model(**rm_inputs(batch))
        losses, correct, pairs, margins = group_losses(rewards, batch, cfg.ranking_objective, cfg.use_margin)
        loss = losses.sum()
        if cfg.center_rewards_coef:
            loss = loss + centering_loss(rewards, cfg.center_rewards_coef).mean() * len(losses)
        return loss, {"accuracy": correct / max(pairs, 1), "margin": sum(margins) / len(margins),
                      "rewards/mean": float(rewards.detach().mean())}
    return step


@torch.no_grad()
def evaluate_rm(scorer, items, pad_id, batch_size, device, cfg) -> dict:
    scorer.eval()
    loss, correct, pairs, margins = 0.0, 0, 0, []
    for i in range(0, len(items), batch_size):
        batch = move(collate_groups(items[i:i + batch_size], pad_id), device)
        losses, c, p, m = group_losses(scorer(**rm_inputs(batch)), batch,
                                       cfg.ranking_objective, cfg.use_margin)
        loss += float(losses.sum())
        correct, pairs, margins = correct + c, pairs + p, margins + m
    return {"loss": loss / max(len(items), 1), "accuracy": correct / max(pairs, 1),
            "margin": sum(margins) / max(len(margins), 1)}


def run_rm(cfg) -> dict:
    setup = start(cfg)
    tokenizer, train, evals, kind = tokenizer_and_data(setup, ("ranking", "preference"))
    model = load_reward_model(cfg.model, cfg, pad_token_id=tokenizer.pad_token_id).to(setup.device)
    disable_dropout(model)
    scorer = RewardScorer(model)
    pad = tokenizer.pad_token_id
    train_items, eval_items = groups(train), groups(evals)
    stream = ExampleStream(train_items, partial(collate_groups, pad_id=pad, packing=use_packing(setup, model)),
                           cfg.batch_size, cfg.grad_accum,
                           seed=cfg.seed, rank=setup.rank, world=setup.world)
    trainer = Trainer(
        cfg, setup.run, scorer, stream, make_step(cfg), lambda b: len(b["group_sizes"]),
        evaluate=(lambda: evaluate_rm(scorer, eval_items, pad, cfg.batch_size, setup.device, cfg)) if eval_items else None,
        save_final=lambda: save_model(model, tokenizer, setup.run.final, merge_lora=cfg.merge_lora),
        rank=setup.rank, world=setup.world, device=setup.device, data_fingerprint=fingerprint(train),
        steps_per_epoch=steps_per_epoch(setup, len(train_items)),
        summary_extra=summary_extra(setup, train, evals, kind))
    return trainer.fit()
