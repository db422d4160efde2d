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
from ..models import RewardScorer, load_reward_model, rm_inputs
from ..models.load import disable_dropout
from ..runtime.device import move
from ..train import Trainer
from ..train.loop import ExampleStream
from .common import (Inputs, Means, Parts, Result, model_options, model_source, run_recipe, shares, tokenizer_and_data,
                     use_packing)


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
    """Per-prompt losses, correctly ordered pairs, pairs and best-minus-worst reward margins, each (G,)."""
    losses, correct, pairs, margins = [], [], [], []
    start = 0
    for size, ranking in zip(batch["group_sizes"].tolist(), batch["rankings"]):
        r = rewards[start:start + size][None]
        ranking = ranking.to(r.device)[None]
        start += size
        if size == 2 and use_margin and batch["margins"] is not None:
            i = len(losses)
            losses.append(pairwise_loss(r[:, ranking[0, 0]], r[:, ranking[0, 1]],
                                        margin=batch["margins"][i:i + 1].to(r.device)))
        elif objective == "best_of_n" and size > 2:
            losses.append(best_of_n_loss(r, ranking[:, 0]))
        else:
            losses.append(ranking_loss(r, ranking))
        ordered = r.gather(1, ranking)[0].detach()
        upper = torch.triu(torch.ones(size, size, dtype=torch.bool, device=r.device), 1)
        correct.append(float(((ordered[:, None] - ordered[None, :])[upper] > 0).sum()))
        pairs.append(float(upper.sum()))
        margins.append(float(ordered[0] - ordered[-1]))
    return torch.cat(losses), *(torch.tensor(x) for x in (correct, pairs, margins))


def make_step(cfg):
    def step(model, batch):
        rewards = model(**rm_inputs(batch))
        losses, correct, pairs, margins = group_losses(rewards, batch, cfg.ranking_objective, cfg.use_margin)
        loss = losses.sum()
        if cfg.center_rewards_coef:
            loss = loss + centering_loss(rewards, cfg.center_rewards_coef).mean() * len(losses)
        return loss, {"accuracy": float(correct.sum() / pairs.sum()), "margin": float(margins.mean()),
                      "rewards/mean": float(rewards.detach().mean())}
    return step


@torch.no_grad()
def evaluate_rm(scorer, items, pad_id, setup) -> dict:
    """Held-out loss, pairwise accuracy and best-minus-worst margin; each process its share."""
    scorer.eval()
    cfg, means = setup.cfg, Means()
    for part, weights in shares(items, cfg.batch_size, setup):
        batch = move(collate_groups(part, pad_id), setup.device)
        losses, correct, pairs, margins = group_losses(scorer(**rm_inputs(batch)), batch, cfg.ranking_objective,
                                                       cfg.use_margin)
        means.add(weights, loss=losses.cpu(), margin=margins)
        means.add(weights * pairs, accuracy=correct / pairs)
    return means.result(setup.device)


def load_rm(setup, inputs: Inputs) -> Parts:
    """Paths or objects → the one-output reward model, its tokenizer and the pair / ranking examples."""
    examples = tokenizer_and_data(setup, inputs, ("ranking", "preference"))
    model = load_reward_model(model_source(setup.cfg, inputs), pad_token_id=examples.tokenizer.pad_token_id,
                              **model_options(setup))
    disable_dropout(model)
    return Parts(model, examples)


def build_rm(setup, parts: Parts) -> Trainer:
    cfg, model, examples = setup.cfg, parts.model, parts.examples
    scorer = RewardScorer(model)
    pad = examples.tokenizer.pad_token_id
    eval_items = groups(examples.evals)
    collate = partial(collate_groups, pad_id=pad, packing=use_packing(setup, model))
    stream = ExampleStream(groups(examples.train), collate, cfg.batch_size, cfg.grad_accum, seed=cfg.seed,
                           rank=setup.rank, world=setup.world)
    return Trainer(setup, scorer, stream, make_step(cfg), lambda b: len(b["group_sizes"]), examples=examples,
                   save=model, evaluate=(lambda: evaluate_rm(scorer, eval_items, pad, setup)) if eval_items else None)


def train_rm(cfg, inputs: Inputs | None = None, on_log=None) -> Result:
    return run_recipe(cfg, load_rm, build_rm, inputs, on_log)


def run_rm(cfg) -> dict:
    return train_rm(cfg).summary
