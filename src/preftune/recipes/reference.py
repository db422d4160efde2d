"""The frozen reference π_ref of DPO and KTO: a separate frozen model (``--ref_model``, default
``--model``; a Python caller's model object: a frozen copy of it, as TRL's ``create_reference_model``),
or, with LoRA (or a PeftModel), the policy with its adapters off. Its tokenizer must be the policy's."""
from __future__ import annotations

import copy
from contextlib import nullcontext

import torch

from ..models import CausalLMScorer, load_causal_lm
from ..models.load import require_same_tokenizer
from ..models.logprobs import sequence_logps
from ..runtime.distributed import shard
from .common import Inputs, model_options


def reference_model(setup, policy_lm, tokenizer, inputs: Inputs, *, adapters_off: bool = True):
    """π_ref as a frozen causal LM, or None when it is the policy with its adapters off (``adapters_off``
    and a peft policy without --ref_model)."""
    cfg = setup.cfg
    if inputs.ref_model is not None:
        return load_causal_lm(inputs.ref_model, **model_options(setup, trainable=False))
    if adapters_off and not cfg.ref_model and hasattr(policy_lm, "peft_config"):
        return None
    if cfg.ref_model:
        require_same_tokenizer(tokenizer, cfg.ref_model, "ref_model", trust_remote_code=cfg.trust_remote_code)
    elif inputs.model is not None:   # the caller's model object, before training changes it
        frozen = copy.deepcopy(policy_lm)
        return load_causal_lm(frozen.to(torch.bfloat16) if cfg.dtype == "bfloat16" else frozen,
                              **model_options(setup, trainable=False))
    return load_causal_lm(cfg.ref_model or cfg.model, **model_options(setup, trainable=False))


class Reference:
    """π_ref's summed completion log-probs (N,) for the N sequences of a batch, without gradients.
    With ``--fsdp`` a separate reference is sharded like the policy (it holds no gradients or
    optimizer state, but the whole model on each process would cap the model size)."""

    def __init__(self, setup, policy: CausalLMScorer, tokenizer, inputs: Inputs):
        lm = reference_model(setup, policy.lm, tokenizer, inputs)
        if lm is None:
            self.adapter_off = policy.lm.disable_adapter           # the LoRA policy with adapters off
            self.model = policy
        else:
            self.adapter_off = nullcontext
            self.model = CausalLMScorer(lm)
            if setup.cfg.fsdp:
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
