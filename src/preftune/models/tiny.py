"""A small Llama-architecture model and a byte-level BPE tokenizer, built entirely offline.

Tests and the embedded demo use it; the saved folder loads with plain ``transformers``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ..data.tokenize import PLAIN_CHAT_TEMPLATE

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>"]


def build_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on ``texts`` with <pad>, <s> (bos), </s> (eos) and a chat template; like
    Llama's tokenizer, it starts every encoded text with BOS."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    bos = SPECIAL_TOKENS[1]
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                       special_tokens=[(bos, tok.token_to_id(bos))])
    # the chat template writes BOS itself, as Llama's do: templated text is tokenised without added specials
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   padding_side="right", chat_template="{{ bos_token }}" + PLAIN_CHAT_TEMPLATE)


def tiny_config(vocab_size: int, *, hidden: int = 256, layers: int = 4, heads: int = 4, intermediate: int | None = None,
                max_positions: int = 1024) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate or 4 * hidden,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                       max_position_embeddings=max_positions, tie_word_embeddings=True,
                       pad_token_id=0, bos_token_id=1, eos_token_id=2)


def build_tiny(out_dir: str | Path, texts: Iterable[str], *, vocab_size: int = 4096, hidden: int = 256,
               layers: int = 4, heads: int = 4, intermediate: int | None = None, seed: int = 0) -> Path:
    """Train a tokenizer on ``texts``, initialise a Llama model for it and save both to ``out_dir``.
    Defaults give the benchmark model (hidden 256, 4 layers, vocab 4096: ≈5.3 M parameters)."""
    texts = list(texts)
    tokenizer = build_tokenizer(texts, vocab_size)
    torch.manual_seed(seed)
    # The vocabulary is the requested size even when a small corpus yields fewer merges.
    model = LlamaForCausalLM(tiny_config(max(vocab_size, len(tokenizer)), hidden=hidden, layers=layers, heads=heads,
                                         intermediate=intermediate))
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
