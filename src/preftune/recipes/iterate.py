"""``preftune iterate``: iterated preference rounds — the notes' "steps 2 and 3 can be iterated"
and online / iterative DPO.

Each round samples K completions per prompt from the current policy, labels pairs with the reward
source (Bradley–Terry sampling at ``label_temperature``), and trains the next policy from them:
 * ``--method dpo``: DPO from the current policy, with the current policy as π_ref (on-policy
   pairs, as iterative DPO does);
 * ``--method rm_ppo``: a fresh reward model on all pairs so far, then PPO against it, with the
   starting model as π_ref throughout (InstructGPT's iterated steps 2 and 3).
``rounds.json`` records each round's mean reward of its samples, so the improvement is measured.

Each stage's config is built explicitly: its own command's defaults, then the training options given
here for every stage (``--lr``, ``--batch_size``, … when set), then its section (``--dpo '{beta: 0.3}'``,
``--rm``, ``--ppo``) — never fields copied because their names match (DPO's SimPO γ is not PPO's discount).
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from pathlib import Path

from ..config import DeviceConfig, DPOConfig, PPOConfig, RMConfig, opt
from ..rewards import load_reward_source
from ..runtime.device import resolve
from .dpo import run_dpo
from .generate import GenerateConfig, run_generate
from .label import label_samples, write_jsonl
from .ppo import run_ppo
from .reward import run_rm

# what the pipeline sets in each stage itself: a section may not
PIPELINE_KEYS = frozenset({"model", "ref_model", "data", "eval_data", "output_dir", "reward", "resume", "overwrite"})
# the training options this command passes to every stage when given
SHARED = ("lr", "batch_size", "grad_accum", "max_length", "max_prompt_length", "seed", "threads", "progress",
          "log_seconds", "trust_remote_code", "device", "dtype")


@dataclass
class IterateConfig(DeviceConfig):
    model: str = opt(None, "starting policy (π_ref of rm_ppo): a folder or hub name")
    data: str = opt(None, "prompts: any dataset with a 'prompt' column (or messages)")
    reward: str = opt(None, "reward source that labels each round: reward-model folder or module:function")
    output_dir: str = opt("runs/iterate", "folder for the rounds (round-N/) and rounds.json")
    rounds: int = opt(3, "preference rounds", bounds="[1, inf)")
    method: str = opt("dpo", "train each round with dpo, or with a fresh reward model then PPO (rm_ppo)",
                      ["dpo", "rm_ppo"])
    num_samples: int = opt(4, "completions sampled per prompt each round", bounds="[2, inf)")
    max_new_tokens: int = opt(48, "longest completion (sampling, and PPO's rollouts)", bounds="[1, inf)")
    temperature: float = opt(1.0, "sampling temperature", bounds="[0, inf)")
    top_k: int = opt(0, "top-k sampling (0 = off)", bounds="[0, inf)")
    top_p: float = opt(1.0, "nucleus sampling mass", bounds="(0, 1]")
    label_temperature: float = opt(0.0, "label noise T of Bradley–Terry sampling (0 = the higher reward wins)",
                                   bounds="[0, inf)")
    seed: int = opt(0, "seed of sampling, labelling and every stage (round r samples with seed + r)")
    max_steps: int = opt(None, "DPO steps per round (method dpo; default: dpo's own)", bounds="[1, inf)")
    rm_steps: int = opt(100, "reward-model steps per round (rm_ppo)", bounds="[1, inf)")
    ppo_steps: int = opt(64, "PPO steps per round (rm_ppo)", bounds="[1, inf)")
    lr: float = opt(None, "learning rate of every trained stage (default: each command's own)", bounds="(0, inf)")
    batch_size: int = opt(None, "micro-batch size of every trained stage (default: each command's own)",
                          bounds="[1, inf)")
    grad_accum: int = opt(None, "gradient accumulation of every trained stage", bounds="[1, inf)")
    max_length: int = opt(None, "maximum tokens of prompt + completion in every trained stage", bounds="[2, inf)")
    max_prompt_length: int = opt(256, "maximum prompt tokens (sampling and every stage)", bounds="[1, inf)")
    threads: int = opt(0, "torch CPU threads (0 = torch's default)", bounds="[0, inf)")
    progress: bool = opt(True, "show progress bars")
    log_seconds: float = opt(0.0, "progress lines at most every N seconds in training (0 = none)", bounds="[0, inf)")
    trust_remote_code: bool = opt(False, "allow a hub model's own code to run")
    dpo: dict = opt({}, "options of each round's dpo stage, e.g. {beta: 0.3, loss: ipo}")
    rm: dict = opt({}, "options of each round's reward-model stage (rm_ppo)")
    ppo: dict = opt({}, "options of each round's ppo stage (rm_ppo), e.g. {kl_coef: 0.1, ppo_epochs: 4}")
    SECTIONS: typing.ClassVar[dict] = {"dpo": DPOConfig, "rm": RMConfig, "ppo": PPOConfig}

    def __post_init__(self):
        super().__post_init__()
        for name, cls in self.SECTIONS.items():
            section = getattr(self, name)
            fields = {f.name for f in dataclasses.fields(cls)}
            bad = sorted(set(section) - fields)
            if bad:
                raise ValueError(f"--{name}: {', '.join(bad)} not an option of preftune {name}")
            fixed = sorted(set(section) & PIPELINE_KEYS)
            if fixed:
                raise ValueError(f"--{name}: {', '.join(fixed)} set by the pipeline itself, not in a section")

    @classmethod
    def hint(cls, key: str, *, yaml_key: bool = False) -> str:
        """Besides the usual hints: a key of a stage's command belongs in its section."""
        key = key.lstrip("-").split("=")[0]
        owners = [name for name, section in cls.SECTIONS.items()
                  if key in {f.name for f in dataclasses.fields(section)}]
        if owners:
            return f" (an option of the {'/'.join(owners)} stage: --{owners[0]} '{{{key}: …}}')"
        return super().hint(key, yaml_key=yaml_key)

    def stage(self, name: str, **pipeline):
        """The config of one round's ``name`` stage: its command's defaults, the options given here for
        every stage, ``pipeline`` (model, data, output folder, steps …), then its section."""
        shared = {k: getattr(self, k) for k in SHARED if getattr(self, k) is not None}
        return self.SECTIONS[name](**{**shared, "overwrite": True, **pipeline, **getattr(self, name)})


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
                                    device=cfg.device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code))
        stats = label_samples(str(samples), reward_fn, rd, cfg.label_temperature, cfg.seed + r)
        history.append({"round": r, "policy": policy, **stats})
        print(json.dumps(history[-1]))
        pairs = str(rd / "pairs.jsonl")
        if cfg.method == "dpo":
            steps = {"max_steps": cfg.max_steps} if cfg.max_steps else {}
            run_dpo(cfg.stage("dpo", model=policy, ref_model=policy, data=pairs, output_dir=str(rd / "dpo"), **steps))
            policy = str(rd / "dpo" / "final")
        else:
            all_pairs += [json.loads(x) for x in (rd / "pairs.jsonl").read_text().splitlines()]
            write_jsonl(rd / "all_pairs.jsonl", all_pairs)
            run_rm(cfg.stage("rm", model=cfg.model, data=str(rd / "all_pairs.jsonl"), output_dir=str(rd / "rm"),
                             max_steps=cfg.rm_steps))
            run_ppo(cfg.stage("ppo", model=policy, ref_model=cfg.model, reward=str(rd / "rm" / "final"),
                              data=cfg.data, output_dir=str(rd / "ppo"), max_steps=cfg.ppo_steps,
                              max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                              top_p=cfg.top_p))
            policy = str(rd / "ppo" / "final")
    history.append({"round": cfg.rounds, "policy": policy})
    (out / "rounds.json").write_text(json.dumps(history, indent=1))
    return history
