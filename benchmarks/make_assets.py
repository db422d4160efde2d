"""Build the benchmark model and data into a folder (run once; the other scripts read it).

    python benchmarks/make_assets.py --out /tmp/preftune-bench
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import preference_rows, sentence  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/preftune-bench")
    ap.add_argument("--pairs", type=int, default=512)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from preftune.models.tiny import build_tiny
    rng = random.Random(1)
    build_tiny(out / "model", [sentence(rng, 5, 40) for _ in range(5000)], vocab_size=4096, hidden=256, layers=4)
    rows = preference_rows(args.pairs)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(out / "model")
    longest = max(1 + len(tok(r["prompt"])["input_ids"]) + len(tok(r[k])["input_ids"]) + 1
                  for r in rows for k in ("chosen", "rejected"))
    assert longest <= 128, longest
    with open(out / "prefs.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    with open(out / "sft.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps({"prompt": r["prompt"], "completion": r["chosen"]}) + "\n")
    print(json.dumps({"assets": str(out), "pairs": len(rows), "longest_sequence": longest}))


if __name__ == "__main__":
    main()
