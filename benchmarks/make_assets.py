"""Build a benchmark shape's model and data into a folder (deterministic; run once, the other scripts
read it): model/ (a Llama with a byte-level BPE tokenizer), prefs.jsonl, sft.jsonl and stats.json
(model dimensions and per-sample token counts after truncation, for FLOP counting).

    python benchmarks/make_assets.py --out /tmp/preftune-bench --shape realistic
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import SHAPES, VOCAB, preference_rows, sentence  # noqa: E402


def token_stats(rows: list[dict], sides: tuple[str, ...], tok, shape: dict) -> dict:
    """Mean per sample (the sides together) of real tokens, causal attention pairs Σ n(n+1)/2 and
    labelled (completion) tokens, with preftune's tokenisation and truncation."""
    from preftune.data import Encoder, Row
    enc = Encoder(tok, shape["max_length"], shape["max_prompt_length"])
    totals = {"tokens": 0, "attention_pairs": 0, "labelled": 0}
    lengths = []
    for i, r in enumerate(rows):
        ex = enc.encode(Row("bench", i + 1, {}), {"prompt": r["prompt"], **{s: r[s] for s in sides}})
        for s in sides:
            n = len(ex["prompt_ids"]) + len(ex[f"{s}_ids"])
            lengths.append(n)
            totals["tokens"] += n
            totals["attention_pairs"] += n * (n + 1) // 2
            totals["labelled"] += len(ex[f"{s}_ids"])
    out = {k: v / len(rows) for k, v in totals.items()}
    lengths.sort()
    out["sequence_length"] = {"min": lengths[0], "median": lengths[len(lengths) // 2], "max": lengths[-1],
                              "mean": sum(lengths) / len(lengths)}
    out["truncated"] = enc.truncated
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/preftune-bench")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    args = ap.parse_args()
    shape = SHAPES[args.shape]
    out = Path(args.out) / args.shape
    out.mkdir(parents=True, exist_ok=True)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from preftune.models.tiny import build_tiny, build_tokenizer
    rng = random.Random(1)
    texts = [sentence(rng, 5, 40) for _ in range(5000)]
    if shape.get("arch") == "qwen2":   # a Qwen2-shaped model on the benchmark tokenizer (its ids < 4096)
        import torch
        from transformers import Qwen2Config, Qwen2ForCausalLM
        torch.manual_seed(0)
        tokenizer = build_tokenizer(texts, VOCAB)
        config = Qwen2Config(vocab_size=shape["vocab"], hidden_size=shape["hidden"], num_hidden_layers=shape["layers"],
                             num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
                             intermediate_size=shape["intermediate"], tie_word_embeddings=True,
                             max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2)
        Qwen2ForCausalLM(config).save_pretrained(out / "model")
        tokenizer.save_pretrained(out / "model")
    else:
        build_tiny(out / "model", texts, vocab_size=VOCAB, hidden=shape["hidden"], layers=shape["layers"],
                   heads=shape["heads"], intermediate=shape["intermediate"])
    rows = preference_rows(shape["pairs"], args.shape)
    with open(out / "prefs.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(out / "sft.jsonl", "w") as f:
        f.writelines(json.dumps({"prompt": r["prompt"], "completion": r["chosen"]}) + "\n" for r in rows)
    tok = AutoTokenizer.from_pretrained(out / "model")
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    linear = sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, __import__("torch").nn.Linear))
    stats = {"shape": args.shape, **shape, "vocab": shape.get("vocab", VOCAB),
             "params": sum(p.numel() for p in model.parameters()),
             "decoder_linear_params": linear,
             "per_sample": {"dpo": token_stats(rows, ("chosen", "rejected"), tok, shape),
                            "sft": token_stats([{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows],
                                               ("completion",), tok, shape)}}
    stats["per_sample"]["rm"] = stats["per_sample"]["dpo"]
    (out / "stats.json").write_text(json.dumps(stats, indent=1))
    print(json.dumps({"assets": str(out), "params": stats["params"],
                      "sequence_length": stats["per_sample"]["dpo"]["sequence_length"]}))


if __name__ == "__main__":
    main()
