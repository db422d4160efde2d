"""Per-token log-probs of labelled tokens and reward scores, as ``nn.Module`` wrappers so that DDP
sees the forward pass.

Log-probs are computed only at labelled positions: the decoder's hidden states are gathered there
and the LM head runs on them alone, so prompt and padding positions never reach the vocabulary
projection, and at most one full-vocabulary float32 tensor (M × V for the M labelled tokens)
exists at a time. Models whose head post-processes logits (soft-capping, scaling) fall back to the
full forward.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
try:
    from torch.distributed.fsdp import FSDPModule
except ImportError:   # a torch build without torch.distributed: nothing is sharded
    FSDPModule = ()

from ..data.tokenize import IGNORE
from .attention import _Select, packing_kwargs
from .load import base_model


def token_logps(logits: Tensor, targets: Tensor, chunk: int = 256) -> Tensor:
    """log softmax(logits)[target] for (M, V) logits and (M,) targets, in float32: −cross-entropy
    (torch's fused log-softmax, forward and backward) over chunks of rows, so its float32
    temporaries stay at chunk × V."""
    if not len(logits):
        return logits.new_zeros(0, dtype=torch.float32)
    return torch.cat([-F.cross_entropy(part.float(), t, reduction="none")
                      for part, t in zip(logits.split(chunk), targets.split(chunk))])


def _rows_padded(head: nn.Module, rows: Tensor, multiple: int = 64) -> Tensor:
    """head(rows), computed on the rows zero-padded to a multiple of ``multiple``: the number of
    labelled tokens changes every batch, and on CPU each new bf16 matmul shape costs a kernel
    build (see ``data.pack``)."""
    return head(F.pad(rows, (0, 0, 0, -len(rows) % multiple)))[:len(rows)]


def _plain_head(lm) -> bool:
    cfg = lm.config
    return (getattr(cfg, "final_logit_softcapping", None) is None and getattr(cfg, "logit_scale", None) is None
            and hasattr(lm, "get_decoder") and lm.get_output_embeddings() is not None)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Per-row entropy −Σ p log p of softmax(logits), in float32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


@dataclass
class TokenScores:
    """What ``CausalLMScorer`` returns, over shifted positions (N, T−1): position t scores token t+1."""
    logps: Tensor                   # log π(token) where labelled, 0 elsewhere (float32)
    mask: Tensor                    # labelled positions (bool)
    entropy: Tensor | None = None   # the policy's entropy there (``with_entropy``)
    hidden: Tensor | None = None    # the decoder's last hidden states (N, T, H) (``with_hidden``)


class CausalLMScorer(nn.Module):
    """forward(input_ids, attention_mask, labels) → ``TokenScores``: per-token log-probs (N, T−1) of
    labels[:, 1:] (0 where the label is -100) and the mask of labelled positions."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None, labels: Tensor, *,
                position_ids: Tensor | None = None, packed: tuple[Tensor, Tensor] | None = None,
                with_entropy: bool = False, with_hidden: bool = False) -> TokenScores:
        """Token log-probs and their mask; with_entropy adds the per-token entropy of the policy there,
        with_hidden the decoder's last hidden states (N, T, H). A packed batch passes
        ``position_ids``, ``packed`` = its (gather, scatter) index and no attention mask (see
        ``data.pack``)."""
        targets = labels[:, 1:]
        mask = targets != IGNORE
        lm = base_model(self.lm)
        pos = position_ids if attention_mask is None else _positions(attention_mask)
        extra = packing_kwargs(lm, packed, attention_mask, input_ids.device)
        hidden = None
        if _plain_head(lm) and packed is not None and not with_hidden and _trimmable(lm):
            logits = _labelled_logits(lm, input_ids, position_ids, packed, mask)   # last MLP at labels only
        elif _plain_head(lm):
            hidden = lm.get_decoder()(input_ids=input_ids, position_ids=pos, use_cache=False,
                                      **extra).last_hidden_state
            logits = _rows_padded(lm.get_output_embeddings(), hidden[:, :-1][mask])
        else:
            out = self.lm(input_ids=input_ids, position_ids=pos, output_hidden_states=with_hidden, use_cache=False,
                          **extra)
            hidden = out.hidden_states[-1] if with_hidden else None
            logits = out.logits[:, :-1][mask]
        logps = torch.zeros(targets.shape, dtype=torch.float32, device=input_ids.device)
        logps[mask] = token_logps(logits, targets[mask])
        entropy = None
        if with_entropy:
            entropy = torch.zeros_like(logps)
            entropy[mask] = entropy_from_logits(logits)
        return TokenScores(logps, mask, entropy, hidden if with_hidden else None)


