"""``preftune tiny``: build the tiny model from a text dataset."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import Config, opt
from ..data import load_rows


@dataclass
class TinyConfig(Config):
    data: str = opt(None, "text dataset (a 'text' column) to train the tokenizer on")
    output_dir: str = opt("runs/tiny", "folder for the model and tokenizer")
    vocab_size: int = opt(4096, "BPE vocabulary size")
    hidden: int = opt(256, "hidden size")
    layers: int = opt(4, "decoder layers")
    heads: int = opt(4, "attention heads")
    seed: int = opt(0, "seed for the initial weights")


def run_tiny(cfg: TinyConfig) -> None:
    from ..models.tiny import build_tiny
    texts = [r.data["text"] for r in load_rows(cfg.data) if isinstance(r.data.get("text"), str)]
    if not texts:
        raise ValueError(f"{cfg.data}: no rows with a 'text' string")
    path = build_tiny(cfg.output_dir, texts, vocab_size=cfg.vocab_size, hidden=cfg.hidden, layers=cfg.layers,
                      heads=cfg.heads, seed=cfg.seed)
    print(f"tiny model written to {path}")
