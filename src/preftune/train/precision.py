"""``--dtype bfloat16``: bfloat16 compute with float32 master weights.

Mixed precision as in Micikevicius et al. 2018 ("Mixed Precision Training") and the bf16 modes of
Megatron-LM and DeepSpeed (bf16 needs no loss scaling): the trained module's parameters hold
bfloat16 copies, so the forward and backward passes run in bfloat16 without per-op casts; the
float32 masters are the real weights. Each backward's bfloat16 gradients are added into the
masters' float32 gradients; clipping, the optimizer (and its state), checkpoints and the saved
model use the masters, which are rounded into the bfloat16 copies after every step.

The module's parameters stay bf16 tensors for the whole run: changing a parameter's dtype in place
would give it a new gradient accumulator and silently detach DDP's all-reduce hooks.
"""
from __future__ import annotations

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
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        # {parameter name: float32 master}, what the optimizer steps and checkpoints store; each
        # keeps the loaded float32 storage while the module's parameter gets a bf16 copy
        self.masters = {n: nn.Parameter(p.detach().float()) for n, p in named}
        cast_parameters(module, dtype)   # frozen parameters too (a LoRA base): one compute dtype

    def accumulate(self) -> None:
        """Move the last backward's bfloat16 gradients into the masters' float32 gradients."""
        for p, m in zip(self.params, self.masters.values()):
            if p.grad is not None:
                g = p.grad.float()
                m.grad = g if m.grad is None else m.grad.add_(g)
                p.grad = None

    @torch.no_grad()
    def copy_to_model(self) -> None:
        """Round the masters into the module's bfloat16 parameters (after each optimizer step)."""
        for p, m in zip(self.params, self.masters.values()):
            p.copy_(m)

    def release(self) -> None:
        """End of training: the module goes back to float32, trained parameters holding their masters."""
        for p, m in zip(self.params, self.masters.values()):
            p.data = m.data
        cast_parameters(self.module, torch.float32)
