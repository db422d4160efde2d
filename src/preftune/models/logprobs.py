"""Per-token log-probs of labelled tokens and reward scores, as ``nn.Module`` wrappers so that DDP
sees the forward pass.

Log-probs are computed only at labelled positions: the decoder's hidden states are gathered there
and the LM head runs on them alone, so prompt and padding positions never reach the vocabulary
projection, and at most one full-vocabulary float32 tensor (M × V for the M labelled tokens)
exists at a time. Models whose head post-processes logits (soft-capping, scaling) fall back to the
full forward.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..data.tokenize import IGNORE


def token_logps(logits: Tensor, targets: Tensor, chunk: int = 4096) -> Tensor:
    """log softmax(logits)[target] for (M, V) logits and (M,) targets, in float32; the logsumexp runs
    in chunks of rows so its temporary stays small."""
    logits = logits.float()
    picked = logits.gather(-1, targets[:, None]).squeeze(-1)
    lse = torch.cat([torch.logsumexp(part, dim=-1) for part in logits.split(chunk)]) if len(logits) else picked
    return picked - lse


def _plain_head(lm) -> bool:
    cfg = lm.config
    return (getattr(cfg, "final_logit_softcapping", None) is None and getattr(cfg, "logit_scale", None) is None
            and hasattr(lm, "get_decoder") and lm.get_output_embeddings() is not None)


class CausalLMScorer(nn.Module):
    """forward(input_ids, attention_mask, labels) → per-token log-probs (N, T−1) of labels[:, 1:]
    (0 where the label is -100) and the mask of labelled positions."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor):
        targets = labels[:, 1:]
        mask = targets != IGNORE
        lm = self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm
        if _plain_head(lm):
            hidden = lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                     position_ids=position_ids(attention_mask)).last_hidden_state
            logits = lm.get_output_embeddings()(hidden[:, :-1][mask])
        else:
            logits = self.lm(input_ids=input_ids, attention_mask=attention_mask,
                             position_ids=position_ids(attention_mask)).logits[:, :-1][mask]
        out = torch.zeros(targets.shape, dtype=torch.float32, device=input_ids.device)
        out[mask] = token_logps(logits, targets[mask])
        return out, mask


def position_ids(attention_mask: Tensor) -> Tensor:
    """Positions counted over real tokens only, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Index of the last real token of each row, for left or right padding."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask).argmax(-1)


class RewardScorer(nn.Module):
    """forward(input_ids, attention_mask) → (N,) scalar rewards read at each row's last real token,
    whichever side the padding is on."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        body = getattr(base, base.base_model_prefix)
        hidden = body(input_ids=input_ids, attention_mask=attention_mask,
                      position_ids=position_ids(attention_mask)).last_hidden_state
        last = hidden[torch.arange(len(hidden), device=hidden.device), last_token_index(attention_mask)]
        return base.score(last).squeeze(-1).float()
