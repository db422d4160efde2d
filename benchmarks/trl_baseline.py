"""The anchor: Hugging Face TRL (DPOTrainer, RewardTrainer, SFTTrainer) on the same model, data,
batch and threads. Run it with the python of a separate virtualenv that has trl (never a
dependency of preftune):

    /tmp/trl-venv/bin/python benchmarks/trl_baseline.py --recipe dpo --mode fp32 --assets /tmp/preftune-bench
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import bench_args, flops_per_token, matmul_peak_gflops, n_params, peak_rss_mb, print_json  # noqa: E402


def main():
    ap = bench_args()
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import datasets
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    import trl

    assets = Path(args.assets)
    tok = AutoTokenizer.from_pretrained(assets / "model")
    rows = datasets.load_dataset("json", data_files=str(assets / ("sft.jsonl" if args.recipe == "sft" else "prefs.jsonl")),
                                 split="train")
    if args.recipe == "rm":
        model = AutoModelForSequenceClassification.from_pretrained(assets / "model", num_labels=1)
        model.config.pad_token_id = tok.pad_token_id
    else:
        model = AutoModelForCausalLM.from_pretrained(assets / "model")
    common = dict(output_dir=tempfile.mkdtemp(prefix="trl-"), per_device_train_batch_size=args.batch_size,
                  max_steps=args.warmup + args.steps, learning_rate=1e-5, lr_scheduler_type="constant",
                  logging_steps=1000, save_strategy="no", report_to="none", use_cpu=True, bf16=args.mode == "bf16",
                  dataloader_num_workers=0, max_length=128, seed=0, disable_tqdm=True)
    times = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            times.append(time.perf_counter())

    if args.recipe == "dpo":
        cfg = trl.DPOConfig(**common, beta=0.1, precompute_ref_log_probs=args.mode == "precomputed")
        trainer = trl.DPOTrainer(model=model, args=cfg, train_dataset=rows, processing_class=tok, callbacks=[Clock()])
    elif args.recipe == "rm":
        trainer = trl.RewardTrainer(model=model, args=trl.RewardConfig(**common), train_dataset=rows,
                                    processing_class=tok, callbacks=[Clock()])
    else:
        trainer = trl.SFTTrainer(model=model, args=trl.SFTConfig(**common), train_dataset=rows, processing_class=tok,
                                 callbacks=[Clock()])
    trainer.train()
    seconds = times[-1] - times[args.warmup - 1]
    samples = args.steps * args.batch_size
    # tokens/s: samples/s times the mean non-pad tokens of a sample (bos + prompt + completion(s) + eos),
    # the count preftune reports, averaged over the dataset TRL samples from.
    sides = ("completion",) if args.recipe == "sft" else ("chosen", "rejected")
    per_sample = sum(len(tok(r["prompt"])["input_ids"]) + len(tok(r[s])["input_ids"]) + 2
                     for r in rows for s in sides) / len(rows)
    n = n_params(assets / "model")
    peak = args.peak or matmul_peak_gflops(torch.bfloat16 if args.mode == "bf16" else torch.float32)
    print_json({"impl": f"trl {trl.__version__}", "recipe": args.recipe, "mode": args.mode,
                "tokens_per_s": samples / seconds * per_sample, "samples_per_s": samples / seconds,
                "mfu": samples / seconds * per_sample * flops_per_token(args.recipe, args.mode, n) / (peak * 1e9), "peak_gflops": peak, "peak_rss_mb": peak_rss_mb(), "params": n,
                "steps_timed": args.steps, "threads": args.threads})


if __name__ == "__main__":
    main()
