"""``--dtype bfloat16``: bfloat16 compute with float32 master weights.

Mixed precision as in Micikevicius et al. 2018 ("Mixed Precision Training") and the bf16 modes of
Megatron-LM and DeepSpeed (bf16 needs no loss scaling): the trained module's parameters hold
bfloat16 copies, so the forward and backward passes run in bfloat16 without per-op casts; the
float32 masters are the real weights. Each backward's bfloat16 gradients are added into float32
sums; clipping, the optimizer step (and its state), checkpoints and the saved model all use the
float32 masters, which are rounded into the bfloat16 copies after every step.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


def cast_parameters(module: nn.Module, dtype: torch.dtype) -> None:
    """Floating-point parameters to ``dtype``; buffers (e.g. RoPE frequencies) stay as they are."""
    for p in module.parameters():
        if p.is_floating_point():
            p.data = p.data.to(dtype)


class MasterWeights:
    def __init__(self, module: nn.Module, dtype: torch.dtype = torch.bfloat16):
        self.module = module
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.masters = [p.data.float() for p in self.params]
        self.grads: list[torch.Tensor | None] = [None] * len(self.params)
        cast_parameters(module, dtype)   # frozen parameters too (a LoRA base): one compute dtype

    def accumulate(self) -> None:
        """Move the last backward's bfloat16 gradients into the float32 sums."""
        for i, p in enumerate(self.params):
            if p.grad is not None:
                g = p.grad.float()
                self.grads[i] = g if self.grads[i] is None else self.grads[i].add_(g)
                p.grad = None

    @contextmanager
    def in_place(self):
        """Inside, the parameters hold their float32 masters and summed gradients (for clipping, the
        optimizer step, saving and loading checkpoints); on exit the masters are rounded into the
        bfloat16 copies and the gradient sums are cleared."""
        compute = [p.data for p in self.params]
        for p, m, g in zip(self.params, self.masters, self.grads):
            p.data, p.grad = m, g
        try:
            yield
        finally:
            for i, (p, c) in enumerate(zip(self.params, compute)):
                self.masters[i] = p.data
                c.copy_(p.data)
                p.grad = None
                p.data = c
            self.grads = [None] * len(self.params)

    def release(self) -> None:
        """End of training: the module goes back to float32, trained parameters holding their masters."""
        for p, m in zip(self.params, self.masters):
            p.data = m
        cast_parameters(self.module, torch.float32)
