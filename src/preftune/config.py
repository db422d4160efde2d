"""Dataclass configs: a YAML file plus ``--key value`` overrides; the resolved config is saved
with every run as ``config.yaml``."""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


def opt(default, help: str, choices=None):
    """A config field with its help text (shown by ``--help``)."""
    meta = {"help": help}
    if choices:
        meta["choices"] = choices
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    data: str = opt(None, "training data: a .jsonl/.json/.parquet/.csv file, a folder of them, or a hub dataset name")
    split: str = opt("train", "split to read from a hub dataset or folder")
    eval_data: str = opt(None, "held-out data (same formats); default: eval_fraction of --data")
    eval_fraction: float = opt(0.0, "share of --data held out for evaluation when --eval_data is not given")
    columns: dict = opt({}, "rename columns onto ours, e.g. {question: prompt, response_j: chosen, response_k: rejected}")
    max_length: int = opt(512, "maximum tokens of prompt + completion")
    max_prompt_length: int = opt(256, "maximum prompt tokens; longer prompts are truncated")
    truncation_side: str = opt("left", "which end of a too-long prompt is cut", ["left", "right"])
    on_bad_row: str = opt("error", "a malformed row stops the run (error) or is skipped and recorded in rejected_rows.jsonl (skip)", ["error", "skip"])


@dataclass
class ModelConfig:
    model: str = opt(None, "model: a local folder or a hub name")
    dtype: str = opt("float32", "compute precision: float32, or bfloat16 compute with float32 master weights", ["float32", "bfloat16"])
    trust_remote_code: bool = opt(False, "allow a hub model's own Python code to run")
    lora_r: int = opt(0, "LoRA rank; 0 trains all weights")
    lora_alpha: int = opt(16, "LoRA alpha")
    lora_dropout: float = opt(0.0, "LoRA dropout")
    lora_target_modules: list = opt([], "modules LoRA adapts (default: all linear layers)")
    merge_lora: bool = opt(True, "merge LoRA weights into the base model when saving final/")


@dataclass
class TrainConfig(DataConfig, ModelConfig):
    output_dir: str = opt("runs/run", "folder for config, metrics, checkpoints and final/")
    max_steps: int = opt(100, "optimizer steps")
    batch_size: int = opt(8, "examples per micro-batch per process")
    grad_accum: int = opt(1, "micro-batches per optimizer step")
    lr: float = opt(5e-5, "peak learning rate (AdamW)")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    adam_betas: list = opt([0.9, 0.999], "AdamW betas")
    lr_scheduler: str = opt("cosine", "decay after warm-up", ["cosine", "linear", "constant"])
    warmup_steps: int = opt(0, "linear warm-up steps")
    max_grad_norm: float = opt(1.0, "gradient clipping norm (0 = off)")
    seed: int = opt(0, "seed for weights, data order and sampling")
    log_steps: int = opt(1, "write metrics every N steps")
    eval_steps: int = opt(0, "evaluate every N steps (0 = only at the end)")
    save_steps: int = opt(0, "checkpoint every N steps (0 = no intermediate checkpoints)")
    keep_checkpoints: int = opt(2, "keep the last K checkpoints")
    resume: bool = opt(False, "continue from the latest checkpoint in --output_dir")
    max_bad_steps: int = opt(5, "abort after this many non-finite losses in a row (each is skipped)")
    threads: int = opt(0, "torch CPU threads (0 = torch's default)")
    packing: bool = opt(True, "pack training sequences padding-free into rows (SFT, RM, DPO): no compute on padding")
    progress: bool = opt(True, "show a progress bar")


@dataclass
class SFTConfig(TrainConfig):
    sft_on_chosen: bool = opt(False, "with a preference dataset: learn its chosen completions (π_ref = argmax likelihood of y_w)")
    train_on_prompt: bool = opt(False, "count prompt tokens in the loss")
    lr: float = opt(1e-4, "peak learning rate (AdamW)")


def _parse_value(text: str, typ, choices=None):
    origin = typing.get_origin(typ) or typ
    if typ is bool or origin is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")
    if origin in (dict, list):
        value = yaml.safe_load(text)
        if origin is list and isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, origin):
            raise argparse.ArgumentTypeError(f"expected a {origin.__name__}, got {text!r}")
        return value
    if origin in (int, float):
        return origin(text)
    if choices and text in choices:
        return text
    return None if text.lower() in ("none", "null") else text


def _field_type(cls, f):
    hints = typing.get_type_hints(cls)
    return hints[f.name]


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """Add ``--config`` and one ``--key`` flag per field of ``cls`` to ``parser``."""
    parser.add_argument("--config", help="YAML file of config keys; flags override it")
    for f in dataclasses.fields(cls):
        typ = _field_type(cls, f)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        parser.add_argument(f"--{f.name}", dest=f.name, default=argparse.SUPPRESS,
                            type=lambda s, t=typ, c=f.metadata.get("choices"): _parse_value(s, t, c), metavar=typ.__name__.upper(),
                            help=f"{f.metadata.get('help', '')} (default: {json.dumps(default)})")


def build_config(cls, args: argparse.Namespace | dict):
    """YAML file (``args.config``) then explicit flags, over the dataclass defaults."""
    given = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
    values = {}
    path = given.pop("config", None)
    if path:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of config keys")
        values.update(loaded)
    values.update({k: v for k, v in given.items() if k != "command"})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown config key(s) for {cls.__name__}: {', '.join(unknown)}")
    cfg = cls(**values)
    for f in dataclasses.fields(cls):
        choices = f.metadata.get("choices")
        if choices and getattr(cfg, f.name) not in choices:
            raise ValueError(f"--{f.name} must be one of {choices}, got {getattr(cfg, f.name)!r}")
    return cfg


