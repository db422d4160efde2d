"""Sample a policy on held-out prompts and measure it: ground-truth reward, KL(π‖π_ref) per
completion, length, EOS share.

KL is the sum over a completion's sampled positions of the exact per-token KL between the two
next-token distributions, Σ_t Σ_v π(v | x, y<t) · log(π(v | x, y<t) / π_ref(v | x, y<t)): a sum over
the vocabulary at each position, never negative, and an unbiased estimate of the sequence-level
KL(π‖π_ref) when y ~ π, with lower variance than the k1 sample estimate Σ_t log π(y_t|…) − log
π_ref(y_t|…) (Schulman, "Approximating KL divergence", 2020), which is kept beside it (``kl_k1``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..data import IGNORE, collate
from ..rollout import generate


@dataclass
class PolicySamples:
    completions: list[str]
    rewards: list[float]
    kl: list[float]               # Σ_t KL(π(·|x, y<t) ‖ π_ref(·|x, y<t)) per completion (exact per token)
    kl_k1: list[float]            # Σ_t log π(y_t|…) − log π_ref(y_t|…) per completion (k1 sample estimate)
    lengths: list[int]
    ended: list[bool]
    prompts: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        n = max(len(self.rewards), 1)
        return {"reward": sum(self.rewards) / n, "kl": sum(self.kl) / n, "kl_k1": sum(self.kl_k1) / n,
                "length": sum(self.lengths) / n, "eos_share": sum(self.ended) / n}


@torch.no_grad()
def completion_kl(lm, ref_lm, pairs: list[tuple[list[int], list[int]]], pad_id: int,
                  batch_size: int = 32) -> tuple[list[float], list[float]]:
    """(exact, k1) KL(π‖π_ref) of each (prompt ids, completion ids) pair, summed over its completion."""
    device = next(lm.parameters()).device
    exact, k1 = [], []
    for i in range(0, len(pairs), batch_size):
        batch = {k: v.to(device) for k, v in collate(pairs[i:i + batch_size], pad_id).items()}
        targets = batch["labels"][:, 1:]
        mask = targets != IGNORE
        lp, lq = (torch.log_softmax(m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                                    [:, :-1][mask].float(), -1) for m in (lm, ref_lm))
        per_token = (lp.exp() * (lp - lq)).sum(-1).clamp(min=0)   # ≥ 0 up to rounding
        sampled = (lp - lq).gather(1, targets[mask][:, None])[:, 0]
        row = mask.nonzero()[:, 0]
        for values, out in ((per_token, exact), (sampled, k1)):
            out += torch.zeros(len(mask), dtype=torch.float64,
                               device=device).index_add(0, row, values.double()).tolist()
    return exact, k1


@torch.no_grad()
def sample_and_score(lm, ref_lm, tokenizer, prompts: list[dict], reward_fn, *, max_new_tokens: int,
                     temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> PolicySamples:
    """One sampled completion per prompt (prompts: examples with prompt_ids and prompt_text)."""
    torch.manual_seed(seed)
    ids = [p["prompt_ids"] for p in prompts]
    gen = generate(lm, ids, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id,
                   max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
    texts = [tokenizer.decode(c, skip_special_tokens=True) for c in gen.completions]
    prompt_texts = [p["prompt_text"] for p in prompts]
    rewards = [float(r) for r in reward_fn(prompt_texts, texts)]
    if temperature == 1.0 and top_k == 0 and top_p == 1.0:
        kl, kl_k1 = completion_kl(lm, ref_lm, list(zip(ids, gen.completions)), tokenizer.pad_token_id)
    else:   # samples not from π itself: neither sum estimates KL(π‖π_ref)
        kl = kl_k1 = [float("nan")] * len(ids)
    return PolicySamples(texts, rewards, kl, kl_k1, [len(c) for c in gen.completions], gen.ended, prompt_texts)
