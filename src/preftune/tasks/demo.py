"""``preftune demo``: the embedded default, end to end on a CPU with nothing downloaded.

Mirrors the DPO paper's controlled-sentiment experiment in miniature, composing the ordinary
recipes (each stage prints its equivalent command line, a progress line at least every 10 s, and
its wall time):

 0. corpus of procedural movie reviews; review-opening prompts (train / held out)
 1. tiny base LM pretrained on the corpus (cached in the user cache dir; later runs skip it)
 2. SFT on review openings → rest                          → π_SFT = π_ref
 3. sample K completions per training prompt from π_SFT; label every one of the C(K, 2) pairs with
    VADER (ground truth) by Bradley–Terry sampling (noisy, as human labels are)
 4. reward model on those pairs; its held-out accuracy against the ground truth
 5. PPO against the learned reward model (a KL-coefficient sweep)
 6. DPO (a β sweep), IPO and SimPO on the same pairs
 7. every policy sampled on held-out prompts: ground-truth reward, exact KL(π‖π_ref), length, EOS
    share, win rate against π_SFT, Elo

Stages 5–7 run for several seeds (training and sampling; the base LM, π_SFT, the preference data
and the reward model are shared), and every figure is reported as the mean over seeds with its
95% interval → frontier.csv, frontier.png (error bars), report.md, demo_summary.json.
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

from ..config import DeviceConfig, DPOConfig, PPOConfig, RMConfig, SFTConfig, opt
from ..eval.report import aggregate, compare_frontiers, markdown, plot, write_csv
from ..runtime.device import prepare, resolve
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
LOG_SECONDS = 10.0


@dataclass
class DemoConfig(DeviceConfig):
    output_dir: str = opt("runs/demo", "where every stage, the report and the plot go")
    quick: bool = opt(False, "a small version (about a minute) for tests and a first look")
    seed: int = opt(0, "seed of the corpus, prompts and shared stages; seeded runs use seed, seed + 1, …")
    seeds: int = opt(None, "seeds per setting (default: 4)", bounds="[1, inf)")
    cache_dir: str = opt(None, "cache for the pretrained tiny base LM (default: $PREFTUNE_CACHE or ~/.cache/preftune)")
    threads: int = opt(0, "torch CPU threads (0 = torch's default)", bounds="[0, inf)")


SIZES = {
    False: dict(corpus=40000, vocab=2048, hidden=128, layers=4, pretrain_steps=1000, sft_rows=4000, sft_steps=150,
                train_prompts=384, eval_prompts=128, k=4, label_temperature=0.1, rm_steps=250, seeds=4,
                dpo=[("dpo", "sigmoid", 0.05), ("dpo", "sigmoid", 0.1), ("dpo", "sigmoid", 0.3),
                     ("dpo", "sigmoid", 1.0), ("ipo", "ipo", 2.0), ("simpo", "simpo", 2.0)],
                dpo_epochs=1, ppo_kl=[0.01, 0.03, 0.1, 0.3], ppo_iterations=16, max_new_tokens=48),
    True: dict(corpus=6000, vocab=1024, hidden=96, layers=2, pretrain_steps=300, sft_rows=1200, sft_steps=60,
               train_prompts=128, eval_prompts=128, k=4, label_temperature=0.1, rm_steps=200, seeds=4,
               dpo=[("dpo", "sigmoid", 0.1)], dpo_epochs=2, ppo_kl=[0.1], ppo_iterations=16, max_new_tokens=32),
}


def command_line(command: str, cfg) -> str:
    """The `preftune …` command that runs ``cfg`` (keys that differ from the defaults)."""
    default = type(cfg)()
    parts = [f"preftune {command}"]
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value != getattr(default, f.name) and f.name not in ("progress", "log_seconds", "overwrite"):
            text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
            parts.append(f"--{f.name} {text!r}" if " " in text or "{" in text else f"--{f.name} {text}")
    return " ".join(parts)


class Stages:
    """Runs stages in order, printing their command lines and wall times, skipping finished ones
    (a stage is done once its summary.json — or other output — exists; a stage killed part-way
    starts over)."""

    def __init__(self):
        self.times, self.commands = {}, []

    def run(self, name: str, command: str, cfg, fn, done: Path):
        line = command_line(command, cfg)
        self.commands.append(line)
        if done.exists():
            print(f"[demo] {name}: done already ({done.parent})")
            return
        print(f"[demo] {name}: {line}", flush=True)
        start = time.perf_counter()
        fn(cfg)
        self.times[name] = round(time.perf_counter() - start, 1)
        print(f"[demo] {name}: {self.times[name]} s", flush=True)


def cache_root(cfg: DemoConfig) -> Path:
    return Path(cfg.cache_dir or os.environ.get("PREFTUNE_CACHE") or Path.home() / ".cache" / "preftune")


def base_model(cfg: DemoConfig, size: dict, work: Path, stages: Stages, common: dict) -> Path:
    """The pretrained tiny LM, built once per (size, seed) and cached; the cache entry appears atomically."""
    from ..models.tiny import build_tiny
    spec = {k: size[k] for k in ("corpus", "vocab", "hidden", "layers", "pretrain_steps")} | {"seed": cfg.seed, "v": 3}
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
                    max_prompt_length=32, max_steps=size["pretrain_steps"], batch_size=32, lr=3e-3, warmup_steps=50,
                    eval_fraction=0.02, log_steps=10, **common, seed=cfg.seed)
    stages.run("pretrain base LM", "sft", pre, run_sft, work / "pretrain" / "summary.json")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(work / "pretrain" / "final", tmp)
    os.replace(tmp, final)
    summary = json.loads((work / "pretrain" / "summary.json").read_text())
    (final / "pretraining.json").write_text(json.dumps({"spec": spec, "eval": summary.get("eval"),
                                                        "wall_s": summary["wall_s"]}))
    return final


def rm_accuracy(rm_path: Path, pairs: list[dict], device, dtype: str) -> float:
    """Share of held-out pairs (ground-truth ties left out) that the reward model orders the way the
    ground truth does."""
    pairs = [p for p in pairs if p["reward_chosen"] != p["reward_rejected"]]
    scorer = RewardModel(str(rm_path), device=device, dtype=dtype)
    a = scorer([p["prompt"] for p in pairs], [p["chosen"] for p in pairs])
    b = scorer([p["prompt"] for p in pairs], [p["rejected"] for p in pairs])
    agree = [(x > y) == (p["reward_chosen"] > p["reward_rejected"]) for x, y, p in zip(a, b, pairs)]
    return sum(agree) / max(len(agree), 1)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def run_demo(cfg: DemoConfig) -> dict:
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()   # the stages print what matters; no per-load reports or bars
    hf_logging.disable_progress_bar()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve(cfg.device)
    prepare(device)
    size = SIZES[cfg.quick]
    seeds = [cfg.seed + i for i in range(cfg.seeds or size["seeds"])]
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages()
    t0 = time.perf_counter()
    common = dict(threads=cfg.threads, progress=False, log_seconds=LOG_SECONDS, overwrite=True, device=cfg.device,
                  dtype=cfg.dtype)

    # 0. data
    reviews = sentiment.corpus(size["sft_rows"], cfg.seed + 1)
    write_jsonl(out / "sft.jsonl", [{"prompt": " ".join(r.split()[:4]), "completion": " " + " ".join(r.split()[4:])}
                                    for r in reviews])
    write_jsonl(out / "prompts_train.jsonl",
                [{"prompt": p} for p in sentiment.prompts(size["train_prompts"], cfg.seed + 2)])
    write_jsonl(out / "prompts_eval.jsonl",
                [{"prompt": p} for p in sentiment.prompts(size["eval_prompts"], cfg.seed + 3)])

    # 1–2. base LM, SFT
    base = base_model(cfg, size, out, stages, common)
    lengths = dict(max_length=96, max_prompt_length=32)
    sft = SFTConfig(model=str(base), data=str(out / "sft.jsonl"), output_dir=str(out / "sft"),
                    max_steps=size["sft_steps"], batch_size=32, lr=1e-3, warmup_steps=10, log_steps=10, seed=cfg.seed,
                    **lengths, **common)
    stages.run("SFT", "sft", sft, run_sft, out / "sft" / "summary.json")
    pi_sft = str(out / "sft" / "final")

    # 3. sample and label: every pair of each prompt's K samples
    gen = GenerateConfig(model=pi_sft, data=str(out / "prompts_train.jsonl"), output=str(out / "samples.jsonl"),
                         num_samples=size["k"], max_new_tokens=size["max_new_tokens"], batch_size=128, seed=cfg.seed,
                         log_seconds=LOG_SECONDS, device=cfg.device, dtype=cfg.dtype)
    stages.run("sample K completions per prompt", "generate", gen, run_generate, out / "samples.jsonl")
    lab = LabelConfig(data=str(out / "samples.jsonl"), reward=REWARD, output_dir=str(out / "prefs"), all_pairs=True,
                      label_temperature=size["label_temperature"], seed=cfg.seed, device=cfg.device, dtype=cfg.dtype)
    stages.run("label all C(K,2) pairs with ground truth (Bradley–Terry)", "label", lab, run_label,
               out / "prefs" / "pairs.jsonl")
    pairs = read_jsonl(out / "prefs" / "pairs.jsonl")
    prompts = list(dict.fromkeys(p["prompt"] for p in pairs))
    held_out = set(prompts[:max(4, len(prompts) // 10)])   # the reward model's held-out prompts, all their pairs
    write_jsonl(out / "prefs" / "train.jsonl", [p for p in pairs if p["prompt"] not in held_out])
    write_jsonl(out / "prefs" / "heldout.jsonl", [p for p in pairs if p["prompt"] in held_out])
    train_pairs = str(out / "prefs" / "train.jsonl")
    n_train = len(pairs) - sum(p["prompt"] in held_out for p in pairs)

    # 4. reward model (shared by every PPO run)
    rm = RMConfig(model=pi_sft, data=train_pairs, eval_data=str(out / "prefs" / "heldout.jsonl"),
                  output_dir=str(out / "rm"),
                  max_steps=size["rm_steps"], batch_size=32, lr=5e-4, warmup_steps=10, log_steps=10, seed=cfg.seed,
                  **lengths, **common)
    stages.run("reward model", "rm", rm, run_rm, out / "rm" / "summary.json")
    rm_acc = rm_accuracy(out / "rm" / "final", read_jsonl(out / "prefs" / "heldout.jsonl"), device, cfg.dtype)

    # 5–6. PPO and the DPO family, every setting for every seed
    settings = [("ppo", "ppo", kl) for kl in size["ppo_kl"]] + size["dpo"]
    dpo_steps = max(1, size["dpo_epochs"] * n_train // 32)
    runs: dict[int, list[dict]] = {s: [] for s in seeds}
    for seed in seeds:
        for method, loss, beta in settings:
            name, folder = f"{method}@{beta:g}", out / f"{method}@{beta:g}" / f"seed-{seed}"
            if method == "ppo":
                run_cfg = PPOConfig(model=pi_sft, reward=str(out / "rm" / "final"),
                                    data=str(out / "prompts_train.jsonl"),
                                    output_dir=str(folder), kl_coef=beta, rollout_batch_size=32, batch_size=16,
                                    ppo_epochs=2, max_steps=4 * size["ppo_iterations"],
                                    max_new_tokens=size["max_new_tokens"],
                                    lr=3e-4, eval_prompts=0, log_steps=4, seed=seed, **common)
                fn, command = run_ppo, "ppo"
            else:   # SimPO is reference-free and takes a smaller step (as its paper tunes per setting)
                extra = {"ref": "none", "lr": 2e-4} if loss == "simpo" else {"lr": 5e-4}
                run_cfg = DPOConfig(model=pi_sft, data=train_pairs, output_dir=str(folder), loss=loss, beta=beta,
                                    max_steps=dpo_steps, batch_size=32, warmup_steps=5, log_steps=5, seed=seed,
                                    **lengths, **extra, **common)
                fn, command = run_dpo, "dpo"
            stages.run(f"{name} seed {seed}", command, run_cfg, fn, folder / "summary.json")
            runs[seed].append({"name": name, "path": str(folder / "final"), "method": method, "beta": beta,
                               "steps": json.loads((folder / "summary.json").read_text())["steps"]})

    # 7. evaluate every seed's policies with that seed's sampling, then aggregate over seeds
    start = time.perf_counter()
    per_seed = []
    for seed in seeds:
        print(f"[demo] evaluate seed {seed}: {len(runs[seed]) + 1} policies on {size['eval_prompts']} held-out prompts",
              flush=True)
        per_seed.append(evaluate_policies(runs[seed], pi_sft, str(out / "prompts_eval.jsonl"), sentiment.vader_reward,
                                          out / "eval" / f"seed-{seed}", num_prompts=size["eval_prompts"],
                                          max_new_tokens=size["max_new_tokens"], seed=seed, device=device,
                                          dtype=cfg.dtype, log=True))
    stages.times["evaluate"] = round(time.perf_counter() - start, 1)
    rows = aggregate(per_seed)
    budgets = sample_budgets(size, seeds, runs, n_train, len(prompts))
    verdicts = compare_frontiers(rows, "dpo", "ppo")
    write_csv(rows, out / "frontier.csv")
    plot(rows, out / "frontier.png", "controlled sentiment: ground-truth reward vs KL")
    extra = report_text(rows, rm_acc, size, seeds, budgets, verdicts, len(held_out))
    samples = json.loads((out / "eval" / f"seed-{seeds[0]}" / "eval.json").read_text())["samples"]
    shown = {n: [(s["prompt"], s["completion"], s["reward"]) for s in items] for n, items in samples.items()}
    summary = {"wall_s": round(time.perf_counter() - t0, 1), "stage_s": stages.times, "rm_heldout_accuracy": rm_acc,
               "seeds": seeds, "rows": rows, "per_seed": per_seed, "budgets": budgets, "dpo_vs_ppo": verdicts,
               "commands": stages.commands, "quick": cfg.quick, "kl_estimator": "exact per-token KL, summed"}
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=1))
    (out / "report.md").write_text(markdown(rows, shown, extra) + "\n## Stages\n\n" +
                                   "\n".join(f"- {k}: {v} s" for k, v in stages.times.items()) +
                                   f"\n\nTotal wall time: {summary['wall_s']} s\n\n## Commands\n\n```\n" +
                                   "\n".join(stages.commands) + "\n```\n")
    print(f"[demo] done in {summary['wall_s']} s — report: {out / 'report.md'}, plot: {out / 'frontier.png'}")
    return summary


def sample_budgets(size: dict, seeds: list[int], runs: dict, n_train_pairs: int, n_prompts: int) -> dict:
    """What each method consumed per seed: ground-truth calls, reward-model calls, policy samples,
    optimizer steps (the shared data — K samples per prompt from π_SFT, labelled — counts for both)."""
    steps = {r["name"]: r["steps"] for r in runs[seeds[0]]}
    shared = {"prompts": n_prompts, "policy_samples (π_SFT)": n_prompts * size["k"],
              "ground_truth_calls": n_prompts * size["k"], "labelled_pairs": n_train_pairs}
    ppo_samples = 32 * size["ppo_iterations"]
    return {"shared": shared, "reward_model": {"optimizer_steps": size["rm_steps"]},
            "ppo": {"policy_samples": ppo_samples, "reward_model_calls": ppo_samples,
                    "optimizer_steps": {n: s for n, s in steps.items() if n.startswith("ppo")}},
            "dpo_family": {"policy_samples": 0, "reward_model_calls": 0,
                           "optimizer_steps": {n: s for n, s in steps.items() if not n.startswith("ppo")}}}


def report_text(rows, rm_acc, size, seeds, budgets, verdicts, n_held_out) -> str:
    lines = [f"\nMean over {len(seeds)} seeds (training and sampling; the base LM, π_SFT, the preference data "
             f"and the reward model are shared), each evaluated on {size['eval_prompts']} held-out prompts; "
             "[95% t-interval over the seeds]. KL is the exact per-token KL(π‖π_ref) summed over each sampled "
             "completion (never negative); KL (k1) the sampled log-ratio estimate.",
             f"\nReward model held-out accuracy against the ground truth: **{rm_acc:.3f}** ({n_held_out} held-out "
             f"prompts, all their pairs). Label noise T = {size['label_temperature']}.",
             "\n**Budgets per seed.** " + json.dumps(budgets),
             "\n**DPO against PPO at comparable KL** (KL intervals overlapping):"]
    lines += [f"- {v}" for v in verdicts] or ["- no DPO and PPO settings reached comparable KL"]
    return "\n".join(lines) + "\n"
