"""Packed attention (models/attention.py): sequence-by-sequence causal attention over packed rows,
in slots sized by length, equals causal attention of each sequence on its own, values and
gradients, in float64 — also for one long sequence among many short ones, and with a sliding
window."""
import json

import pytest
import torch

from preftune.data import pack
from preftune.data.tokenize import SLOT_LENGTHS
from preftune.models.attention import ATTENTION, _Select, packed_attention
from preftune.models.logprobs import packed_index


def random_sequences(seed: int, n: int = 7, long: int = 0):
    """n short sequences, and one of ``long`` tokens among them when given."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 40, (n, 2), generator=g).tolist() + ([[long // 3, long - long // 3]] if long else [])
    return [([1] * p, [2] * c) for p, c in lengths]


class FakeAttention(torch.nn.Module):
    is_causal = True


def reference_attention(q, k, v, lengths, starts, window=None):
    """Each sequence alone: softmax(q kᵀ/√d + causal [+ window]) v, heads of k/v repeated for grouped
    queries."""
    heads, dim = q.shape[1], q.shape[3]
    k = k.repeat_interleave(heads // k.shape[1], dim=1)
    v = v.repeat_interleave(heads // v.shape[1], dim=1)
    out = torch.zeros(q.shape[0], q.shape[2], heads, dim, dtype=q.dtype)
    for (r, at), n in zip(starts, lengths):
        qs, ks, vs = (x[r, :, at:at + n] for x in (q, k, v))
        scores = qs @ ks.transpose(-1, -2) / dim ** 0.5
        i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
        scores = scores.masked_fill((j > i) | ((i - j >= window) if window else False), float("-inf"))
        out[r, at:at + n] = (torch.softmax(scores, -1) @ vs).transpose(0, 1)
    return out


def layout(batch):
    """(row, offset) and length of each sequence, read back from the packed batch's segments."""
    seg = batch["segments"]
    starts, lengths = [], []
    for i in range(len(batch["last_index"])):
        rows, cols = (seg == i).nonzero(as_tuple=True)
        starts.append((int(rows[0]), int(cols.min())))
        lengths.append(len(cols))
    return starts, lengths


@pytest.mark.parametrize("kv_heads,long,window", [(4, 0, None), (2, 0, None), (2, 700, None), (4, 300, 24)])
def test_packed_attention_equals_each_sequence_alone(kv_heads, long, window):
    batch = pack(random_sequences(0, long=long), 0)
    assert batch["input_ids"].shape[0] == 1 and (batch["segments"] < 0).any()  # one row, padded to a multiple of 64
    assert batch["input_ids"].shape[1] % 64 == 0                               # shapes that repeat
    assert all(slot in SLOT_LENGTHS for _, slot in batch["groups"]) and len(batch["groups"]) > 1
    if long:   # the long sequence has its own slot: the short ones are not padded to its length
        assert batch["groups"][-1][0] == 1 and batch["groups"][-2][1] <= 96
    rows, length = batch["input_ids"].shape
    g = torch.Generator().manual_seed(1)
    q = torch.randn(rows, 4, length, 8, dtype=torch.float64, generator=g, requires_grad=True)
    k = torch.randn(rows, kv_heads, length, 8, dtype=torch.float64, generator=g, requires_grad=True)
    v = torch.randn(rows, kv_heads, length, 8, dtype=torch.float64, generator=g, requires_grad=True)
    out, weights = packed_attention(FakeAttention(), q, k, v, None, scaling=8 ** -0.5, sliding_window=window,
                                    packed_sequences=packed_index(batch))
    assert weights is None and out.shape == (rows, length, 4, 8)
    starts, lengths = layout(batch)
    ref = reference_attention(q, k, v, lengths, starts, window)
    real = batch["segments"] >= 0
    torch.testing.assert_close(out[real], ref[real], atol=1e-12, rtol=1e-12)
    w = torch.randn(out.shape, dtype=torch.float64, generator=g) * real[..., None, None]   # padding outputs are unused
    grads = torch.autograd.grad((out * w).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * w).sum(), (q, k, v))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("long", [200, 900])   # bfloat16 slots: matmul attention ≤ 512 tokens, fused SDPA above
def test_packed_attention_in_bfloat16_is_close_to_float64(long):
    batch = pack(random_sequences(3, long=long), 0)
    rows, length = batch["input_ids"].shape
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(rows, 4, length, 16, dtype=torch.float64, generator=g) for _ in range(3))
    out, _ = packed_attention(FakeAttention(), *(x.bfloat16() for x in (q, k, v)), None, scaling=0.25,
                              packed_sequences=packed_index(batch))
    ref = reference_attention(q, k, v, *reversed(layout(batch)))
    real = batch["segments"] >= 0
    torch.testing.assert_close(out[real].double(), ref[real], atol=3e-2, rtol=3e-2)


