"""preftune as a library: every command as a Python function over objects.

    result = preftune.dpo(model=model, data=rows, tokenizer=tokenizer, output_dir=None, beta=0.1, max_steps=50)
    result.model, result.tokenizer, result.summary, result.metrics

``model`` (and ``ref_model``, ``value_model``) may be a folder or hub name, a ``PreTrainedModel`` or a
``PeftModel`` — an object is trained in place and returned; ``data`` (and ``eval_data``) a path, an
iterable of row dicts or a ``datasets.Dataset``; ``reward`` (ppo, score, evaluate) a reward-model folder,
``module:function``, a reward-model object or a Python callable ``(prompts, completions) -> list[float]``.
Every other keyword is the command's option under its command-line name, checked by the same config
class: a value that cannot be right raises ``ValueError`` naming the option, as the command line's
one-line error does.

``output_dir=None`` (the default here) trains without writing anything — ``resume`` and ``save_steps``
are refused; with a folder, every run-folder guarantee of the command line holds (lock, atomic final/,
resume). ``on_log`` receives each logged metrics record. Process-wide settings are the caller's: threads
change only with ``threads=``, the allocator setting and TF32 only through
``preftune.runtime.device.process_settings()`` (the command line calls it); each run seeds Python's,
NumPy's and torch's generators with ``seed`` (default 0), as transformers' ``Trainer`` does.
"""
from __future__ import annotations

from pathlib import Path

from .config import DPOConfig, KTOConfig, PPOConfig, RMConfig, SFTConfig, build_config
from .recipes.common import Inputs, Result

__all__ = ["Result", "dpo", "evaluate", "generate", "kto", "ppo", "rm", "score", "sft"]


def _split(**given) -> tuple[dict, dict]:
    """Paths go into the config under their option names, objects into ``Inputs``."""
    options, objects = {}, {}
    for name, value in given.items():
        if value is None:
            continue
        (options if isinstance(value, (str, Path)) else objects)[name] = str(value) if isinstance(value, Path) \
            else value
    return options, objects


def _train(cls, train, options: dict, on_log, **given) -> Result:
    paths, objects = _split(**given)
    tokenizer = objects.pop("tokenizer") if "tokenizer" in objects else paths.pop("tokenizer", None)
    cfg = build_config(cls, {"output_dir": None, **options, **paths})
    return train(cfg, Inputs(tokenizer=tokenizer, **objects), on_log)


def sft(model, data, *, tokenizer=None, eval_data=None, on_log=None, **options) -> Result:
    """Supervised fine-tuning (``preftune sft``): the trained model, tokenizer, summary and metrics."""
    from .recipes.sft import train_sft
    return _train(SFTConfig, train_sft, options, on_log, model=model, data=data, eval_data=eval_data,
                  tokenizer=tokenizer)


def rm(model, data, *, tokenizer=None, eval_data=None, on_log=None, **options) -> Result:
    """A reward model (``preftune rm``): pairs, K-wise rankings or best-of-n."""
    from .recipes.reward import train_rm
    return _train(RMConfig, train_rm, options, on_log, model=model, data=data, eval_data=eval_data,
                  tokenizer=tokenizer)


def dpo(model, data, *, tokenizer=None, ref_model=None, eval_data=None, on_log=None, **options) -> Result:
    """DPO and its family (``preftune dpo``); without ``ref_model`` the reference is a frozen copy of
    ``model`` as it is before training (a PeftModel: itself with its adapters off)."""
    from .recipes.dpo import train_dpo
    return _train(DPOConfig, train_dpo, options, on_log, model=model, data=data, eval_data=eval_data,
                  ref_model=ref_model, tokenizer=tokenizer)


def kto(model, data, *, tokenizer=None, ref_model=None, eval_data=None, on_log=None, **options) -> Result:
    """KTO on unpaired rows (``preftune kto``)."""
    from .recipes.kto import train_kto
    return _train(KTOConfig, train_kto, options, on_log, model=model, data=data, eval_data=eval_data,
                  ref_model=ref_model, tokenizer=tokenizer)


def ppo(model, data, *, reward, tokenizer=None, ref_model=None, value_model=None, eval_data=None, on_log=None,
        **options) -> Result:
    """Online RL (``preftune ppo``, ``algo`` ppo | rloo | grpo) against ``reward``; the result's model is
    the policy."""
    from .recipes.ppo import train_ppo
    return _train(PPOConfig, train_ppo, options, on_log, model=model, data=data, eval_data=eval_data,
                  ref_model=ref_model, value_model=value_model, reward=reward, tokenizer=tokenizer)


def generate(model, data, *, tokenizer=None, **options) -> list[dict]:
    """Completions of every prompt row (``preftune generate``): rows of prompt_index, prompt, completion,
    ended_with_eos. A model object is used as it is (nothing of it changes)."""
    from .recipes.generate import GenerateConfig, generate_rows
    paths, objects = _split(model=model, data=data)
    cfg = build_config(GenerateConfig, {**options, **paths})
    return generate_rows(cfg, model=objects.get("model"), tokenizer=tokenizer, prompts=objects.get("data"))


def score(reward, data, *, tokenizer=None, **options) -> list[dict]:
    """The rows with their rewards (``preftune score``): ``reward`` per prompt + completion row,
    ``reward_chosen`` / ``reward_rejected`` per pair."""
    from .recipes.score import ScoreConfig, score_rows
    paths, objects = _split(reward=reward, data=data)
    cfg = build_config(ScoreConfig, {**options, **paths})
    return score_rows(cfg, reward=objects.get("reward"), data=objects.get("data"), tokenizer=tokenizer)[0]


def evaluate(policies: dict, ref_model, data, reward, *, tokenizer=None, output_dir=None, **options) -> list[dict]:
    """Compare policies ({name: folder or model}) against ``ref_model`` on held-out prompts (``preftune
    eval``): reward, KL, length, EOS share, win rate, Elo — one row each, the reference first. With
    ``output_dir``, also eval.json, frontier.csv, frontier.png and report.md."""
    import torch

    from .recipes.evaluate import EvalConfig, evaluate_policies
    from .rewards import load_reward_source
    from .runtime.device import prepare, resolve
    paths, _ = _split(ref_model=ref_model, data=data, reward=reward)
    cfg = build_config(EvalConfig, {**options, **paths, "output_dir": str(output_dir or "unused")})
    device = resolve(cfg.device)
    prepare(device)
    torch.manual_seed(cfg.seed)
    reward_fn = load_reward_source(reward, device=device, dtype=cfg.dtype, tokenizer=tokenizer)
    entries = [{"name": n, "path": p, "method": n.split("@")[0], "beta": None} for n, p in policies.items()]
    return evaluate_policies(entries, ref_model, data, reward_fn, None if output_dir is None else Path(output_dir),
                             num_prompts=cfg.num_prompts, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                             samples_shown=cfg.samples_shown, device=device, dtype=cfg.dtype, tokenizer=tokenizer)
