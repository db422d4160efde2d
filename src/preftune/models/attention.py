"""Causal attention for packed batches, sequence by sequence, in slots sized by length.

A packed batch (``data.pack``) lays its sequences out padding-free in rows. Attention over a whole
row with a block-diagonal mask computes (and differentiates) every cross-sequence score only to
mask it. Here each sequence's queries, keys and values are gathered into a right-padded slot whose
length comes from a short ladder (``data.tokenize.SLOT_LENGTHS``), so sequences of similar length
share a group (n, heads, L, head_dim); plain causal attention runs per group and the outputs are
scattered back to the rows — what flash-attention's varlen kernels do on GPUs (Dao 2023, §3).
Right padding needs no mask beyond the causal one (a real query only sees earlier, real positions);
outputs at padded slots are never read back. One long sequence among short ones costs its own
L², not L² for every sequence. A layer's sliding window (Mistral, Qwen2) narrows the causal mask
inside the slot.

Each group runs the faster kernel measured on this hardware: torch's fused SDPA (flash attention on
GPU and on CPU, memory linear in L) except for bfloat16 slots of ≤ 512 tokens on CPU, where the
plain matmul-softmax-matmul measured faster. Registered in ``transformers``' ``AttentionInterface``
as ``ATTENTION``. Batches without the packing index (padded batches, generation) attend over their
rows with ``transformers``' additive mask, the same way; layers with soft-capping or sink tokens go
to transformers' SDPA (such model types are not packed: ``load.PACKED_TYPES``).
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
EAGER_BF16_UP_TO = 512   # CPU bfloat16: matmul attention up to this slot length, fused SDPA above


def _band(q_len: int, k_len: int, window: int | None, dtype: torch.dtype, device) -> Tensor:
    """Additive causal mask aligned to the last key (a KV cache holds earlier keys), narrowed to the
    last ``window`` keys (transformers' sliding window: key k is seen by query q when 0 ≤ q − k < window)."""
    q = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    k = torch.arange(k_len, device=device)[None, :]
    allowed = (k <= q) & ((q - k < window) if window else True)
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, float("-inf"))


def _attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scaling: float, dropout: float, *,
            causal: bool = False) -> Tensor:
    """softmax(q kᵀ · scaling + mask) v, k and v heads repeated for grouped queries; q (b, h, tq, d),
    k and v (b, h_kv, tk, d), an additive mask broadcastable to (b, h, tq, tk), or ``causal`` (equal
    lengths, no mask). The fused SDPA kernel, except bfloat16 on CPU at short lengths (plain matmuls
    measured faster there)."""
    if k.shape[1] != q.shape[1]:
        k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
    if q.is_cuda or q.dtype != torch.bfloat16 or k.shape[2] > EAGER_BF16_UP_TO:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal,
                                              scale=scaling)
    if causal:
        mask = _band(q.shape[2], k.shape[2], None, q.dtype, q.device)
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(scaling)
    if mask is not None:
        scores = scores.add_(mask)
    return torch.matmul(F.dropout(torch.softmax(scores, dim=-1), p=dropout, training=dropout > 0), v)


class _Select(torch.autograd.Function):
    """y = x[index] along dim 0, for an ``index`` whose real entries are one-to-one with those of
    ``inverse``; entries without a counterpart hold one past the end in both. Those entries of y
    read an arbitrary row, and their gradient must be zero (true here: they are slots past a
    sequence's end, or row padding, which no real output depends on). The gradient is then
    [g; 0][inverse], a second gather (zeroed where inverse has no counterpart), where autograd's
    backward of indexing would be a slow accumulating scatter."""

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(inverse)
        return x.index_select(0, index.clamp(max=len(x) - 1))

    @staticmethod
    def backward(ctx, grad: Tensor):
        (inverse,) = ctx.saved_tensors
        missing = (inverse >= len(grad)).view(-1, *([1] * (grad.dim() - 1)))
        return grad.index_select(0, inverse.clamp(max=len(grad) - 1)).masked_fill_(missing, 0), None, None


def packed_attention(module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                     scaling: float | None = None, dropout: float = 0.0, **kwargs):
    """``transformers`` attention function. q, k, v: (rows, heads, T, head_dim); returns the output
    as (rows, T, heads, head_dim) and no weights. ``packed_sequences=(gather, scatter, groups)`` is
    the index of ``data.pack``: gather (S,) holds, group after group, the flat row position of each
    slot's token; scatter (rows, T) each row position's index into those S slots (one past the end
    where none); groups the (sequences, slot length) of each group."""
    index = kwargs.pop(INDEX_KWARG, None)
    rows, heads, length, dim = query.shape
    scaling = dim ** -0.5 if scaling is None else scaling
    dropout = dropout if module.training else 0.0
    window = kwargs.get("sliding_window")
    if kwargs.get("softcap") or getattr(module, "sinks", None) is not None:
        if index is not None:
            raise ValueError("packed batches do not support soft-capped or sink attention")
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    if index is None:   # a padded batch or generation: the rows as they are
        mask = attention_mask[..., :key.shape[2]] if attention_mask is not None else \
            _band(length, key.shape[2], window, query.dtype, query.device)
        return _attend(query, key, value, mask, scaling, dropout).transpose(1, 2).contiguous(), None
    gather, scatter, groups = index
    scatter = scatter.reshape(-1)

    def to_slots(x: Tensor) -> Tensor:   # (rows, h, T, d) -> (S, h, d), group after group
        return _Select.apply(x.transpose(1, 2).reshape(rows * length, x.shape[1], dim), gather, scatter)

    q, k, v = to_slots(query), to_slots(key), to_slots(value)
    outs, at = [], 0
    for n, slot in groups:
        qg, kg, vg = (x[at:at + n * slot].view(n, slot, x.shape[1], dim).transpose(1, 2) for x in (q, k, v))
        narrow = window is not None and window < slot
        mask = _band(slot, slot, window, q.dtype, q.device) if narrow else None
        outs.append(_attend(qg, kg, vg, mask, scaling, dropout, causal=not narrow).transpose(1, 2)
                    .reshape(n * slot, heads, dim))
        at += n * slot
    out = _Select.apply(torch.cat(outs) if len(outs) > 1 else outs[0], scatter, gather)
    return out.view(rows, length, heads, dim), None


AttentionInterface.register(ATTENTION, packed_attention)
AttentionMaskInterface.register(ATTENTION, eager_mask)   # additive masks for padded batches


def packed_placeholder(device) -> Tensor:
    """A 4-D placeholder passed as a packed batch's attention mask: transformers returns a 4-D mask
    as it is, so the (rows, 1, T, T) block-diagonal mask the packed path never reads is never built."""
    return torch.zeros(1, 1, 1, 1, device=device)


def packing_kwargs(model, batch_index: tuple | None, attention_mask: Tensor | None, device) -> dict:
    """Model keyword arguments for a padded batch (its attention mask) or a packed one (the packing
    index for ``packed_attention`` and a placeholder mask). A packed batch for a model without that
    attention is refused: its sequences would attend to each other."""
    if batch_index is None:
        return {"attention_mask": attention_mask}
    if getattr(model.config, "_attn_implementation", None) != ATTENTION:
        raise ValueError(f"a packed batch for a {model.config.model_type} model without packed attention")
    return {INDEX_KWARG: batch_index, "attention_mask": packed_placeholder(device)}