def test_select_gradient_is_the_inverse_gather():
    """Entries without a counterpart (slots past a sequence's end, row padding) carry no gradient;
    on the rest, the inverse gather is the exact gradient."""
    batch = pack(random_sequences(2, long=150), 0)
    gather, scatter = batch["gather"], batch["scatter"].reshape(-1)
    for index, inverse in ((gather, scatter), (scatter, gather)):
        real = (index < len(inverse)).double()[:, None]
        x = torch.randn(len(inverse), 3, dtype=torch.float64, requires_grad=True)
        torch.autograd.gradcheck(lambda t: _Select.apply(t, index, inverse) * real, (x,))
        torch.testing.assert_close((_Select.apply(x, index, inverse) * real).detach(),
                                   torch.cat([x.detach(), torch.zeros(1, 3, dtype=torch.float64)])[index] * real)


def test_model_gradients_equal_block_diagonal_attention(tiny_model):
    """The whole model on a packed batch: our attention against transformers' SDPA attention with
    its block-diagonal mask, outputs and every parameter's gradient (float64; eager attention would
    not do as the reference: it takes its softmax in float32)."""
    from transformers import AutoModelForCausalLM
    batch = pack([([1, 5, 9, 13][:n % 4 + 1], list(range(20, 20 + 3 * n))) for n in range(1, 9)], 0)
    outs, grads = {}, {}
    for impl in ("sdpa", ATTENTION):
        model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float64, attn_implementation=impl)
        extra = {"packed_sequences": packed_index(batch), "attention_mask": torch.zeros(1, 1, 1, 1)} \
            if impl == ATTENTION else {}
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False,
                       **extra).logits
        real = batch["segments"] >= 0
        outs[impl] = logits[real]
        logits[real].logsumexp(-1).sum().backward()
        grads[impl] = {n: p.grad for n, p in model.named_parameters()}
    torch.testing.assert_close(outs["sdpa"], outs[ATTENTION], atol=1e-10, rtol=1e-10)
    for name, g in grads["sdpa"].items():
        torch.testing.assert_close(grads[ATTENTION][name], g, atol=1e-10, rtol=1e-10, msg=name)


def test_saved_models_do_not_name_the_attention(tiny_model, tmp_path):
    """The implementation is chosen at load time; a saved model reloads with plain transformers."""
    from transformers import AutoModelForCausalLM
    from preftune.models import load_causal_lm, save_model
    model = load_causal_lm(tiny_model, trainable=False)
    assert model.config._attn_implementation == ATTENTION
    save_model(model, None, tmp_path / "m")
    assert ATTENTION not in json.dumps(json.loads((tmp_path / "m" / "config.json").read_text()))
    AutoModelForCausalLM.from_pretrained(tmp_path / "m")


def test_padded_batches_and_generation_equal_sdpa(tiny_model):
    """Without the packing index (left-padded batches, generation with a KV cache) the matmul
    fallback equals SDPA attention with transformers' masks (float64)."""
    from transformers import AutoModelForCausalLM
    ids = torch.tensor([[0, 0, 1, 7, 8, 9], [1, 5, 6, 7, 8, 9], [0, 0, 0, 0, 1, 4]])
    mask = (ids != 0).long()
    results = {}
    for impl in ("sdpa", ATTENTION):
        model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float64, attn_implementation=impl)
        logits = model(input_ids=ids, attention_mask=mask).logits
        logits[mask.bool()].logsumexp(-1).sum().backward()
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                             output_scores=True, return_dict_in_generate=True, pad_token_id=0)
        results[impl] = (logits[mask.bool()], model.model.layers[0].self_attn.k_proj.weight.grad,
                         out.sequences, torch.stack(out.scores))
    for a, b in zip(results["sdpa"], results[ATTENTION]):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_reward_scorer_runs_the_last_mlp_at_last_tokens_only(tiny_model):
    """A packed batch's rewards come from the last decoder layer's MLP run at each sequence's last
    token only; values and every gradient equal the full forward's (float64)."""
    from preftune.models import RewardScorer, load_reward_model, rm_inputs
    from preftune.models.logprobs import classifier_outputs
    batch = pack(random_sequences(3, n=9), 0)
    model = load_reward_model(tiny_model, pad_token_id=0).double()
    rows_seen = []
    hook = model.model.layers[-1].mlp.register_forward_hook(lambda m, args, out: rows_seen.append(args[0].shape))
    rewards = RewardScorer(model)(**rm_inputs(batch))
    hook.remove()
    assert rows_seen == [torch.Size([9, model.config.hidden_size])]
    rewards.sum().backward()
    trimmed = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    full = classifier_outputs(model, batch["input_ids"], None, batch["position_ids"], packed_index(batch))
    full = full.reshape(-1)[batch["last_index"]]
    torch.testing.assert_close(rewards, full, atol=1e-12, rtol=1e-10)
    full.sum().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(trimmed[name], p.grad, atol=1e-12, rtol=1e-10, msg=name)
