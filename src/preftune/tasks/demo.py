"""``preftune demo``: the embedded default, end to end on a CPU with nothing downloaded.

Mirrors the DPO paper's controlled-sentiment experiment in miniature, composing the ordinary
recipes (each stage prints its equivalent command line):

 0. corpus of procedural movie reviews; review-opening prompts (train / held out)
 1. tiny base LM pretrained on the corpus (cached in the user cache dir; later runs skip it)
 2. SFT on review openings → rest                         → π_SFT = π_ref
 3. sample K completions per training prompt from π_SFT; label them with VADER (ground truth)
    by Bradley–Terry sampling (noisy, as human labels are)  → pairs.jsonl, rankings.jsonl
 4. reward model on the pairs; its held-out accuracy against the ground truth
 5. PPO against the learned reward model (a KL-coefficient sweep)
 6. DPO (a β sweep), IPO and SimPO on the same pairs
 7. every policy sampled on held-out prompts: ground-truth reward, KL(π‖π_ref), length, EOS share,
    win rate against π_SFT, Elo → frontier.csv, frontier.png, report.md
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Config, DPOConfig, PPOConfig, RMConfig, SFTConfig, opt
from ..recipes.dpo import run_dpo
from ..recipes.evaluate import evaluate_policies
from ..recipes.generate import GenerateConfig, run_generate
from ..recipes.label import LabelConfig, run_label, write_jsonl
from ..recipes.ppo import run_ppo
from ..recipes.reward import run_rm
from ..recipes.sft import run_sft
from ..rewards import RewardModel
from . import sentiment

REWARD = "preftune.tasks.sentiment:vader_reward"


@dataclass
class DemoConfig(Config):
    output_dir: str = opt("runs/demo", "where every stage, the report and the plot go")
    quick: bool = opt(False, "a small version (a few minutes) for tests and a first look")
    seed: int = opt(0, "seed of the corpus, prompts, training and sampling")
    cache_dir: str = opt(None, "cache for the pretrained tiny base LM (default: $PREFTUNE_CACHE or ~/.cache/preftune)")
    threads: int = opt(0, "torch CPU threads (0 = torch's default)")


SIZES = {
    False: dict(corpus=40000, vocab=2048, hidden=128, layers=4, pretrain_steps=1200, sft_rows=4000, sft_steps=150,
                train_prompts=512, eval_prompts=256, k=4, label_temperature=0.1, rm_steps=300,
                dpo_betas=[0.1, 0.3, 0.6, 1.0], dpo_epochs=2, ppo_kl=[0.02, 0.05, 0.2], ppo_iterations=30,
                max_new_tokens=48),
    True: dict(corpus=4000, vocab=1024, hidden=64, layers=2, pretrain_steps=150, sft_rows=500, sft_steps=30,
               train_prompts=64, eval_prompts=48, k=4, label_temperature=0.1, rm_steps=20,
               dpo_betas=[0.1], dpo_epochs=1, ppo_kl=[0.05], ppo_iterations=3, max_new_tokens=24),
}


def command_line(command: str, cfg) -> str:
    """The `preftune …` command that runs ``cfg`` (keys that differ from the defaults)."""
    default = type(cfg)()
    parts = [f"preftune {command}"]
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value != getattr(default, f.name) and f.name not in ("progress",):
            text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
            parts.append(f"--{f.name} {text!r}" if " " in text or "{" in text else f"--{f.name} {text}")
    return " ".join(parts)


class Stages:
    """Runs stages in order, printing their command lines, timing them, skipping finished ones."""

    def __init__(self, out: Path):
        self.out, self.times, self.commands = out, {}, []

    def run(self, name: str, command: str, cfg, fn, done: Path):
        line = command_line(command, cfg)
        self.commands.append(line)
        if done.exists():
            print(f"[demo] {name}: done already ({done})")
            return
        print(f"[demo] {name}: {line}", flush=True)
        start = time.perf_counter()
        fn(cfg)
        self.times[name] = round(time.perf_counter() - start, 1)


def cache_root(cfg: DemoConfig) -> Path:
    return Path(cfg.cache_dir or os.environ.get("PREFTUNE_CACHE") or Path.home() / ".cache" / "preftune")


def base_model(cfg: DemoConfig, size: dict, work: Path, stages: Stages) -> Path:
    """The pretrained tiny LM, built once per (size, seed) and cached; the cache entry appears atomically."""
    from ..models.tiny import build_tiny
    spec = {k: size[k] for k in ("corpus", "vocab", "hidden", "layers", "pretrain_steps")} | {"seed": cfg.seed, "v": 2}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    final = cache_root(cfg) / f"sentiment-base-{key}"
    if (final / "config.json").exists():
        print(f"[demo] base LM: cached at {final}")
        return final
    texts = sentiment.corpus(size["corpus"], cfg.seed)
    corpus_file = work / "corpus.jsonl"
    write_jsonl(corpus_file, [{"text": t} for t in texts])
    init = work / "base-init"
    build_tiny(init, texts, vocab_size=size["vocab"], hidden=size["hidden"], layers=size["layers"], seed=cfg.seed)
    pre = SFTConfig(model=str(init), data=str(corpus_file), output_dir=str(work / "pretrain"), max_length=64,
                    max_steps=size["pretrain_steps"], batch_size=32, lr=3e-3, warmup_steps=50, seed=cfg.seed,
                    threads=cfg.threads, eval_fraction=0.02, log_steps=10, progress=False, resume=True)
    stages.run("pretrain base LM", "sft", pre, run_sft, final / "config.json")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(work / "pretrain" / "final", tmp)
    os.replace(tmp, final)
    summary = json.loads((work / "pretrain" / "summary.json").read_text())
    (final / "pretraining.json").write_text(json.dumps({"spec": spec, "eval": summary.get("eval"),
                                                        "wall_s": summary["wall_s"]}))
    return final


def rm_accuracy(rm_path: Path, pairs: list[dict]) -> float:
    """Share of held-out pairs (ground-truth ties left out) that the reward model orders the way the
    ground truth does."""
    pairs = [p for p in pairs if p["reward_chosen"] != p["reward_rejected"]]
    scorer = RewardModel(str(rm_path))
    a = scorer([p["prompt"] for p in pairs], [p["chosen"] for p in pairs])
    b = scorer([p["prompt"] for p in pairs], [p["rejected"] for p in pairs])
    agree = [(x > y) == (p["reward_chosen"] > p["reward_rejected"]) for x, y, p in zip(a, b, pairs)]
    return sum(agree) / max(len(agree), 1)


def run_demo(cfg: DemoConfig) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    size = SIZES[cfg.quick]
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(out)
    t0 = time.perf_counter()
    # resume: a stage killed part-way starts over cleanly (no checkpoints); finished stages are skipped
    common = dict(seed=cfg.seed, threads=cfg.threads, progress=False, resume=True)

    # 0. data
    reviews = sentiment.corpus(size["sft_rows"], cfg.seed + 1)
    write_jsonl(out / "sft.jsonl", [{"prompt": " ".join(r.split()[:4]), "completion": " " + " ".join(r.split()[4:])}
                                    for r in reviews])
    write_jsonl(out / "prompts_train.jsonl", [{"prompt": p} for p in sentiment.prompts(size["train_prompts"], cfg.seed + 2)])
    write_jsonl(out / "prompts_eval.jsonl", [{"prompt": p} for p in sentiment.prompts(size["eval_prompts"], cfg.seed + 3)])

    # 1–2. base LM, SFT
    base = base_model(cfg, size, out, stages)
    sft = SFTConfig(model=str(base), data=str(out / "sft.jsonl"), output_dir=str(out / "sft"), max_length=96,
                    max_steps=size["sft_steps"], batch_size=32, lr=1e-3, warmup_steps=10, log_steps=10, **common)
    stages.run("SFT", "sft", sft, run_sft, out / "sft" / "summary.json")
    pi_sft = str(out / "sft" / "final")

    # 3. sample and label
    gen = GenerateConfig(model=pi_sft, data=str(out / "prompts_train.jsonl"), output=str(out / "samples.jsonl"),
                         num_samples=size["k"], max_new_tokens=size["max_new_tokens"], batch_size=128, seed=cfg.seed)
    stages.run("sample K completions per prompt", "generate", gen, run_generate, out / "samples.jsonl")
    lab = LabelConfig(data=str(out / "samples.jsonl"), reward=REWARD, output_dir=str(out / "prefs"),
                      temperature=size["label_temperature"], seed=cfg.seed)
    stages.run("label with ground truth (Bradley–Terry)", "label", lab, run_label, out / "prefs" / "pairs.jsonl")
    pairs = [json.loads(x) for x in (out / "prefs" / "pairs.jsonl").read_text().splitlines()]
    n_eval = max(8, len(pairs) // 10)
    write_jsonl(out / "prefs" / "train.jsonl", pairs[n_eval:])
    write_jsonl(out / "prefs" / "heldout.jsonl", pairs[:n_eval])
    train_pairs = str(out / "prefs" / "train.jsonl")

    # 4. reward model
    rm = RMConfig(model=pi_sft, data=train_pairs, eval_data=str(out / "prefs" / "heldout.jsonl"), output_dir=str(out / "rm"),
                  max_length=96, max_steps=size["rm_steps"], batch_size=16, lr=5e-4, warmup_steps=10, log_steps=10,
                  **common)
    stages.run("reward model", "rm", rm, run_rm, out / "rm" / "summary.json")
    rm_acc = rm_accuracy(out / "rm" / "final", pairs[:n_eval])

    policies = []
    # 5. PPO against the learned reward model
    for kl in size["ppo_kl"]:
        name = f"ppo@{kl:g}"
        ppo = PPOConfig(model=pi_sft, reward=str(out / "rm" / "final"), data=str(out / "prompts_train.jsonl"),
                        output_dir=str(out / name), kl_coef=kl, rollout_batch_size=32, batch_size=16, ppo_epochs=2,
                        max_steps=4 * size["ppo_iterations"], max_new_tokens=size["max_new_tokens"], lr=3e-4,
                        eval_prompts=32, log_steps=4, missing_eos_penalty=1.0, **common)
        stages.run(f"PPO (β_KL={kl:g})", "ppo", ppo, run_ppo, out / name / "summary.json")
        policies.append({"name": name, "path": str(out / name / "final"), "method": "ppo", "beta": kl})

    # 6. DPO family on the same pairs
    steps = max(1, size["dpo_epochs"] * (len(pairs) - n_eval) // 16)
    # SimPO is reference-free and needs a smaller step (as its paper tunes per setting)
    dpo_runs = [("dpo", "sigmoid", b, {}) for b in size["dpo_betas"]] + [
        ("ipo", "ipo", 2.0, {}), ("simpo", "simpo", 2.0, {"ref": "none", "lr": 2e-4})]
    for method, loss, beta, extra in dpo_runs:
        name = f"{method}@{beta:g}"
        dpo = DPOConfig(model=pi_sft, data=train_pairs, output_dir=str(out / name), loss=loss, beta=beta, max_length=96,
                        max_steps=steps, batch_size=16, warmup_steps=5, log_steps=5, **({"lr": 5e-4} | extra), **common)
        stages.run(f"{method} (β={beta:g})", "dpo", dpo, run_dpo, out / name / "summary.json")
        policies.append({"name": name, "path": str(out / name / "final"), "method": method, "beta": beta})

    # 7. evaluate
    start = time.perf_counter()
    extra = (f"\nReward model held-out accuracy against the ground truth: **{rm_acc:.3f}** "
             f"({n_eval} pairs). Label noise T = {size['label_temperature']}.\n")
    rows = evaluate_policies(policies, pi_sft, str(out / "prompts_eval.jsonl"), sentiment.vader_reward, out,
                             num_prompts=size["eval_prompts"], max_new_tokens=size["max_new_tokens"], seed=cfg.seed,
                             title="controlled sentiment: ground-truth reward vs KL", extra_md=extra)
    stages.times["evaluate"] = round(time.perf_counter() - start, 1)
    summary = {"wall_s": round(time.perf_counter() - t0, 1), "stage_s": stages.times, "rm_heldout_accuracy": rm_acc,
               "rows": rows, "commands": stages.commands, "quick": cfg.quick}
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=1))
    with open(out / "report.md", "a") as f:
        f.write("\n## Stages\n\n" + "\n".join(f"- {k}: {v} s" for k, v in stages.times.items()) +
                f"\n\nTotal wall time: {summary['wall_s']} s\n\n## Commands\n\n```\n" + "\n".join(stages.commands) + "\n```\n")
    print(f"[demo] done in {summary['wall_s']} s — report: {out / 'report.md'}, plot: {out / 'frontier.png'}")
    return summary
