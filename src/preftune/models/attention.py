"""Causal attention for packed batches, sequence by sequence.

A packed row holds several sequences (``data.pack``). ``transformers``' eager and SDPA attention
handle it with a block-diagonal mask over the whole row, which computes (and, in training,
differentiates) every cross-sequence score only to mask it: for rows of 256 tokens holding ~80-token
sequences, about 3× the attention work that is needed. This implementation gathers each sequence's
queries, keys and values into their own right-padded slot, (n_seq, heads, L, head_dim) with L the
longest sequence, runs plain causal attention there, and scatters the outputs back to the row
layout — what flash-attention's varlen kernels do on GPUs (Dao 2023, §3), written with torch ops so
that it runs anywhere. Right padding needs no mask beyond the causal one: a real query only sees
earlier positions, which are all real; outputs at padded slots are never read back.

Registered in ``transformers``' ``AttentionInterface`` as ``ATTENTION``. Batches without the packing
index (generation, padded batches) attend over their rows with ``transformers``' additive mask: on
CPU with the same plain matmuls (eager attention; torch's CPU SDPA kernels measured up to 3× slower
in bfloat16 training), on GPU through SDPA. Layers with a sliding window, soft-capping or sink
tokens always go to SDPA with the mask; ``load._use_packed_attention`` picks this implementation
only for model types whose attention is plain causal softmax attention.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask

ATTENTION = "preftune_packed"
INDEX_KWARG = "packed_sequences"


def _causal_mask(length: int, dtype: torch.dtype, device) -> Tensor:
    return torch.full((length, length), float("-inf"), dtype=dtype, device=device).triu(1)


def _attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scaling: float, dropout: float) -> Tensor:
    """softmax(q kᵀ · scaling + mask) v, with k, v heads repeated for grouped queries; q (b, h, tq, d),
    k and v (b, h_kv, tk, d), an additive mask broadcastable to (b, h, tq, tk)."""
    if k.shape[1] != q.shape[1]:
        k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(scaling)
    if mask is not None:
        scores = scores.add_(mask)
    return torch.matmul(F.dropout(torch.softmax(scores, dim=-1), p=dropout, training=dropout > 0), v)


class _Select(torch.autograd.Function):
    """y = x[index] along dim 0, for an ``index`` whose real entries are one-to-one with those of
    ``inverse``; entries without a counterpart hold one past the end in both. Those entries of y
    read an arbitrary row, and their gradient must be zero (true here: they are slots past a
    sequence's end, or row padding, which no real output depends on). The gradient is then
    [g; 0][inverse], a second gather, where autograd's backward of indexing would be a slow
    accumulating scatter."""

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(inverse)
        return x.index_select(0, index.clamp(max=len(x) - 1))

    @staticmethod
    def backward(ctx, grad: Tensor):
        (inverse,) = ctx.saved_tensors
        padded = torch.cat([grad, grad.new_zeros(1, *grad.shape[1:])])
        return padded.index_select(0, inverse), None, None


def packed_attention(module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                     scaling: float | None = None, dropout: float = 0.0, **kwargs):
    """``transformers`` attention function. q, k, v: (rows, heads, T, head_dim); returns the output
    as (rows, T, heads, head_dim) and no weights. ``packed_sequences=(gather, scatter)`` is the
    index of ``data.pack``: gather (n_seq, L) holds the flat row position of each sequence's j-th
    token, scatter (rows, T) each position's flat slot index (one past the end where none)."""
    index = kwargs.pop(INDEX_KWARG, None)
    rows, heads, length, dim = query.shape
    scaling = dim ** -0.5 if scaling is None else scaling
    dropout = dropout if module.training else 0.0
    special = kwargs.get("sliding_window") or kwargs.get("softcap") or getattr(module, "sinks", None) is not None
    if (query.is_cuda and index is None) or special:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    if index is None:
        if attention_mask is not None:
            mask = attention_mask[..., :key.shape[2]]
        else:   # causal, aligned to the last key (a KV cache holds earlier keys)
            mask = _causal_mask(key.shape[2], query.dtype, query.device)[-length:]
        return _attend(query, key, value, mask, scaling, dropout).transpose(1, 2).contiguous(), None
    gather, scatter = index[0].reshape(-1), index[1].reshape(-1)
    n_seq, longest = index[0].shape

    def to_sequences(x: Tensor) -> Tensor:   # (rows, h, T, d) -> (n_seq, h, L, d)
        x = _Select.apply(x.transpose(1, 2).reshape(rows * length, x.shape[1], dim), gather, scatter)
        return x.view(n_seq, longest, -1, dim).transpose(1, 2)

    q, k, v = to_sequences(query), to_sequences(key), to_sequences(value)
    if q.is_cuda:   # fused kernels
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, dropout_p=dropout,
                                             enable_gqa=k.shape[1] != heads)
    else:
        out = _attend(q, k, v, _causal_mask(longest, q.dtype, q.device), scaling, dropout)
    out = _Select.apply(out.transpose(1, 2).reshape(n_seq * longest, heads, dim), scatter, gather)
    return out.view(rows, length, heads, dim), None


AttentionInterface.register(ATTENTION, packed_attention)
AttentionMaskInterface.register(ATTENTION, eager_mask)   # additive masks for batches without the index


def every_layer_packed(config) -> bool:
    """Whether every layer takes the packed path (no sliding-window layers), so that a packed
    batch's forward needs no attention mask at all."""
    return getattr(config, "sliding_window", None) is None or getattr(config, "use_sliding_window", True) is False


def packing_kwargs(model, batch_index: tuple[Tensor, Tensor] | None) -> dict:
    """Model keyword arguments that route a packed batch through ``packed_attention``; empty for
    padded batches. A packed batch for a model without that attention is refused: its sequences
    would attend to each other."""
    if batch_index is None:
        return {}
    if getattr(model.config, "_attn_implementation", None) != ATTENTION:
        raise ValueError(f"a packed batch for a {model.config.model_type} model without packed attention")
    return {INDEX_KWARG: batch_index}