def _labelled_logits(lm: nn.Module, input_ids: Tensor, position_ids: Tensor, packed: tuple[Tensor, Tensor],
                     mask: Tensor, multiple: int = 64) -> Tensor:
    """LM-head logits (M, V) at the M labelled positions of a packed batch (``mask`` (rows, T−1): position
    t predicts token t+1), with the last layer's MLP run only there (``_final_hidden_at``; ``_trimmable``
    models). The rows are padded to a multiple of ``multiple``, as in ``_rows_padded``."""
    labelled = torch.cat([mask, mask.new_zeros(len(mask), 1)], 1).flatten().nonzero().squeeze(1)
    total, count = input_ids.numel(), len(labelled)
    index = F.pad(labelled, (0, -count % multiple), value=total)   # padding rows read a dummy row
    inverse = torch.full((total,), len(index), dtype=torch.long, device=input_ids.device)
    inverse[labelled] = torch.arange(count, device=input_ids.device)
    return lm.get_output_embeddings()(_final_hidden_at(lm, input_ids, position_ids, packed, index, inverse))[:count]


def _positions(attention_mask: Tensor) -> Tensor | None:
    """Positions counted over real tokens only, so left padding does not shift them; None (the
    model's own 0..T−1, which is cheaper) when no row is left-padded."""
    if bool(attention_mask[:, 0].all()):
        return None
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Index of the last real token of each row, for left or right padding."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask).argmax(-1)


def _classifier_hidden(base: nn.Module, input_ids: Tensor, attention_mask: Tensor | None,
                       position_ids: Tensor | None, packed: tuple[Tensor, Tensor] | None) -> Tensor:
    """The last hidden states (N, T, H) of an (unwrapped) classifier's body."""
    body = getattr(base, base.base_model_prefix)
    pos = position_ids if attention_mask is None else _positions(attention_mask)
    return body(input_ids=input_ids, position_ids=pos, use_cache=False,
                **packing_kwargs(base, packed, attention_mask, input_ids.device)).last_hidden_state


