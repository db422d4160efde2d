"""Load models and tokenizers with ``transformers`` Auto classes from a folder or a hub name;
weights through safetensors; ``trust_remote_code`` only when asked; optional LoRA through peft."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from .attention import ATTENTION


def _source(name: str) -> str:
    """A model folder, or a hub name ("org/model"); a path that does not exist (or whose folder does,
    as "runs/nonexistent"), or a folder without a model's config.json, is an error in plain words."""
    path = Path(name).expanduser()
    if path.is_dir() and not (path / "config.json").exists():
        raise FileNotFoundError(f"{name}: not a model folder (no config.json)")
    local = name.startswith(("/", ".", "~")) or name.count("/") > 1 \
        or (path.parent != Path(".") and path.parent.is_dir())
    if not path.exists() and local:
        raise FileNotFoundError(f"{name}: no such model folder")
    return name


def load_tokenizer(name: str, *, trust_remote_code: bool = False):
    tok = AutoTokenizer.from_pretrained(_source(name), trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def tokenizer_difference(a, b) -> str | None:
    """How tokenizer ``b`` reads ids differently from ``a`` (vocabulary, BOS, EOS), or None."""
    va, vb = a.get_vocab(), b.get_vocab()
    if va != vb:
        moved = sum(vb.get(token) != i for token, i in va.items())
        return f"{len(va)} vs {len(vb)} tokens, {moved} of them with other ids"
    for attr in ("bos_token_id", "eos_token_id"):
        if getattr(a, attr) != getattr(b, attr):
            return f"{attr} {getattr(a, attr)} vs {getattr(b, attr)}"
    return None


def require_same_tokenizer(tokenizer, name: str, option: str, *, trust_remote_code: bool = False) -> None:
    """Refuse a model whose tokenizer is not the policy's: it would read the policy's token ids as
    other tokens (or index past its embeddings)."""
    difference = tokenizer_difference(tokenizer, load_tokenizer(name, trust_remote_code=trust_remote_code))
    if difference:
        raise ValueError(f"--{option} {name}: its tokenizer differs from --model's ({difference}); it must read the "
                         "policy's token ids")


def _lora(model, cfg, task_type: str):
    from peft import LoraConfig, get_peft_model
    targets = list(cfg.lora_target_modules) or "all-linear"
    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                        target_modules=targets, task_type=task_type)
    return get_peft_model(model, config)


# Model types whose attention ``models.attention`` reproduces and whose forward passes its packing
# index down to it: for these, a packed sequence's log-probs (and reward) equal its own alone
# (tests/test_architectures.py, one tiny random model per type). Other types (Falcon, BLOOM, MPT,
# XGLM, GPT-J: their attention mixes packed sequences) and remote code train on padded batches.
PACKED_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "phi", "phi3", "gpt2", "gpt_neox", "opt"})


def _use_packed_attention(model, cfg) -> None:
    """``models.attention`` (packed batches attend sequence by sequence) for the model types above;
    other types, and remote code, keep their own default."""
    if not getattr(cfg, "trust_remote_code", False) and model.config.model_type in PACKED_TYPES:
        model.set_attn_implementation(ATTENTION)


def packs_exactly(model) -> bool:
    """Whether padding-free packed batches are exact for ``model`` (loaded with the packed attention)."""
    base = getattr(model, "module", model)
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    return getattr(base.config, "_attn_implementation", None) == ATTENTION


def _load_dtype(cfg, trainable: bool) -> torch.dtype:
    """Trained models load in float32 (the Trainer keeps float32 masters and computes in bfloat16
    with ``--dtype bfloat16``); frozen ones load straight in the compute dtype."""
    return torch.bfloat16 if getattr(cfg, "dtype", "float32") == "bfloat16" and not trainable else torch.float32


def _finish(model, cfg, trainable: bool, task_type: str):
    _use_packed_attention(model, cfg)
    if not trainable:
        model.eval().requires_grad_(False)
    if trainable and getattr(cfg, "gradient_checkpointing", False):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if trainable and getattr(cfg, "lora_r", 0) > 0:
        model = _lora(model, cfg, task_type)
    return model


def load_causal_lm(name: str, cfg=None, *, trainable: bool = True, device=None):
    """A causal LM, loaded straight onto ``device`` in its dtype (float32 for training, whose bf16
    copies the trainer makes; frozen models in the compute dtype); with ``cfg.lora_r > 0`` and
    ``trainable``, LoRA adapters wrap it."""
    trust = bool(getattr(cfg, "trust_remote_code", False))
    model = AutoModelForCausalLM.from_pretrained(_source(name), dtype=_load_dtype(cfg, trainable),
                                                 trust_remote_code=trust, use_safetensors=True,
                                                 device_map=str(device) if device else None)
    return _finish(model, cfg, trainable, "CAUSAL_LM")


def load_reward_model(name: str, cfg=None, *, trainable: bool = True, pad_token_id: int | None = None, device=None):
    """A sequence classifier with one output (a scalar reward), as the notes recommend, loaded
    straight onto ``device``."""
    trust = bool(getattr(cfg, "trust_remote_code", False))
    model = AutoModelForSequenceClassification.from_pretrained(
        _source(name), num_labels=1, dtype=_load_dtype(cfg, trainable), trust_remote_code=trust, use_safetensors=True,
        device_map=str(device) if device else None)
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    return _finish(model, cfg, trainable, "SEQ_CLS")


def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout off everywhere (TRL's ``disable_dropout``, on by default for its preference trainers):
    DPO's policy log-probs must be comparable with the reference's, PPO's with its rollout's, and a
    reward model's two sides must see the same network. Covers ``nn.Dropout`` modules and the float
    rates that attention layers pass to their functions (``attention_dropout``, OPT's ``dropout`` and
    ``layerdrop``, …)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name, value in vars(module).items():
            if isinstance(value, float) and ("dropout" in name or name == "layerdrop"):
                setattr(module, name, 0.0)


def _gathered_copy(model):
    """An FSDP2-sharded model's whole weights, gathered into an unsharded copy of it on rank 0's CPU
    (built on the meta device, then given the gathered tensors); None on the other ranks. A collective."""
    from ..train.distributed import full_state_dict
    state = full_state_dict(model)
    if not state:
        return None
    base = model.get_base_model() if hasattr(model, "peft_config") else model
    with torch.device("meta"):
        copy = type(base)(base.config)
    if hasattr(model, "peft_config"):
        from peft import get_peft_model
        copy = get_peft_model(copy, model.peft_config["default"])
    copy.load_state_dict(state, strict=False, assign=True)
    if getattr(copy.config, "tie_word_embeddings", False):
        copy.tie_weights()
    return copy


def save_model(model, tokenizer, path: Path, *, merge_lora: bool = True, main: bool = True) -> None:
    """A ``save_pretrained`` folder (safetensors) that plain ``transformers`` loads, written by the
    main process beside ``path`` and renamed into place, so a crash mid-save never leaves a
    half-written folder there. Every process calls it: an FSDP2 model is gathered first."""
    from ..train.distributed import is_sharded
    model = getattr(model, "module", model)  # DDP
    if is_sharded(model):
        model = _gathered_copy(model)
    if not main or model is None:
        return
    if hasattr(model, "peft_config") and merge_lora:
        model = model.merge_and_unload()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
