"""Dataclass configs: a YAML file plus ``--key value`` overrides; the resolved config is saved
with every run as ``config.yaml``.

Every value is typed from its field when a config is made — from YAML, flags or Python alike
(``lr: 5e-7`` is a float even though YAML reads it as a string; ``progress: "false"`` is False) —
and checked against the field's choices and bounds, so a value that cannot be right stops the run
before any model loads, with the option named."""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib.util
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def opt(default, help: str, choices=None, *, bounds: str | None = None, pattern: str | None = None,
        nullable: bool = False):
    """A config field with its help text (shown by ``--help``), its allowed ``choices``, its
    ``bounds`` as an interval (``"(0, inf)"``, ``"[0, 0.5)"``) or a regular-expression ``pattern``;
    ``nullable``: None is allowed beside a non-None default (a field whose default is None always is)."""
    meta = {"help": help, "nullable": nullable or default is None}
    if choices:
        meta["choices"] = choices
    if bounds:
        meta["bounds"] = bounds
    if pattern:
        meta["pattern"] = pattern
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def _in_bounds(value: float, bounds: str) -> bool:
    low, high = (float(x) for x in bounds[1:-1].split(","))
    return ((value > low) if bounds[0] == "(" else (value >= low)) and \
        ((value < high) if bounds[-1] == ")" else (value <= high))


def _describe(bounds: str) -> str:
    """"(0, inf)" as "> 0", "[1, inf)" as "≥ 1", others as "in [0, 0.5)"."""
    low, high = (x.strip() for x in bounds[1:-1].split(","))
    if high == "inf":
        return f"{'>' if bounds[0] == '(' else '≥'} {low}"
    return f"in {bounds}"


def _typed(name: str, value, typ, default, nullable: bool = False):
    """``value`` as the field's type; strings are parsed (YAML and flags give strings)."""
    origin = typing.get_origin(typ) or typ
    if value is None or (nullable and isinstance(value, str) and value.lower() in ("none", "null")):
        if nullable:
            return None
        raise ValueError(f"--{name}: a value is required (default {json.dumps(default)})")
    if origin is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in TRUE + FALSE:
            return value.lower() in TRUE
        raise ValueError(f"--{name}: expected true or false, got {value!r}")
    if origin in (int, float):
        number = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
        if isinstance(number, bool) or not isinstance(number, (int, float)) or (
                origin is int and not float(number).is_integer()):
            raise ValueError(f"--{name}: expected {'an integer' if origin is int else 'a number'}, got {value!r}")
        return int(number) if origin is int else float(number)
    if origin in (dict, list):
        if isinstance(value, str):
            value = yaml.safe_load(value)
            if origin is list and isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, origin):
            raise ValueError(f"--{name}: expected a {origin.__name__}, got {value!r}")
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"--{name}: expected a string, got {value!r}")
    return value


@dataclass
class Config:
    """Base of every command's config: values typed from their fields and checked on creation.
    ``RENAMED`` maps spellings a class no longer takes onto its own (did-you-mean hints); ``ALIASES`` maps
    other names it takes (TRL's) onto its fields."""
    RENAMED: typing.ClassVar[dict] = {}
    ALIASES: typing.ClassVar[dict] = {}

    @classmethod
    def hint(cls, key: str, *, yaml_key: bool = False) -> str:
        """" (did you mean --x?)" for an unknown ``key``, else ""."""
        return did_you_mean(key, [f.name for f in dataclasses.fields(cls)], yaml_key=yaml_key, renamed=cls.RENAMED)

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            value = _typed(f.name, getattr(self, f.name), hints[f.name], default, f.metadata.get("nullable", True))
            choices, bounds = f.metadata.get("choices"), f.metadata.get("bounds")
            if choices and value not in choices:
                raise ValueError(f"--{f.name} must be one of {', '.join(map(str, choices))}; got {value!r}")
            if bounds and value is not None and (math.isnan(value) or not _in_bounds(value, bounds)):
                raise ValueError(f"--{f.name} must be {_describe(bounds)}; got {value!r}")
            if f.metadata.get("pattern") and not re.fullmatch(f.metadata["pattern"], value):
                raise ValueError(f"--{f.name} must be one of {f.metadata['pattern'].replace('|', ', ')}; got {value!r}")
            setattr(self, f.name, value)


