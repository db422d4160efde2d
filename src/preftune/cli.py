"""``preftune <command>``: every config key is a flag; ``--config FILE.yaml`` supplies defaults."""
from __future__ import annotations

import argparse
import os
import sys

from .config import add_arguments, build_config


def _commands() -> dict:
    """name -> (config class, runner, one-line help). Imported here, not at module level, so that
    ``import preftune.cli`` stays free of torch and transformers."""
    from .config import DPOConfig, KTOConfig, PPOConfig, RMConfig, SFTConfig
    from .recipes.dpo import run_dpo
    from .recipes.evaluate import EvalConfig, run_eval
    from .recipes.generate import GenerateConfig, run_generate
    from .recipes.iterate import IterateConfig, run_iterate
    from .recipes.kto import run_kto
    from .recipes.label import LabelConfig, run_label
    from .recipes.ppo import run_ppo
    from .recipes.reward import run_rm
    from .recipes.score import ScoreConfig, run_score
    from .recipes.sft import run_sft
    from .tasks.commands import TinyConfig, run_tiny
    from .tasks.demo import DemoConfig, run_demo
    return {
        "sft": (SFTConfig, run_sft, "supervised fine-tuning on demonstrations (prompt tokens masked)"),
        "rm": (RMConfig, run_rm, "train a reward model: Bradley–Terry pairs, K-wise rankings or best-of-n"),
        "dpo": (DPOConfig, run_dpo, "DPO and its family (IPO, SimPO, cDPO, DPO-Positive, RSO hinge, ORPO, ...)"),
        "kto": (KTOConfig, run_kto, "KTO on unpaired rows (prompt, completion, label: desirable or not)"),
        "ppo": (PPOConfig, run_ppo, "online RLHF: PPO with a critic and per-token KL penalty, or RLOO / GRPO"),
        "score": (ScoreConfig, run_score, "rewards for (prompt, completion) rows from a reward model or callable"),
        "iterate": (IterateConfig, run_iterate, "iterated preference rounds: sample, label with a reward, DPO (or RM + PPO), repeat"),
        "generate": (GenerateConfig, run_generate, "sample completions for a prompt file (greedy, temperature, top-k, top-p)"),
        "label": (LabelConfig, run_label, "label sampled completions with a reward: Bradley–Terry pairs and Plackett–Luce rankings"),
        "eval": (EvalConfig, run_eval, "compare policies on held-out prompts: reward, KL, win rate, Elo, frontier"),
        "demo": (DemoConfig, run_demo, "the embedded default: controlled sentiment generation end to end, offline"),
        "tiny": (TinyConfig, run_tiny, "build a tiny Llama model and BPE tokenizer offline from a text file"),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="preftune", description="Tune language models on preferences.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (cls, _, help_text) in _commands().items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p, cls)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    cls, runner, _ = _commands()[args.command]
    from .data import DataError
    from .train import TrainingError
    try:
        cfg = build_config(cls, args)
        runner(cfg)
    except (DataError, TrainingError, ValueError, FileNotFoundError, OSError) as e:
        print(f"preftune {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
