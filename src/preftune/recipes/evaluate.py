"""``preftune eval``: sample every policy on the same held-out prompts and compare them on a
reward: mean reward, KL(π‖π_ref) per completion, length, EOS share, win rate against the
reference policy, Elo over all pairwise judgments; writes eval.json, frontier.csv, frontier.png
and report.md."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import DeviceConfig, opt
from ..data import BadRows
from ..eval import elo_ratings, sample_and_score, win_rate
from ..eval.report import markdown, plot, write_csv
from ..models import load_tokenizer
from ..models.load import inference_lm
from ..runtime.device import prepare, resolve
from ..rewards import load_reward_source
from .generate import prompt_examples


@dataclass
class EvalConfig(DeviceConfig):
    policies: dict = opt({}, "policies to compare, {name: folder}; each row's method is the name before any '@'")
    ref_model: str = opt(None, "π_ref (π_SFT): KL is measured against it and win rates are against its samples")
    data: str = opt(None, "held-out prompts")
    reward: str = opt(None, "reward source: reward-model folder or module:function")
    output_dir: str = opt("runs/eval", "folder for eval.json, frontier.csv, frontier.png, report.md")
    num_prompts: int = opt(256, "prompts to evaluate on", bounds="[1, inf)")
    max_new_tokens: int = opt(48, "longest completion", bounds="[1, inf)")
    samples_shown: int = opt(3, "sample completions per policy in report.md")
    seed: int = opt(0, "sampling seed (the same for every policy)")


def evaluate_policies(policies: list[dict], ref_model, prompts_source, reward_fn, out: Path | None, *,
                      num_prompts: int, max_new_tokens: int, seed: int = 0, samples_shown: int = 3,
                      title: str = "reward vs KL", extra_md: str = "", device=None, dtype: str = "float32",
                      log: bool = False, tokenizer=None) -> list[dict]:
    """policies: [{name, path, method, beta}] (``path``: a folder or a model object); the reference itself
    is evaluated as method 'sft'. ``out`` None: the rows only, no files."""
    tok = load_tokenizer(tokenizer if tokenizer is not None else ref_model)
    prompts = prompt_examples(tok, prompts_source, 256, BadRows("error"))[:num_prompts]
    ref = inference_lm(ref_model, device=device, dtype=dtype)
    entries = [{"name": "sft", "path": ref_model, "method": "sft", "beta": None}] + list(policies)
    results = {}
    for e in entries:
        start = time.perf_counter()
        same = e["path"] is ref_model or (isinstance(e["path"], str) and e["path"] == ref_model)
        lm = ref if same else inference_lm(e["path"], device=device, dtype=dtype)
        results[e["name"]] = r = sample_and_score(lm, ref, tok, prompts, reward_fn, max_new_tokens=max_new_tokens,
                                                  seed=seed)
        if log:
            print(f"  {e['name']}: reward {r.summary()['reward']:.3f}, KL {r.summary()['kl']:.2f} "
                  f"({time.perf_counter() - start:.1f} s)", flush=True)
    elo = elo_ratings({n: r.rewards for n, r in results.items()}, anchor="sft")
    rows = []
    for e in entries:
        r = results[e["name"]]
        rows.append({"name": e["name"], "method": e["method"], "beta": e.get("beta"), **r.summary(),
                     "win_rate_vs_sft": win_rate(r.rewards, results["sft"].rewards), "elo": elo[e["name"]]})
    if out is None:
        return rows
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "frontier.csv")
    plot(rows, out / "frontier.png", title)
    shown = {n: list(zip(r.prompts, r.completions, r.rewards))[:samples_shown] for n, r in results.items()}
    (out / "report.md").write_text(markdown(rows, shown, extra_md))
    (out / "eval.json").write_text(json.dumps({"rows": rows, "samples": {n: [{"prompt": p, "completion": c, "reward": x}
                                                                               for p, c, x in s]
                                                                           for n, s in shown.items()}},
                                              indent=1))
    return rows


def run_eval(cfg: EvalConfig) -> None:
    device = resolve(cfg.device)
    prepare(device)
    torch.manual_seed(cfg.seed)
    policies = [{"name": n, "path": p, "method": n.split("@")[0], "beta": None} for n, p in cfg.policies.items()]
    reward_fn = load_reward_source(cfg.reward, device=device, dtype=cfg.dtype)
    rows = evaluate_policies(policies, cfg.ref_model, cfg.data, reward_fn, Path(cfg.output_dir),
                             num_prompts=cfg.num_prompts, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                             samples_shown=cfg.samples_shown, device=device, dtype=cfg.dtype)
    for r in rows:
        print(json.dumps({k: r[k] for k in ("name", "reward", "kl", "win_rate_vs_sft", "elo")}))
    print(f"report: {Path(cfg.output_dir) / 'report.md'}")