POSITIVE, NON_NEGATIVE, AT_LEAST_ONE = "(0, inf)", "[0, inf)", "[1, inf)"
# the names of preftune.losses.preference.PREFERENCE_LOSSES (a test keeps them equal; this module imports no torch)
# the names of preftune.losses.ppo.GRPO_LOSSES (likewise)
GRPO_LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo")
PREFERENCE_LOSS_NAMES = ("sigmoid", "ipo", "hinge", "robust", "dpop", "bco_pair", "apo_zero", "simpo", "orpo")


@dataclass
class DataConfig(Config):
    data: str = opt(None, "training data: a .jsonl/.json/.parquet/.csv file, a folder of them, or a hub dataset name")
    split: str = opt("train", "split to read from a hub dataset or a folder (the file whose name is the split)")
    eval_data: str = opt(None, "held-out data (same formats; from a folder, its test/validation file); "
                               "default: eval_fraction of --data")
    eval_fraction: float = opt(0.0, "share of --data held out for evaluation when --eval_data is not given",
                               bounds="[0, 1)")
    columns: dict = opt({}, "rename columns onto ours, e.g. "
                            "{question: prompt, response_j: chosen, response_k: rejected}")
    max_length: int = opt(512, "maximum tokens of prompt + completion", bounds="[2, inf)")
    max_prompt_length: int = opt(256, "maximum prompt tokens; longer prompts are truncated", bounds=AT_LEAST_ONE)
    truncation_side: str = opt("left", "which end of a too-long prompt is cut (a leading BOS stays)", ["left", "right"])
    on_bad_row: str = opt("error", "a malformed row stops the run (error) or is skipped and recorded in "
                                   "rejected_rows.jsonl (skip)", ["error", "skip"])


DEVICES = r"auto|cpu|cuda|cuda:\d+"
TRACKERS = ("tensorboard", "mlflow", "trackio", "wandb")


@dataclass
class DeviceConfig(Config):
    """Where and in what precision a command's models run (every command)."""
    device: str = opt("auto", "where models run: auto (the GPU when there is one — under torchrun the local rank's — "
                              "else the CPU), cpu, cuda or cuda:N", pattern=DEVICES)
    dtype: str = opt("float32", "precision of the models: float32, or bfloat16 (advised on GPUs)",
                     ["float32", "bfloat16"])


@dataclass
class ModelConfig(DeviceConfig):
    model: str = opt(None, "model: a local folder or a hub name")
    dtype: str = opt("float32", "compute precision: float32, or bfloat16 compute over float32 master weights "
                                "(advised on GPUs; frozen models then load in bf16)", ["float32", "bfloat16"])
    trust_remote_code: bool = opt(False, "allow a hub model's own Python code to run")
    lora_r: int = opt(0, "LoRA rank; 0 trains all weights", bounds=NON_NEGATIVE)
    lora_alpha: int = opt(16, "LoRA alpha", bounds=POSITIVE)
    lora_dropout: float = opt(0.0, "LoRA dropout", bounds="[0, 1)")
    lora_target_modules: list = opt([], "modules LoRA adapts (default: all linear layers)")
    merge_lora: bool = opt(True, "merge LoRA weights into the base model when saving final/")


