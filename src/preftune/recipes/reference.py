"""The frozen reference π_ref of DPO and KTO: a separate frozen model (``--ref_model``, default
``--model``) or, with LoRA, the policy with its adapters off. Its tokenizer must be the policy's."""
from __future__ import annotations

from contextlib import nullcontext

import torch

from ..models import CausalLMScorer, load_causal_lm
from ..models.logprobs import sequence_logps
from ..models.load import require_same_tokenizer
from ..train.distributed import shard


class Reference:
    """π_ref's summed completion log-probs (N,) for the N sequences of a batch, without gradients.
    With ``--fsdp`` a separate reference is sharded like the policy (it holds no gradients or
    optimizer state, but the whole model on each process would cap the model size)."""

    def __init__(self, cfg, policy: CausalLMScorer, tokenizer, device):
        if cfg.lora_r > 0 and not cfg.ref_model:
            self.adapter_off = policy.lm.disable_adapter           # the LoRA policy with adapters off
            self.model = policy
        else:
            if cfg.ref_model:
                require_same_tokenizer(tokenizer, cfg.ref_model, "ref_model", trust_remote_code=cfg.trust_remote_code)
            self.adapter_off = nullcontext
            self.model = CausalLMScorer(load_causal_lm(cfg.ref_model or cfg.model, cfg, trainable=False,
                                                       device=device))
            if cfg.fsdp:
                shard(self.model)

    @property
    def lm(self):
        return self.model.lm

    @torch.no_grad()
    def __call__(self, batch) -> torch.Tensor:
        with self.adapter_off():
            was_training = self.model.training
            self.model.eval()
            out = sequence_logps(self.model, batch)[0]
            self.model.train(was_training)
        return out
