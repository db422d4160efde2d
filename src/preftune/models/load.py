"""Load models and tokenizers with ``transformers`` Auto classes from a folder or a hub name;
weights through safetensors; ``trust_remote_code`` only when asked; optional LoRA through peft."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from ..runtime.distributed import full_state_dict, is_sharded
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


def load_tokenizer(source, *, trust_remote_code: bool = False):
    """A tokenizer from a folder or hub name, or a tokenizer object (used as it is); one without a pad
    token pads with EOS."""
    tok = AutoTokenizer.from_pretrained(_source(str(source)), trust_remote_code=trust_remote_code) \
        if isinstance(source, (str, Path)) else source
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


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapters to add (peft): rank, alpha, dropout and the modules they adapt (empty: every linear
    layer)."""
    r: int
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple = ()


def _lora(model, lora: LoraSpec, task_type: str):
    from peft import LoraConfig, get_peft_model
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules) or "all-linear", task_type=task_type)
    return get_peft_model(model, config)


# Model types whose attention ``models.attention`` reproduces and whose forward passes its packing
# index down to it: for these, a packed sequence's log-probs (and reward) equal its own alone
# (tests/test_architectures.py, one tiny random model per type). Other types (Falcon, BLOOM, MPT,
# XGLM, GPT-J: their attention mixes packed sequences) and remote code train on padded batches.
PACKED_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "phi", "phi3", "gpt2", "gpt_neox", "opt"})


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model inside DDP and peft wrappers (its LoRA layers stay in place)."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _use_packed_attention(model) -> None:
    """``models.attention`` (packed batches attend sequence by sequence) for the model types above, when
    their code is transformers' own; other types, and remote code, keep their own default."""
    base = base_model(model)
    if base.config.model_type in PACKED_TYPES and type(base).__module__.startswith("transformers."):
        base.set_attn_implementation(ATTENTION)


def packs_exactly(model) -> bool:
    """Whether padding-free packed batches are exact for ``model`` (loaded with the packed attention)."""
    return getattr(base_model(model).config, "_attn_implementation", None) == ATTENTION


def _load_dtype(dtype: str, trainable: bool) -> torch.dtype:
    """Trained models load in float32 (the Trainer keeps float32 masters and computes in bfloat16
    with ``--dtype bfloat16``); frozen ones load straight in the compute dtype."""
    return torch.bfloat16 if dtype == "bfloat16" and not trainable else torch.float32


def _finish(model, *, trainable: bool, gradient_checkpointing: bool, lora: LoraSpec | None, task_type: str):
    _use_packed_attention(model)
    if not trainable:
        model.eval().requires_grad_(False)
    if trainable and gradient_checkpointing:
        base_model(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if trainable and lora is not None and lora.r > 0:
        if hasattr(model, "peft_config"):
            raise ValueError("--lora_r: the model already carries peft adapters (they are trained as they are); "
                             "leave lora_r at 0")
        model = _lora(model, lora, task_type)
    return model


def _model(source, auto_class, *, trainable: bool, device, dtype: str, trust_remote_code: bool, **kwargs):
    """``source`` loaded with ``auto_class`` straight onto ``device`` in its load dtype, or a model object
    used as it is (its own dtype; moved to ``device`` when one is given)."""
    if isinstance(source, nn.Module):
        return source.to(device) if device is not None else source
    if not isinstance(source, (str, Path)):
        raise ValueError(f"model: expected a folder, a hub name or a transformers model, got {type(source).__name__}")
    return auto_class.from_pretrained(_source(str(source)), dtype=_load_dtype(dtype, trainable),
                                      trust_remote_code=trust_remote_code, use_safetensors=True,
                                      device_map=str(device) if device else None, **kwargs)


def load_causal_lm(source, *, trainable: bool = True, device=None, dtype: str = "float32",
                   trust_remote_code: bool = False, gradient_checkpointing: bool = False,
                   lora: LoraSpec | None = None):
    """A causal LM from a folder or hub name — loaded straight onto ``device`` in its dtype (float32 for
    training, whose bf16 copies the trainer makes; frozen models in the compute dtype) — or a model object
    (a ``PreTrainedModel`` or ``PeftModel``, used in place); with ``lora`` and ``trainable``, LoRA adapters
    wrap it. Trained in place: the packed attention is set on supported types, a frozen model is frozen."""
    model = _model(source, AutoModelForCausalLM, trainable=trainable, device=device, dtype=dtype,
                   trust_remote_code=trust_remote_code)
    return _finish(model, trainable=trainable, gradient_checkpointing=gradient_checkpointing, lora=lora,
                   task_type="CAUSAL_LM")


def inference_lm(source, **options):
    """A causal LM to sample or score with: a model object as it is (nothing of it changes), else
    ``load_causal_lm(source, trainable=False, **options)``."""
    return source if isinstance(source, nn.Module) else load_causal_lm(source, trainable=False, **options)


def load_reward_model(source, *, trainable: bool = True, pad_token_id: int | None = None, device=None,
                      dtype: str = "float32", trust_remote_code: bool = False, gradient_checkpointing: bool = False,
                      lora: LoraSpec | None = None):
    """A sequence classifier with one output (a scalar reward), as the notes recommend: from a folder or
    hub name (loaded straight onto ``device``), or a model object used in place."""
    model = _model(source, AutoModelForSequenceClassification, trainable=trainable, device=device, dtype=dtype,
                   trust_remote_code=trust_remote_code, num_labels=1)
    if pad_token_id is not None:
        base_model(model).config.pad_token_id = pad_token_id
    return _finish(model, trainable=trainable, gradient_checkpointing=gradient_checkpointing, lora=lora,
                   task_type="SEQ_CLS")


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