def save_config(cfg, path: Path) -> None:
    path.write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))


@dataclass
class RMConfig(TrainConfig):
    lr: float = opt(1e-4, "peak learning rate (AdamW)")
    ranking_objective: str = opt("pairs", "for ranking data: all C(K,2) ordered pairs (pairs, InstructGPT) or K-way best-of-n cross-entropy (best_of_n)", ["pairs", "best_of_n"])
    use_margin: bool = opt(True, "subtract a row's 'margin' column inside the pairwise loss when present (Llama-2)")
    center_rewards_coef: float = opt(0.0, "reward centering: add coef · mean(r²) to the loss (0 = off)")


@dataclass
class DPOConfig(TrainConfig):
    loss: str = opt("sigmoid", "preference loss: a name in preftune.losses.preference.PREFERENCE_LOSSES")
    beta: float = opt(0.1, "β: strength of the implicit KL constraint (τ for IPO)")
    ref: str = opt("model", "reference: a frozen model (model; with LoRA, the policy with adapters off), log-probs computed once before training (precomputed), or none for reference-free losses", ["model", "precomputed", "none"])
    ref_model: str = opt(None, "folder or hub name of π_ref (default: --model)")
    label_smoothing: float = opt(0.0, "ε for cDPO (sigmoid) and robust DPO: assumed label-flip rate")
    gamma: float = opt(0.5, "SimPO target reward margin γ")
    lambda_: float = opt(50.0, "DPO-Positive penalty weight λ")
    ipo_average_logps: bool = opt(True, "IPO on length-averaged log-probs, as the IPO paper does")
    nll_coef: float = opt(None, "add coef · NLL per token of the chosen completion (ORPO's SFT term; default 1 for orpo, else 0)")
    sft_on_chosen: bool = opt(False, "first fit π_ref by maximum likelihood on the chosen completions, then run DPO from it")
    sft_steps: int = opt(100, "steps of that SFT phase")
    lr: float = opt(5e-5, "peak learning rate (AdamW)")


@dataclass
class PPOConfig(TrainConfig):
    algo: str = opt("ppo", "ppo (critic + GAE), rloo (leave-one-out baseline) or grpo (group-normalised advantage, KL in the loss)", ["ppo", "rloo", "grpo"])
    reward: str = opt(None, "reward source: a reward-model folder (scored at the last token) or module:function")
    ref_model: str = opt(None, "frozen reference π_ref (default: --model)")
    critic: str = opt("separate", "ppo's critic: a separate value model (separate) or a value head on the policy's trunk (shared)", ["separate", "shared"])
    value_model: str = opt(None, "initial critic weights (default: the reward model; with a callable reward: --model)")
    rollout_batch_size: int = opt(16, "prompts per iteration per process")
    num_samples: int = opt(1, "completions per prompt (rloo and grpo need ≥ 2)")
    ppo_epochs: int = opt(2, "passes over each rollout batch")
    max_new_tokens: int = opt(24, "longest completion")
    temperature: float = opt(1.0, "sampling temperature (0 = greedy)")
    top_k: int = opt(0, "sample among the k most likely tokens (0 = all)")
    top_p: float = opt(1.0, "nucleus sampling mass")
    kl_coef: float = opt(0.05, "β of the per-token KL penalty (ppo, rloo) or KL loss (grpo)")
    kl_estimator: str = opt("k1", "KL estimator in the reward: k1, k2 or k3 (Schulman)", ["k1", "k2", "k3"])
    target_kl: float = opt(None, "adapt β towards this KL per completion (Ziegler et al.); none = fixed β")
    kl_horizon: int = opt(10000, "adaptive KL horizon")
    gamma: float = opt(1.0, "discount γ")
    lam: float = opt(0.95, "GAE λ")
    clip_range: float = opt(0.2, "policy ratio clip ε")
    clip_range_value: float = opt(0.2, "value clip")
    vf_coef: float = opt(0.1, "value-loss weight")
    ent_coef: float = opt(0.0, "entropy bonus weight")
    whiten_advantages: bool = opt(True, "normalise advantages over each rollout batch")
    reward_clip: float = opt(0.0, "clip sequence rewards to [−c, c] (0 = off)")
    missing_eos_penalty: float = opt(None, "subtract this from the reward of completions that end without EOS")
    normalize_reward: bool = opt(False, "normalise sequence rewards by their running mean and std")
    ptx_coef: float = opt(0.0, "PPO-ptx: weight γ of the language-model loss on --ptx_data")
    ptx_data: str = opt(None, "text dataset for PPO-ptx")
    ptx_batch_size: int = opt(4, "ptx rows per micro-batch")
    eval_prompts: int = opt(64, "held-out prompts scored at evaluation")
    lr: float = opt(1e-5, "peak learning rate (AdamW)")
    lr_scheduler: str = opt("constant", "decay after warm-up", ["cosine", "linear", "constant"])
    max_length: int = opt(256, "maximum tokens of prompt + completion")
    max_prompt_length: int = opt(128, "maximum prompt tokens")
    batch_size: int = opt(8, "completions per micro-batch per process")
