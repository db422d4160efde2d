"""``preftune <command>``: every config key is a flag; ``--config FILE.yaml`` supplies defaults."""
from __future__ import annotations

import argparse
import os
import sys

from .config import add_arguments, build_config, did_you_mean


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
        "iterate": (IterateConfig, run_iterate,
                    "iterated preference rounds: sample, label with a reward, DPO (or RM + PPO), repeat"),
        "generate": (GenerateConfig, run_generate,
                     "sample completions for a prompt file (greedy, temperature, top-k, top-p)"),
        "label": (LabelConfig, run_label,
                  "label sampled completions with a reward: Bradley–Terry pairs and Plackett–Luce rankings"),
        "eval": (EvalConfig, run_eval, "compare policies on held-out prompts: reward, KL, win rate, Elo, frontier"),
        "demo": (DemoConfig, run_demo, "the embedded default: controlled sentiment generation end to end, offline"),
        "tiny": (TinyConfig, run_tiny, "build a tiny Llama model and BPE tokenizer offline from a text file"),
    }


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, with a hint for TRL-style or misspelt flags."""

    def error(self, message: str):
        hint = ""
        if message.startswith("unrecognized arguments:"):
            flags = [flag for flag in message.split(":", 1)[1].split() if flag[:2] == "--"]
            config = getattr(self, "config_class", None)
            hint = "".join(config.hint(flag) if config else did_you_mean(flag, [a.dest for a in self._actions])
                           for flag in flags)
        self.exit(2, f"{self.prog}: error: {message}{hint} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="preftune", description="Tune language models on preferences.")
    sub = parser.add_subparsers(dest="command", required=True)
    parser.commands = {}
    for name, (cls, _, help_text) in _commands().items():
        p = parser.commands[name] = sub.add_parser(name, help=help_text, description=help_text)
        p.config_class = cls
        add_arguments(p, cls)
        p.add_argument("--debug", action="store_true", help="on an error, show its full traceback")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user error ends in one line, ``preftune <command>: error: …``."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:   # named by the command's own parser, which knows its flags
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    cls, runner, _ = _commands()[args.command]
    debug = vars(args).pop("debug", False)
    from .data import DataError
    from .runtime.device import process_settings
    from .train import TrainingError
    from .train.run import release_all
    code = 0
    try:
        cfg = build_config(cls, args)
        process_settings(getattr(cfg, "device", "cpu"), getattr(cfg, "dtype", "float32"))
        runner(cfg)
    except KeyboardInterrupt:
        print(f"preftune {args.command}: interrupted", file=sys.stderr)
        code = 130
    except Exception as e:  # noqa: BLE001 - every failure ends in one line unless --debug
        if debug:
            raise
        expected = isinstance(e, (DataError, TrainingError, ValueError, OSError))
        message = " | ".join(line.strip() for line in str(e).splitlines() if line.strip())
        prefix = "" if expected else f"{type(e).__name__}: "
        suffix = "" if expected else " (run with --debug for the traceback)"
        print(f"preftune {args.command}: error: {prefix}{message}{suffix}", file=sys.stderr)
        code = 2
    finally:
        release_all()
    _end_process_group(code)
    return code


def _end_process_group(code: int) -> None:
    """Under torchrun: the process group ended and the process left at once. At interpreter shutdown,
    a thread gloo keeps aborts the process now and then ("terminate called without an active
    exception", seen in about one FSDP2 run in fifteen), which torchrun reports as a failure."""
    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
