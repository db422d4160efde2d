import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = ("the film was great fun and the cast was superb but the plot was thin and slow "
         "a dull boring mess with awful acting yet lovely music and a warm heart").split()


def corpus(n=300):
    import random
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 15))) + "." for _ in range(n)]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A very small Llama (hidden 64, 2 layers, vocab 512) and its tokenizer, built offline."""
    from preftune.models.tiny import build_tiny
    path = tmp_path_factory.mktemp("tiny")
    build_tiny(path, corpus() + [f"Q{i}: what is {i} plus one? It is {i + 1}." for i in range(20)],
               vocab_size=512, hidden=64, layers=2, heads=4)
    return str(path)


def write_jsonl(path: Path, rows) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def tiny_lm(tiny_model, tmp_path_factory) -> str:
    """The tiny model after a short SFT on the word corpus, so it samples word-like text."""
    from preftune.cli import main
    root = tmp_path_factory.mktemp("tiny_lm")
    data = write_jsonl(root / "corpus.jsonl", [{"text": t} for t in corpus(400)])
    assert main(["sft", "--model", tiny_model, "--data", data, "--output_dir", str(root / "run"), "--max_steps", "150",
                 "--batch_size", "16", "--lr", "3e-3", "--warmup_steps", "10", "--progress", "false",
                 "--max_length", "32"]) == 0
    return str(root / "run" / "final")
