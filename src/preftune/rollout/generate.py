"""Batched generation with ``transformers`` generate (KV cache), left-padded prompts, stop at EOS.

The sampled tokens' log-probs are *not* taken from here: recipes recompute them with a
training-precision forward pass.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LogitsProcessorList

from .sampling import SamplingProcessor


@dataclass
class Generation:
    completions: list[list[int]]   # completion ids, up to and including EOS when it came
    ended: list[bool]              # True where the completion ended with EOS
    tokens: int                    # generated tokens counted (real ones, EOS included)


@torch.no_grad()
def generate(model, prompts: list[list[int]], *, pad_id: int, eos_id: int, max_new_tokens: int = 32,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, batch_size: int = 64,
             log_seconds: float = 0) -> Generation:
    """Complete each prompt (token ids). temperature 0 is greedy decoding. With ``log_seconds``, a
    progress line at most that often."""
    lm = model.module if hasattr(model, "module") else model
    was_training = lm.training
    lm.eval()
    device = next(lm.parameters()).device
    greedy = temperature <= 0
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=not greedy, pad_token_id=pad_id,
                              eos_token_id=eos_id, temperature=1.0, top_k=None, top_p=None, use_cache=True)
    processors = LogitsProcessorList([] if greedy else [SamplingProcessor(temperature, top_k, top_p)])
    completions, ended = [], []
    began = last = time.perf_counter()
    for start in range(0, len(prompts), batch_size):
        if start and log_seconds and time.perf_counter() - last >= log_seconds:
            last = time.perf_counter()
            done = start / len(prompts)
            print(f"  generated {start}/{len(prompts)} completions, {last - began:.0f} s, "
                  f"about {(last - began) * (1 - done) / done:.0f} s to go", flush=True)
        part = prompts[start:start + batch_size]
        width = max(len(p) for p in part)
        ids = torch.full((len(part), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(part):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        out = lm.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config,
                          logits_processor=processors)
        for row in out[:, width:].tolist():
            if eos_id in row:
                completions.append(row[:row.index(eos_id) + 1])
                ended.append(True)
            else:
                completions.append(row)
                ended.append(False)
    lm.train(was_training)
    return Generation(completions, ended, sum(len(c) for c in completions))
