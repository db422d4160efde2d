"""Data layer: load rows, detect and validate their schema, render chat templates, tokenise with
the prompt masked, and collate."""
from .dataset import build_examples
from .errors import BadRows, DataError
from .load import Row, load_rows
from .schema import detect_kind, validate
from .tokenize import IGNORE, PLAIN_CHAT_TEMPLATE, Encoder, batch_sequences, collate, pack, real_tokens, render

__all__ = ["BadRows", "DataError", "Encoder", "IGNORE", "PLAIN_CHAT_TEMPLATE", "Row", "build_examples",
           "batch_sequences", "collate", "detect_kind", "pack", "real_tokens", "load_rows", "render", "validate"]
