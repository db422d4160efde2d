"""Sample a policy on held-out prompts and measure it: ground-truth reward, KL(π‖π_ref) estimated
from samples, length, EOS share."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..data import collate
from ..models import CausalLMScorer
from ..rollout import generate


@dataclass
class PolicySamples:
    completions: list[str]
    rewards: list[float]
    kl: list[float]               # Σ_t log π(y_t|…) − log π_ref(y_t|…) per completion (k1: unbiased for KL)
    lengths: list[int]
    ended: list[bool]
    prompts: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        n = max(len(self.rewards), 1)
        return {"reward": sum(self.rewards) / n, "kl": sum(self.kl) / n, "length": sum(self.lengths) / n,
                "eos_share": sum(self.ended) / n}


@torch.no_grad()
def sequence_logps(lm, pairs, pad_id, batch_size=64) -> list[float]:
    scorer = CausalLMScorer(lm).eval()
    out = []
    for i in range(0, len(pairs), batch_size):
        b = collate(pairs[i:i + batch_size], pad_id)
        logps, _ = scorer(b["input_ids"], b["attention_mask"], b["labels"])
        out += logps.sum(-1).tolist()
    return out


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
    pairs = list(zip(ids, gen.completions))
    if temperature == 1.0 and top_k == 0 and top_p == 1.0:
        pol = sequence_logps(lm, pairs, tokenizer.pad_token_id)
        ref = sequence_logps(ref_lm, pairs, tokenizer.pad_token_id)
        kl = [a - b for a, b in zip(pol, ref)]
    else:
        kl = [float("nan")] * len(pairs)   # samples not from π itself: the estimate would be biased
    return PolicySamples(texts, rewards, kl, [len(c) for c in gen.completions], gen.ended, prompt_texts)
