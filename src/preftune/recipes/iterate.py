"""``preftune iterate``: iterated preference rounds — the notes' "steps 2 and 3 can be iterated"
and online / iterative DPO.

Each round samples K completions per prompt from the current policy, labels pairs with the reward
source (Bradley–Terry sampling at ``label_temperature``), and trains the next policy from them:
 * ``--method dpo``: DPO from the current policy, with the current policy as π_ref (on-policy
   pairs, as iterative DPO does);
 * ``--method rm_ppo``: a fresh reward model on all pairs so far, then PPO against it, with the
   starting model as π_ref throughout (InstructGPT's iterated steps 2 and 3).
``rounds.json`` records each round's mean reward of its samples, so the improvement is measured.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from ..config import DPOConfig, PPOConfig, RMConfig, opt
from ..models.device import resolve
from ..rewards import load_reward_source
from .dpo import run_dpo
from .generate import GenerateConfig, run_generate
from .label import label_samples, write_jsonl
from .ppo import run_ppo
from .reward import run_rm


@dataclass
class IterateConfig(DPOConfig):
    reward: str = opt(None, "reward source that labels each round: reward-model folder or module:function")
    rounds: int = opt(3, "preference rounds", bounds="[1, inf)")
    method: str = opt("dpo", "train each round with dpo, or with a fresh reward model then PPO (rm_ppo)",
                      ["dpo", "rm_ppo"])
    num_samples: int = opt(4, "completions sampled per prompt each round", bounds="[2, inf)")
    max_new_tokens: int = opt(48, "longest completion", bounds="[1, inf)")
    temperature: float = opt(1.0, "sampling temperature", bounds="[0, inf)")
    top_k: int = opt(0, "top-k sampling (0 = off)")
    top_p: float = opt(1.0, "nucleus sampling mass", bounds="(0, 1]")
    label_temperature: float = opt(0.0, "label noise T of Bradley–Terry sampling (0 = the higher reward wins)",
                                   bounds="[0, inf)")
    rm_steps: int = opt(100, "reward-model steps per round (rm_ppo)", bounds="[1, inf)")
    ppo_steps: int = opt(64, "PPO steps per round (rm_ppo)", bounds="[1, inf)")


def _subset(cls, cfg, **changes):
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in dataclasses.asdict(cfg).items() if k in fields} | changes)


def run_iterate(cfg: IterateConfig) -> list[dict]:
    if not cfg.reward:
        raise ValueError("--reward is required")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    reward_fn = load_reward_source(cfg.reward, device=resolve(cfg.device), dtype=cfg.dtype)
    policy, history, all_pairs = cfg.model, [], []
    for r in range(cfg.rounds):
        rd = out / f"round-{r}"
        rd.mkdir(exist_ok=True)
        samples = rd / "samples.jsonl"
        run_generate(GenerateConfig(model=policy, data=cfg.data, output=str(samples), num_samples=cfg.num_samples,
                                    max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                                    top_p=cfg.top_p, seed=cfg.seed + r, max_prompt_length=cfg.max_prompt_length,
                                    device=cfg.device, dtype=cfg.dtype))
        stats = label_samples(str(samples), reward_fn, rd, cfg.label_temperature, cfg.seed + r)
        history.append({"round": r, "policy": policy, **stats})
        print(json.dumps(history[-1]))
        pairs = str(rd / "pairs.jsonl")
        if cfg.method == "dpo":
            run_dpo(_subset(DPOConfig, cfg, model=policy, ref_model=policy, data=pairs, output_dir=str(rd / "dpo")))
            policy = str(rd / "dpo" / "final")
        else:
            all_pairs += [json.loads(x) for x in (rd / "pairs.jsonl").read_text().splitlines()]
            write_jsonl(rd / "all_pairs.jsonl", all_pairs)
            run_rm(_subset(RMConfig, cfg, data=str(rd / "all_pairs.jsonl"), output_dir=str(rd / "rm"),
                           max_steps=cfg.rm_steps, epochs=None))
            run_ppo(_subset(PPOConfig, cfg, model=policy, ref_model=cfg.model, reward=str(rd / "rm" / "final"),
                            output_dir=str(rd / "ppo"), max_steps=cfg.ppo_steps, epochs=None,
                            max_new_tokens=cfg.max_new_tokens))
            policy = str(rd / "ppo" / "final")
    history.append({"round": cfg.rounds, "policy": policy})
    (out / "rounds.json").write_text(json.dumps(history, indent=1))
    return history