def classifier_outputs(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None,
                       position_ids: Tensor | None = None, packed: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """A one-output sequence classifier's score head applied at every position: (N, T)."""
    base = base_model(model)
    return base.score(_classifier_hidden(base, input_ids, attention_mask, position_ids, packed)).squeeze(-1).float()


LLAMA_STYLE = ("llama", "mistral", "qwen2", "qwen3")   # pre-norm attention and MLP blocks, unscaled embeddings


def _llama_style(base: nn.Module, body: nn.Module) -> bool:
    parts = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")
    return (base.config.model_type in LLAMA_STYLE
            and all(hasattr(body, name) for name in ("embed_tokens", "rotary_emb", "layers", "norm"))
            and all(hasattr(body.layers[-1], name) for name in parts))


def _trimmable(base: nn.Module) -> bool:
    """Whether ``_final_hidden_at`` can run the last layer piece by piece: Llama-style types, and not
    under FSDP2 (a sharded layer gathers its parameters in its own forward only)."""
    body = getattr(base, base.base_model_prefix)
    return _llama_style(base, body) and not isinstance(body.layers[-1], FSDPModule)


def _final_hidden_at(base: nn.Module, input_ids: Tensor, position_ids: Tensor, packed: tuple[Tensor, Tensor],
                     flat_index: Tensor, inverse: Tensor | None = None) -> Tensor | None:
    """Final hidden states (n, H) at the n flat positions ``flat_index`` of a packed batch, with the
    last decoder layer's MLP and the final norm run only there: a reward model reads each sequence's
    last token, a language model its labelled positions, and that MLP holds ~¾ of the layer's FLOPs
    (reward model: −17% time for forward + backward on the benchmark model). Layers run as the body's
    own forward runs them, for the Llama-style model types (pre-norm attention and MLP blocks,
    embeddings used as they are) under ``models.attention`` with full attention in every layer; None
    otherwise (``_trimmable``). ``inverse`` (each flat position's index into ``flat_index``, one past
    the end where none) makes the backward of the selection a gather (``attention._Select``)."""
    if packed is None or not _trimmable(base):
        return None
    body = getattr(base, base.base_model_prefix)
    extra = packing_kwargs(base, packed, None, input_ids.device)
    layers = body.layers
    hidden = body.embed_tokens(input_ids)
    rope = body.rotary_emb(hidden, position_ids=position_ids)
    for layer in layers[:-1]:
        hidden = layer(hidden, position_embeddings=rope, position_ids=position_ids, **extra)
    last = layers[-1]
    attended, _ = last.self_attn(last.input_layernorm(hidden), position_embeddings=rope, position_ids=position_ids,
                                 **extra)
    hidden = (hidden + attended).flatten(0, 1)
    hidden = hidden[flat_index] if inverse is None else _Select.apply(hidden, flat_index, inverse)
    return body.norm(hidden + last.mlp(last.post_attention_layernorm(hidden)))


def has_score_head(model: nn.Module) -> bool:
    """Decoder sequence classifiers (transformers' ``*ForSequenceClassification`` of Llama, GPT-2, OPT,
    …) put a ``score`` head on the last token's hidden state; encoders (BERT, RoBERTa, DeBERTa) pool
    their own way into a ``classifier``."""
    return isinstance(getattr(base_model(model), "score", None), nn.Module)


class RewardScorer(nn.Module):
    """forward(input_ids, attention_mask) → (N,) scalar rewards: a decoder's read at each row's last
    real token, whichever side the padding is on; an encoder's from its own pooling and head."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None, *, position_ids: Tensor | None = None,
                last_index: Tensor | None = None, packed: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Padded batch: (input_ids, attention_mask). Packed batch (``data.pack``): attention_mask
        None, position_ids, last_index (flat index of each sequence's last token) and packed."""
        base = base_model(self.model)
        if not has_score_head(base):   # an encoder classifier: its own pooling ([CLS]) and head
            if attention_mask is None:
                raise ValueError(f"a packed batch for a {base.config.model_type} classifier (bidirectional attention)")
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()
        if attention_mask is not None:
            hidden = _classifier_hidden(base, input_ids, attention_mask, None, None)
            last = hidden[torch.arange(len(hidden), device=hidden.device), last_token_index(attention_mask)]
        else:
            last = _final_hidden_at(base, input_ids, position_ids, packed, last_index)
            if last is None:
                last = _classifier_hidden(base, input_ids, None, position_ids, packed).flatten(0, 1)[last_index]
        return base.score(last).squeeze(-1).float()


def packed_index(batch: dict) -> tuple:
    """A packed batch's index for ``models.attention``."""
    return batch["gather"], batch["scatter"], batch["groups"]


def lm_inputs(batch: dict) -> dict:
    """Scorer keyword arguments of a padded or a packed batch."""
    if "segments" in batch:
        return {"input_ids": batch["input_ids"], "attention_mask": None, "labels": batch["labels"],
                "position_ids": batch["position_ids"], "packed": packed_index(batch)}
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": batch["labels"]}


def rm_inputs(batch: dict) -> dict:
    if "segments" in batch:
        return {"input_ids": batch["input_ids"], "attention_mask": None, "position_ids": batch["position_ids"],
                "last_index": batch["last_index"], "packed": packed_index(batch)}
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def sequence_logps(scorer: nn.Module, batch: dict) -> tuple[Tensor, Tensor]:
    """Summed completion log-probs and completion lengths of each sequence of a padded or packed
    batch: two (N,) tensors, in input order."""
    out = scorer(**lm_inputs(batch))
    return per_sequence(out.logps, batch), per_sequence(out.mask.to(out.logps.dtype), batch)


def per_sequence(token_values: Tensor, batch: dict) -> Tensor:
    """Sum (N, T−1) per-token values over each sequence: (num sequences,), in input order."""
    if "segments" not in batch:
        return token_values.sum(-1)
    seg = batch["segments"][:, 1:]
    keep = seg >= 0
    out = torch.zeros(len(batch["last_index"]), dtype=token_values.dtype, device=token_values.device)
    return out.index_add(0, seg[keep], token_values[keep])
