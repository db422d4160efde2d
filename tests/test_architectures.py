"""Packing only where it is exact, decided per architecture: for every model type preftune packs,
a sequence's log-probs (and reward) in a packed row equal the plain transformers model's on that
sequence alone; the others train on padded batches, and a DPO step is the same either way."""
import json
import shutil

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from conftest import write_jsonl
from preftune.cli import main
from preftune.data import collate, pack
from preftune.models import CausalLMScorer, RewardScorer, lm_inputs, load_causal_lm, load_reward_model, rm_inputs
from preftune.models.load import PACKED_TYPES, packs_exactly

VOCAB = 512
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
CONFIGS = {   # tiny random configs, built offline
    "llama": ("LlamaConfig", dict(SMALL, num_key_value_heads=2)),
    "qwen2": ("Qwen2Config", dict(SMALL, num_key_value_heads=2)),
    "qwen3": ("Qwen3Config", dict(SMALL, num_key_value_heads=2, head_dim=8)),
    "mistral": ("MistralConfig", dict(SMALL, num_key_value_heads=2)),
    "gemma": ("GemmaConfig", dict(SMALL, num_key_value_heads=1, head_dim=8)),
    "phi": ("PhiConfig", SMALL),
    "phi3": ("Phi3Config", SMALL),
    "gpt2": ("GPT2Config", dict(n_embd=32, n_layer=2, n_head=4, n_positions=256)),
    "gpt_neox": ("GPTNeoXConfig", SMALL),
    "opt": ("OPTConfig", dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                              word_embed_proj_dim=32)),
    "falcon": ("FalconConfig", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4)),
    "bloom": ("BloomConfig", dict(hidden_size=32, n_layer=2, n_head=4)),
    "mpt": ("MptConfig", dict(d_model=32, n_layers=2, n_heads=4)),
    "xglm": ("XGLMConfig", dict(d_model=32, ffn_dim=64, num_layers=2, attention_heads=4)),
}
PADDED = {"falcon", "bloom", "mpt", "xglm"}   # their attention mixes packed sequences


def tiny_folder(tmp_path, model_type: str, tokenizer_from: str | None = None) -> str:
    """A tiny random model of ``model_type`` saved with (a copy of) a tokenizer."""
    name, kwargs = CONFIGS[model_type]
    config = getattr(transformers, name)(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2, **kwargs)
    torch.manual_seed(0)
    path = tmp_path / model_type
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    if tokenizer_from:
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(f"{tokenizer_from}/{f}", path / f)
    return str(path)


def sequences(seed=0, n=7):
    g = torch.Generator().manual_seed(seed)
    return [([1] + torch.randint(3, VOCAB, (int(p),), generator=g).tolist(),
             torch.randint(3, VOCAB, (int(c),), generator=g).tolist() + [2])
            for p, c in torch.randint(1, 30, (n, 2), generator=g)]


def alone_logps(plain, prompt, completion):
    """Per-token log-probs of the completion under the plain transformers model, the sequence alone."""
    ids = torch.tensor([prompt + completion])
    logits = plain(input_ids=ids).logits[0, len(prompt) - 1:-1]
    return torch.log_softmax(logits.double(), -1).gather(-1, torch.tensor(completion)[:, None])[:, 0]


def test_packed_types_and_padded_types_cover_the_list():
    assert set(CONFIGS) - PADDED == set(PACKED_TYPES)


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_logps_packed_or_padded_equal_each_sequence_alone(model_type, tmp_path):
    path = tiny_folder(tmp_path, model_type)
    model = load_causal_lm(path, trainable=False)
    assert packs_exactly(model) == (model_type not in PADDED)
    plain = AutoModelForCausalLM.from_pretrained(path).eval()
    seqs = sequences()
    expected = [alone_logps(plain, p, c) for p, c in seqs]
    batches = [collate(seqs, 0)] + ([pack(seqs, 0)] if packs_exactly(model) else [])
    scorer = CausalLMScorer(model)
    with torch.no_grad():
        for batch in batches:
            out = scorer(**lm_inputs(batch))
            logps, mask = out.logps, out.mask
            segments = batch["segments"][:, 1:] if "segments" in batch else None   # of each target
            for i, want in enumerate(expected):
                got = logps[(segments == i) & mask] if segments is not None else logps[i][mask[i]]
                torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3", "mistral"])