@dataclass
class TrainConfig(DataConfig, ModelConfig):
    output_dir: str = opt("runs/run", "folder for config, metrics, checkpoints and final/ (Python API: None trains "
                                      "without writing anything)", nullable=True)
    max_steps: int = opt(None, "optimizer steps (100 when --epochs is not given either)", bounds=AT_LEAST_ONE)
    epochs: float = opt(None, "passes over the training data, instead of --max_steps", bounds=POSITIVE)
    batch_size: int = opt(8, "examples per micro-batch per process", bounds=AT_LEAST_ONE)
    grad_accum: int = opt(1, "micro-batches per optimizer step", bounds=AT_LEAST_ONE)
    lr: float = opt(5e-5, "peak learning rate (AdamW)", bounds=POSITIVE)
    weight_decay: float = opt(0.0, "AdamW weight decay", bounds=NON_NEGATIVE)
    adam_betas: list = opt([0.9, 0.999], "AdamW betas")
    lr_scheduler: str = opt("cosine", "decay after warm-up", ["cosine", "linear", "constant"])
    warmup_steps: int = opt(0, "linear warm-up steps", bounds=NON_NEGATIVE)
    max_grad_norm: float = opt(1.0, "gradient clipping norm (0 = off)", bounds=NON_NEGATIVE)
    seed: int = opt(0, "seed for weights, data order and sampling", bounds="[0, 4294967295]")
    log_steps: int = opt(1, "write metrics every N steps", bounds=AT_LEAST_ONE)
    eval_steps: int = opt(0, "evaluate every N steps (0 = only at the end)", bounds=NON_NEGATIVE)
    save_steps: int = opt(0, "checkpoint every N steps (0 = no intermediate checkpoints)", bounds=NON_NEGATIVE)
    keep_checkpoints: int = opt(2, "keep the last K checkpoints", bounds=AT_LEAST_ONE)
    resume: bool = opt(False, "continue the run in --output_dir from its latest checkpoint (same data and settings)")
    overwrite: bool = opt(False, "replace the run in --output_dir (its metrics, checkpoints, final/ and summary)")
    max_bad_steps: int = opt(5, "abort after this many non-finite losses in a row (each is skipped)",
                             bounds=AT_LEAST_ONE)
    threads: int = opt(0, "torch CPU threads (0 = torch's default)", bounds=NON_NEGATIVE)
    packing: bool = opt(True, "pack training sequences padding-free into rows (SFT, RM, DPO): no compute on "
                              "padding; used only for architectures where it is exact, others train padded")
    fsdp: bool = opt(False, "under torchrun: shard the trained (and frozen) models over the processes with FSDP2 "
                            "(one unit per decoder layer); with bfloat16, FSDP's mixed precision")
    gradient_checkpointing: bool = opt(False, "recompute each decoder layer's activations in the backward pass "
                                              "(non-reentrant): less memory, about a third more compute")
    progress: bool = opt(True, "show a progress bar")
    log_seconds: float = opt(0.0, "print a progress line (step, loss, tokens/s, time left) at most every N seconds "
                                  "(0 = none; for logs, where a progress bar does not render)", bounds="[0, inf)")
    report_to: list = opt(["tensorboard"], f"where logged metrics go besides metrics.jsonl: one or more of "
                                           f"{', '.join(TRACKERS)}, or none")

    def __post_init__(self):
        super().__post_init__()
        unknown = [t for t in self.report_to if t not in TRACKERS + ("none",)]
        if unknown or not self.report_to or ("none" in self.report_to and len(self.report_to) > 1):
            raise ValueError(f"--report_to must be one or more of {', '.join(TRACKERS)}, or none; got "
                             f"{', '.join(map(str, self.report_to)) or 'nothing'}")
        for tracker in set(self.report_to) - {"none"}:
            if importlib.util.find_spec(tracker) is None:
                raise ValueError(f"--report_to {tracker}: the {tracker} package is not installed "
                                 f"(pip install 'preftune[{tracker}]')")
        if self.output_dir is None:
            for option, on in (("resume", self.resume), ("save_steps", self.save_steps)):
                if on:
                    raise ValueError(f"--{option} needs --output_dir (a run folder to keep checkpoints in); "
                                     "output_dir None writes nothing")
        if self.max_steps is not None and self.epochs is not None:
            raise ValueError("give --max_steps or --epochs, not both")
        if self.resume and self.overwrite:
            raise ValueError("give --resume or --overwrite, not both")
        if len(self.adam_betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"--adam_betas must be two numbers in [0, 1); got {self.adam_betas!r}")


