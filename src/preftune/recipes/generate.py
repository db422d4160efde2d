"""``preftune generate``: completions for a prompt file, written as JSONL."""
from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from ..config import DeviceConfig, opt
from ..data import BadRows, DataError, Encoder, detect_kind, load_rows, validate
from ..models import load_tokenizer
from ..models.load import inference_lm
from ..runtime.device import prepare, resolve
from ..rollout import generate


@dataclass
class GenerateConfig(DeviceConfig):
    model: str = opt(None, "model folder or hub name")
    data: str = opt(None, "prompts: any dataset with a 'prompt' column (or messages)")
    output: str = opt("completions.jsonl", "output JSONL: prompt, completion, ended_with_eos")
    num_samples: int = opt(1, "completions per prompt", bounds="[1, inf)")
    max_new_tokens: int = opt(64, "longest completion", bounds="[1, inf)")
    temperature: float = opt(1.0, "sampling temperature (0 = greedy)", bounds="[0, inf)")
    top_k: int = opt(0, "sample among the k most likely tokens (0 = all)", bounds="[0, inf)")
    top_p: float = opt(1.0, "nucleus sampling mass", bounds="(0, 1]")
    batch_size: int = opt(32, "prompts per generate call", bounds="[1, inf)")
    max_prompt_length: int = opt(256, "longer prompts are cut from the left", bounds="[1, inf)")
    seed: int = opt(0, "sampling seed")
    trust_remote_code: bool = opt(False, "allow a hub model's own code to run")
    on_bad_row: str = opt("error", "error or skip", ["error", "skip"])
    log_seconds: float = opt(0.0, "print a progress line at most every N seconds (0 = none)", bounds="[0, inf)")


def prompt_examples(tokenizer, source, max_prompt_length: int, bad: BadRows) -> list[dict]:
    """Prompt ids and rendered prompt text of each row of ``source`` (any kind with prompts; a path or
    rows as Python objects)."""
    rows = load_rows(source, bad=bad)
    kind = detect_kind(rows, source if isinstance(source, str) else "data",
                       ("preference", "ranking", "messages", "unpaired", "sft", "prompt"))
    encoder = Encoder(tokenizer, max_prompt_length + 1, max_prompt_length)
    out = []
    for row in rows:
        try:
            ex = validate(row, kind)
            out.append({**encoder.encode(row, {"prompt": ex["prompt"]}), "prompt": ex["prompt"]})
        except DataError as err:
            bad.handle(err)
    return out


def generate_rows(cfg: GenerateConfig, *, model=None, tokenizer=None, prompts=None) -> list[dict]:
    """``num_samples`` completions of every prompt row (``prompts``: rows as Python objects, default
    ``cfg.data``), by ``model`` (an object, default ``cfg.model``): rows of prompt_index, prompt,
    completion, ended_with_eos."""
    device = resolve(cfg.device)
    prepare(device)
    torch.manual_seed(cfg.seed)
    model = cfg.model if model is None else model
    tok = load_tokenizer(tokenizer if tokenizer is not None else (
        model if isinstance(model, str) else model.config._name_or_path), trust_remote_code=cfg.trust_remote_code)
    lm = inference_lm(model, device=device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    rows = prompt_examples(tok, cfg.data if prompts is None else prompts, cfg.max_prompt_length,
                           BadRows(cfg.on_bad_row))
    ids = [p["prompt_ids"] for p in rows for _ in range(cfg.num_samples)]
    gen = generate(lm, ids, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, max_new_tokens=cfg.max_new_tokens,
                   temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, batch_size=cfg.batch_size,
                   log_seconds=cfg.log_seconds)
    return [{"prompt_index": i // cfg.num_samples, "prompt": rows[i // cfg.num_samples]["prompt"],
             "completion": tok.decode(comp, skip_special_tokens=True), "ended_with_eos": ended}
            for i, (comp, ended) in enumerate(zip(gen.completions, gen.ended))]


def run_generate(cfg: GenerateConfig) -> None:
    rows = generate_rows(cfg)
    with open(cfg.output, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} completions to {cfg.output}")