def test_last_layer_mlp_runs_at_labelled_positions_only(model_type, tmp_path):
    """Llama-style models (``logprobs._final_hidden_at``): on a packed batch the last decoder layer's
    MLP sees only the labelled positions (padded to a multiple of 64 rows); log-probs and every
    gradient equal the full forward's (float64; ``with_hidden`` takes the full path)."""
    model = load_causal_lm(tiny_folder(tmp_path, model_type), trainable=True).double()
    batch = pack(sequences(2, n=9), 0)
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    rows_seen = []
    hook = model.model.layers[-1].mlp.register_forward_hook(lambda m, args, out: rows_seen.append(args[0].shape[:-1]))
    results = []
    for full in (False, True):
        model.zero_grad()
        out = CausalLMScorer(model)(**lm_inputs(batch), with_hidden=full)
        logps, mask = out.logps, out.mask
        (logps * torch.linspace(0.5, 2, logps.shape[-1], dtype=torch.float64)).sum().backward()
        results.append((logps[mask], {n: p.grad.clone() for n, p in model.named_parameters()}))
    hook.remove()
    assert rows_seen == [torch.Size([-(-labelled // 64) * 64]), batch["input_ids"].shape]
    (trimmed, trimmed_grads), (full, full_grads) = results
    torch.testing.assert_close(trimmed, full, atol=1e-12, rtol=1e-10)
    for name, g in full_grads.items():
        torch.testing.assert_close(trimmed_grads[name], g, atol=1e-12, rtol=1e-10, msg=name)


@pytest.mark.parametrize("model_type", sorted(PACKED_TYPES))
def test_rewards_packed_equal_each_sequence_alone(model_type, tmp_path):
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(tiny_folder(tmp_path, model_type), num_labels=1).save_pretrained(
        tmp_path / "rm")
    path = str(tmp_path / "rm")
    model = load_reward_model(path, trainable=False, pad_token_id=0)
    plain = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).eval()
    seqs = sequences(1)
    with torch.no_grad():
        rewards = RewardScorer(model)(**rm_inputs(pack(seqs, 0)))
        expected = torch.cat([plain(input_ids=torch.tensor([p + c])).logits[:, 0] for p, c in seqs])
    torch.testing.assert_close(rewards, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type", sorted(PACKED_TYPES))
def test_generation_with_packed_attention_equals_plain_model(model_type, tmp_path):
    """The packed attention also serves left-padded batches and the KV cache: greedy tokens equal
    the plain model's."""
    path = tiny_folder(tmp_path, model_type)
    ids = torch.tensor([[0, 0, 1, 7, 8, 9], [1, 5, 6, 7, 8, 9]])
    out = {}
    for name, model in (("ours", load_causal_lm(path, trainable=False)),
                        ("plain", AutoModelForCausalLM.from_pretrained(path).eval())):
        out[name] = model.generate(input_ids=ids, attention_mask=(ids != 0).long(), max_new_tokens=6,
                                   do_sample=False, pad_token_id=0, eos_token_id=None)
    assert torch.equal(out["ours"], out["plain"])


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["opt", "falcon"])
def test_dpo_first_step_is_the_same_packed_or_padded(model_type, tiny_model, tmp_path, capsys):
    """OPT packs (through the packed attention), Falcon cannot (it trains padded, and says so):
    either way the first step's log-probs do not depend on --packing."""
    path = tiny_folder(tmp_path, model_type, tokenizer_from=tiny_model)
    rows = [{"prompt": f"the film {w}", "chosen": " was great fun.", "rejected": " was a dull boring mess."}
            for w in ("was", "and the cast", "yet", "but the plot was thin", "so", "with", "a", "lovely")]
    data = write_jsonl(tmp_path / "prefs.jsonl", rows)
    first = {}
    for packing in ("true", "false"):
        out = tmp_path / f"run-{packing}"
        assert main(["dpo", "--model", path, "--data", data, "--output_dir", str(out), "--max_steps", "1",
                     "--batch_size", "8", "--packing", packing, "--progress", "false"]) == 0
        first[packing] = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    said = "packing off" in capsys.readouterr().out
    assert said == (model_type == "falcon")
    for key in ("logps/chosen", "logps/rejected", "loss"):
        assert first["true"][key] == pytest.approx(first["false"][key], rel=1e-5, abs=1e-5), key