def train_options(cfg) -> dict:
    """The options every training command shares (``TrainConfig``'s fields) as ``cfg`` holds them: what one
    stage of a pipeline hands the next, by meaning — never the fields of another command that happen to
    share a name (DPO's SimPO γ is not PPO's discount)."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainConfig)}


@dataclass
class SFTConfig(TrainConfig):
    sft_on_chosen: bool = opt(False, "with a preference dataset: learn its chosen completions "
                                     "(π_ref = argmax likelihood of y_w)")
    train_on_prompt: bool = opt(False, "count prompt tokens in the loss")
    desirable_only: bool = opt(False, "with unpaired rows (prompt, completion, label): learn the label: true rows only "
                                      "(without it, such data is refused)")
    lr: float = opt(1e-4, "peak learning rate (AdamW)", bounds=POSITIVE)


@dataclass
class RMConfig(TrainConfig):
    lr: float = opt(1e-4, "peak learning rate (AdamW)", bounds=POSITIVE)
    ranking_objective: str = opt("pairs", "for ranking data: all C(K,2) ordered pairs (pairs, InstructGPT) or K-way "
                                          "best-of-n cross-entropy (best_of_n)", ["pairs", "best_of_n"])
    use_margin: bool = opt(True, "subtract each row's 'margin' inside the pairwise loss (Llama-2); every row needs one "
                                 "when any row has one")
    center_rewards_coef: float = opt(0.0, "reward centering: add coef · mean(r²) to the loss (0 = off)",
                                     bounds=NON_NEGATIVE)


@dataclass
class DPOConfig(TrainConfig):
    loss: str = opt("sigmoid", "preference loss", list(PREFERENCE_LOSS_NAMES))
    beta: float = opt(0.1, "β: strength of the implicit KL constraint (τ for IPO)", bounds=POSITIVE)
    ref: str = opt("model", "reference: a frozen model (model; with LoRA, the policy with adapters off), log-probs "
                            "computed once before training (precomputed), or none for reference-free losses",
                   ["model", "precomputed", "none"])
    ref_model: str = opt(None, "folder or hub name of π_ref (default: --model); its tokenizer must be the policy's")
    label_smoothing: float = opt(0.0, "ε for cDPO (sigmoid) and robust DPO: assumed label-flip rate",
                                 bounds="[0, 0.5)")
    simpo_gamma: float = opt(0.5, "SimPO target reward margin γ")
    dpop_lambda: float = opt(50.0, "DPO-Positive penalty weight λ", bounds=NON_NEGATIVE)
    ipo_average_logps: bool = opt(True, "IPO on length-averaged log-probs, as the IPO paper does")
    nll_coef: float = opt(None, "add coef · NLL per token of the chosen completion (ORPO's SFT term; default 1 for "
                                "orpo, else 0)", bounds=NON_NEGATIVE)
    sft_on_chosen: bool = opt(False, "first fit π_ref by maximum likelihood on the chosen completions, then run DPO "
                                     "from it")
    sft_steps: int = opt(100, "steps of that SFT phase", bounds=AT_LEAST_ONE)
    lr: float = opt(5e-5, "peak learning rate (AdamW)", bounds=POSITIVE)
    RENAMED: typing.ClassVar[dict] = {"gamma": "simpo_gamma", "lambda_": "dpop_lambda"}


@dataclass
class KTOConfig(TrainConfig):
    beta: float = opt(0.1, "β: strength of the implicit KL constraint", bounds=POSITIVE)
    desirable_weight: float = opt(1.0, "λ_D, weight of desirable rows' losses", bounds=POSITIVE)
    undesirable_weight: float = opt(1.0, "λ_U, weight of undesirable rows' losses (the paper advises "
                                         "λ_D·n_D / (λ_U·n_U) in [1, 4/3])", bounds=POSITIVE)
    ref_model: str = opt(None, "folder or hub name of π_ref (default: --model; with LoRA, the policy with adapters "
                               "off); its tokenizer must be the policy's")
    batch_size: int = opt(8, "rows per micro-batch per process (≥ 2: the KL estimate pairs each prompt with another "
                             "row's completion)", bounds="[2, inf)")
    lr: float = opt(5e-5, "peak learning rate (AdamW)", bounds=POSITIVE)


@dataclass
class PPOConfig(TrainConfig):
    ALIASES: typing.ClassVar[dict] = {"num_generations": "num_samples", "max_completion_length": "max_new_tokens"}
    RENAMED: typing.ClassVar[dict] = {"importance_sampling_level": "importance_sampling",
                                      "use_bias_correction_kl": "bias_corrected_kl"}

    algo: str = opt("ppo", "ppo (critic + GAE), rloo (leave-one-out baseline) or grpo (group-normalised advantage, "
                           "KL in the loss)", ["ppo", "rloo", "grpo"])
    reward: str = opt(None, "reward source: a reward-model folder (scored at the last token) or module:function")
    ref_model: str = opt(None, "frozen reference π_ref (default: --model); its tokenizer must be the policy's")
    critic: str = opt("separate", "ppo's critic: a separate value model (separate) or a value head on the policy's "
                                  "trunk (shared)", ["separate", "shared"])
    value_model: str = opt(None, "initial critic weights (default: the reward model; with a callable reward: --model)")
    rollout_batch_size: int = opt(16, "prompts per iteration per process", bounds=AT_LEAST_ONE)
    forward_batch_size: int = opt(64, "sequences per forward pass when generating and scoring a rollout (policy, "
                                      "reference, critic, reward model)", bounds=AT_LEAST_ONE)
    num_samples: int = opt(1, "completions per prompt (rloo and grpo need ≥ 2)", bounds=AT_LEAST_ONE)
    ppo_epochs: int = opt(2, "passes over each rollout batch", bounds=AT_LEAST_ONE)
    max_new_tokens: int = opt(24, "longest completion", bounds=AT_LEAST_ONE)
    temperature: float = opt(1.0, "sampling temperature (0 = greedy)", bounds=NON_NEGATIVE)
    top_k: int = opt(0, "sample among the k most likely tokens (0 = all)", bounds=NON_NEGATIVE)
    top_p: float = opt(1.0, "nucleus sampling mass", bounds="(0, 1]")
    kl_coef: float = opt(0.05, "β of the per-token KL penalty in the reward (ppo, rloo; 0 with no --target_kl: "
                               "no reference model is loaded)", bounds=NON_NEGATIVE)
    loss_type: str = opt("dapo", "grpo's loss, as TRL 1.16 names and computes it: grpo (per-sequence length-"
                                 "normalised, Shao et al. 2024), dr_grpo (÷ B·max_new_tokens, Liu et al. 2025), "
                                 "dapo (÷ the step's completion tokens, Yu et al. 2025), bnpo (÷ each micro-batch's "
                                 "tokens), cispo (clipped-ratio REINFORCE, MiniMax-M1), sapo (soft gate), luspo "
                                 "(sequence loss × length; needs --importance_sampling sequence)",
                         list(GRPO_LOSS_TYPES))
    epsilon: float = opt(0.2, "grpo's clip ε of the ratio (lower side; ppo and rloo use --clip_range)",
                         bounds=POSITIVE)
    epsilon_high: float = opt(None, "grpo's upper clip (DAPO's clip-higher: 0.28; default: --epsilon); for cispo "
                                    "the cap on the ratio (5.0 in MiniMax-M1; required)", bounds=POSITIVE)
    importance_sampling: str = opt("token", "grpo's importance ratio per token, or per sequence (GSPO, Zheng et al. "
                                            "2025: the exp of the mean token log-ratio)", ["token", "sequence"])
    scale_rewards: str = opt("group", "grpo's advantage scaling: ÷ the group's reward std (group), the batch's "
                                      "(batch, PPO-Lite), or none (Dr. GRPO)", ["group", "batch", "none"])
    beta: float = opt(0.0, "grpo: weight of the k3 KL to π_ref in the loss (0 = TRL's default: no reference model is "
                           "loaded or run)", bounds=NON_NEGATIVE)
    bias_corrected_kl: bool = opt(True, "grpo: multiply the KL term by the importance ratio (DeepSeek-V3.2; TRL's "
                                        "use_bias_correction_kl)")
    mask_truncated_completions: bool = opt(False, "grpo: leave completions that end without EOS out of the loss "
                                                  "(DAPO)")
    num_iterations: int = opt(1, "grpo: updates per generation batch (μ; ppo and rloo use --ppo_epochs); with 1 and "
                                 "one minibatch, the old log-probs are the update's own (no separate pass, as TRL)",
                              bounds=AT_LEAST_ONE)
    kl_estimator: str = opt("k1", "KL estimator in the reward: k1, k2 or k3 (Schulman)", ["k1", "k2", "k3"])
    target_kl: float = opt(None, "adapt β towards this KL per completion (Ziegler et al.); none = fixed β",
                           bounds=POSITIVE)
    kl_horizon: int = opt(10000, "adaptive KL horizon", bounds=AT_LEAST_ONE)
    gamma: float = opt(1.0, "discount γ", bounds="[0, 1]")
    lam: float = opt(0.95, "GAE λ", bounds="[0, 1]")
    clip_range: float = opt(0.2, "policy ratio clip ε", bounds=POSITIVE)
    clip_range_value: float = opt(0.2, "value clip", bounds=POSITIVE)
    vf_coef: float = opt(0.1, "value-loss weight", bounds=NON_NEGATIVE)
    ent_coef: float = opt(0.0, "entropy bonus weight", bounds=NON_NEGATIVE)
    whiten_advantages: bool = opt(True, "normalise advantages over each rollout batch")
    reward_clip: float = opt(0.0, "clip sequence rewards to [−c, c] (0 = off)", bounds=NON_NEGATIVE)
    missing_eos_penalty: float = opt(None, "subtract this from the reward of completions that end without EOS")
    normalize_reward: bool = opt(False, "normalise sequence rewards by their running mean and std")
    ptx_coef: float = opt(0.0, "PPO-ptx: weight γ of the language-model loss on --ptx_data", bounds=NON_NEGATIVE)
    ptx_data: str = opt(None, "text dataset for PPO-ptx")
    ptx_batch_size: int = opt(4, "ptx rows per micro-batch", bounds=AT_LEAST_ONE)
    eval_prompts: int = opt(64, "held-out prompts scored at evaluation", bounds=NON_NEGATIVE)
    lr: float = opt(1e-5, "peak learning rate (AdamW)", bounds=POSITIVE)
    lr_scheduler: str = opt("constant", "decay after warm-up", ["cosine", "linear", "constant"])
    max_length: int = opt(256, "maximum tokens of prompt + completion", bounds="[2, inf)")
    max_prompt_length: int = opt(128, "maximum prompt tokens", bounds=AT_LEAST_ONE)
    batch_size: int = opt(8, "completions per micro-batch per process", bounds=AT_LEAST_ONE)

    def __post_init__(self):
        super().__post_init__()
        if self.algo == "grpo" and self.loss_type == "cispo" and self.epsilon_high is None:
            raise ValueError("--loss_type cispo needs --epsilon_high, the cap on the importance ratio (5.0 in "
                             "MiniMax-M1)")
        if self.algo == "grpo" and self.loss_type == "luspo" and self.importance_sampling != "sequence":
            raise ValueError("--loss_type luspo needs --importance_sampling sequence (LUSPO scales GSPO's "
                             "sequence loss by its length)")


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """Add ``--config`` and one ``--key`` flag per field of ``cls`` to ``parser``; values stay strings
    until the config types them, and a boolean flag alone means true (``--resume``)."""
    parser.add_argument("--config", help="YAML file of config keys; flags override it")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        meta = f.metadata
        extra = {"nargs": "?", "const": "true"} if hints[f.name] is bool else {}
        limits = f"; one of {', '.join(meta['choices'])}" if meta.get("choices") else \
            f"; {_describe(meta['bounds'])}" if meta.get("bounds") else ""
        parser.add_argument(f"--{f.name}", dest=f.name, default=argparse.SUPPRESS,
                            metavar=hints[f.name].__name__.upper(),
                            help=f"{meta.get('help', '')} (default: {json.dumps(default)}{limits})", **extra)
    for alias, name in cls.ALIASES.items():
        parser.add_argument(f"--{alias}", dest=alias, default=argparse.SUPPRESS, metavar=hints[name].__name__.upper(),
                            help=f"another name for --{name} (TRL's)")


# TRL / transformers TrainingArguments names users bring, and ours
TRL_NAMES = {"learning_rate": "lr", "per_device_train_batch_size": "batch_size", "per_device_eval_batch_size":
             "batch_size", "num_train_epochs": "epochs", "gradient_accumulation_steps": "grad_accum",
             "bf16": "dtype bfloat16", "fp16": "dtype bfloat16", "logging_steps": "log_steps", "lr_scheduler_type":
             "lr_scheduler", "save_total_limit": "keep_checkpoints", "model_name_or_path": "model", "dataset_name":
             "data", "loss_type": "loss", "resume_from_checkpoint": "resume", "warmup_ratio": "warmup_steps",
             "dataset_train_split": "split", "use_peft": "lora_r", "max_completion_length": "max_length",
             "dataset_num_proc": "threads", "ref_model_name_or_path": "ref_model"}


def did_you_mean(key: str, names, *, yaml_key: bool = False, renamed: dict | None = None) -> str:
    """" (did you mean --lr?)" for a TRL-style or misspelt flag (" (did you mean lr?)" for a YAML
    key), else ""."""
    key = key.lstrip("-").split("=")[0]
    renamed = renamed or {}
    ours = renamed.get(key) or TRL_NAMES.get(key)
    if ours is None or ours.split()[0] not in names:
        ours = next(iter(difflib.get_close_matches(key, names, n=1, cutoff=0.75)), None)
    if not ours:
        return ""
    return f" (did you mean {ours.replace(' ', ': ')}?)" if yaml_key else f" (did you mean --{ours}?)"


def build_config(cls, args: argparse.Namespace | dict):
    """YAML file (``args.config``) then explicit flags, over the dataclass defaults."""
    given = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
    values = {}
    path = given.pop("config", None)
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of config keys")
        values.update(loaded)
    flags = {k: v for k, v in given.items() if k not in ("command", "debug")}
    values.update(flags)
    for alias, name in cls.ALIASES.items():
        if alias in values:
            if name in values and str(values[name]) != str(values[alias]):
                raise ValueError(f"--{alias} is another name for --{name}: give one of them")
            values[name] = values.pop(alias)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        hints = [k + cls.hint(k, yaml_key=k not in flags) for k in unknown]
        raise ValueError(f"unknown config key(s) for {cls.__name__}: {', '.join(hints)}")
    return cls(**values)


def save_config(cfg, path: Path) -> None:
    path.write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
