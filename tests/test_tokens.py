"""Tokens as the model's own tokenizer and chat template define them, checked id for id against the
tokenizer and ``apply_chat_template`` on real tokenizers built offline (Qwen's BPE ranks): BOS only
where the tokenizer (or the template) writes it, never twice; EOS appended to plain completions only
when missing; a conversational completion ends with the template's end of turn and nothing more;
left truncation keeps the BOS."""
import json

import pytest
import torch

from conftest import write_jsonl
from preftune.cli import main
from preftune.data import Encoder, Row

USER = [{"role": "user", "content": "What colour is the sky?"}]
CHOSEN = [{"role": "assistant", "content": "It is blue."}]
REJECTED = [{"role": "assistant", "content": "It is green, mostly."}]
END_OF_TURN = {"qwen": ["<|im_end|>", "Ċ"], "llama3": ["<|eot_id|>"]}   # Ċ: byte-level "\n"


def template_ids(tok, messages, **kwargs):
    return tok.apply_chat_template(messages, tokenize=True, return_dict=False, **kwargs)


@pytest.mark.parametrize("name", ["qwen", "llama3"])
def test_conversational_rows_are_the_chat_template_tokens(real_tokenizers, name):
    tok = real_tokenizers[name]
    ex = Encoder(tok, 256, 128).encode(Row("m", 1, {}), {"prompt": USER, "chosen": CHOSEN, "rejected": REJECTED})
    assert ex["prompt_ids"] == template_ids(tok, USER, add_generation_prompt=True)
    for side, completion in (("chosen", CHOSEN), ("rejected", REJECTED)):
        assert ex["prompt_ids"] + ex[f"{side}_ids"] == template_ids(tok, USER + completion)
        # the template's own end of turn ends the completion: no EOS appended after it
        assert tok.convert_ids_to_tokens(ex[f"{side}_ids"])[-len(END_OF_TURN[name]):] == END_OF_TURN[name]
    sequence = ex["prompt_ids"] + ex["chosen_ids"]
    assert sequence.count(tok.bos_token_id) == (1 if name == "llama3" else 0)   # the template's BOS, once


@pytest.mark.parametrize("name", ["qwen", "gpt2", "llama3"])
def test_plain_rows_are_the_tokenizers_tokens_with_eos_when_missing(real_tokenizers, name):
    tok = real_tokenizers[name]
    enc = Encoder(tok, 256, 128)
    prompt, chosen = "The sky is", " blue, mostly."
    ex = enc.encode(Row("m", 1, {}), {"prompt": prompt, "completion": chosen})
    assert ex["prompt_ids"] == tok(prompt)["input_ids"]
    assert ex["prompt_ids"] + ex["completion_ids"] == tok(prompt + chosen)["input_ids"] + [tok.eos_token_id]
    starts_with_bos = ex["prompt_ids"][0] == tok.bos_token_id
    assert starts_with_bos == (name == "llama3")          # BOS only where the tokenizer adds it
    # a completion that already ends with EOS gets no second one
    again = enc.encode(Row("m", 1, {}), {"prompt": prompt, "completion": chosen + tok.eos_token})
    assert again["completion_ids"] == ex["completion_ids"]
    assert (ex["prompt_ids"] + ex["completion_ids"]).count(tok.eos_token_id) == 1   # gpt2: bos = eos, not added


def test_left_truncation_keeps_the_bos(real_tokenizers):
    tok = real_tokenizers["llama3"]
    prompt = " ".join(f"word{i}" for i in range(60))
    full = tok(prompt)["input_ids"]
    ex = Encoder(tok, 40, 16).encode(Row("m", 1, {}), {"prompt": prompt, "completion": " end."})
    assert ex["prompt_ids"] == [tok.bos_token_id] + full[-15:]
    assert len(ex["prompt_ids"]) + len(ex["completion_ids"]) <= 40
    right = Encoder(tok, 40, 16, truncation_side="right").encode(Row("m", 1, {}),
                                                                 {"prompt": prompt, "completion": " x"})
    assert right["prompt_ids"] == full[:16]


def test_encoder_counts_truncation(real_tokenizers):
    tok = real_tokenizers["qwen"]
    enc = Encoder(tok, 12, 8)
    enc.encode(Row("m", 1, {}), {"prompt": "a b c d e f g h i j", "completion": " k l m n o p q"})
    enc.encode(Row("m", 2, {}), {"prompt": "a", "completion": " b"})
    assert enc.truncated["prompt_rows"] == 1 and enc.truncated["prompt_tokens"] == 2
    assert enc.truncated["completion_rows"] == 1 and enc.truncated["completion_tokens"] == 4


@pytest.mark.slow
def test_dpo_first_step_logps_are_the_canonical_ones_on_qwen(real_tokenizers, tmp_path):
    """A tiny random Qwen2 with Qwen's tokenizer: step 1's logps/chosen is the sum of the plain model's
    log-probs of the chat template's completion tokens (the issue saw 1.5% off with a second EOS)."""
    from transformers import AutoModelForCausalLM, Qwen2Config
    tok = real_tokenizers["qwen"]
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id)
    model_dir = tmp_path / "qwen2"
    AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    rows = [{"prompt": [{"role": "user", "content": f"Question {i}: what colour is the sky?"}],
             "chosen": [{"role": "assistant", "content": "Blue."}],
             "rejected": [{"role": "assistant", "content": "Green, I think."}]} for i in range(4)]
    data = write_jsonl(tmp_path / "prefs.jsonl", rows)
    out = tmp_path / "run"
    assert main(["dpo", "--model", str(model_dir), "--data", data, "--output_dir", str(out), "--max_steps", "1",
                 "--batch_size", "4", "--progress", "false"]) == 0
    logged = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    plain = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    expected = {}
    for side in ("chosen", "rejected"):
        total = 0.0
        for r in rows:
            prompt = template_ids(tok, r["prompt"], add_generation_prompt=True)
            ids = template_ids(tok, r["prompt"] + r[side])
            with torch.no_grad():
                logp = torch.log_softmax(plain(input_ids=torch.tensor([ids])).logits[0].double(), -1)
            total += sum(float(logp[t - 1, ids[t]]) for t in range(len(prompt), len(ids)))
        expected[side] = total / len(rows)
    assert logged["logps/chosen"] == pytest.approx(expected["chosen"], rel=1e-5)
    assert logged["logps/rejected"] == pytest.approx(expected["rejected"], rel=1e-5)
