"""The anchor: Hugging Face TRL (DPOTrainer, RewardTrainer, SFTTrainer) on the same model, data,
batch, lengths and threads, gradient checkpointing off (TRL's default is on) and SDPA attention.
Run it with the python of a separate virtualenv that has trl (never a dependency of preftune):

    /tmp/trl-venv/bin/python benchmarks/trl_baseline.py --recipe dpo --mode fp32 --shape realistic
Tokens are the real (attention-mask) tokens of each timed step's batch, counted as preftune counts
its own; FLOPs as in ``common.step_flops``.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import bench_args, matmul_peak_gflops, peak_memory_mb, print_json, step_flops  # noqa: E402


def counting(trainer_cls):
    """The trainer, counting each optimizer step's real tokens and taking its end time."""
    class Counting(trainer_cls):
        step_tokens, step_ends, _pending = [], [], 0

        def training_step(self, model, inputs, *args, **kwargs):
            self._pending += int(inputs["attention_mask"].sum())
            loss = super().training_step(model, inputs, *args, **kwargs)
            return loss

        def optimizer_step_done(self):
            self.step_tokens.append(self._pending)
            self.step_ends.append(time.perf_counter())
            self._pending = 0
    return Counting


def main():
    ap = bench_args()
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import datasets
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    import trl

    assets = Path(args.assets) / args.shape
    stats = json.loads((assets / "stats.json").read_text())
    tok = AutoTokenizer.from_pretrained(assets / "model")
    rows = datasets.load_dataset("json",
                                 data_files=str(assets / ("sft.jsonl" if args.recipe == "sft" else "prefs.jsonl")),
                                 split="train")
    if args.recipe == "rm":
        model = AutoModelForSequenceClassification.from_pretrained(assets / "model", num_labels=1)
        model.config.pad_token_id = tok.pad_token_id
    else:
        model = AutoModelForCausalLM.from_pretrained(assets / "model")
    common = dict(output_dir=tempfile.mkdtemp(prefix="trl-"), per_device_train_batch_size=args.batch_size,
                  max_steps=args.warmup + args.steps, learning_rate=1e-5, lr_scheduler_type="constant",
                  logging_steps=1000, save_strategy="no", report_to="none", use_cpu=args.device == "cpu",
                  bf16=args.mode == "bf16",
                  dataloader_num_workers=0, max_length=stats["max_length"], seed=0, disable_tqdm=True,
                  gradient_checkpointing=False)

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            trainer.optimizer_step_done()

    if args.recipe == "dpo":
        cfg = trl.DPOConfig(**common, beta=0.1, precompute_ref_log_probs=args.mode == "precomputed")
        trainer = counting(trl.DPOTrainer)(model=model, args=cfg, train_dataset=rows, processing_class=tok,
                                           callbacks=[Clock()])
    elif args.recipe == "rm":
        trainer = counting(trl.RewardTrainer)(model=model, args=trl.RewardConfig(**common), train_dataset=rows,
                                              processing_class=tok, callbacks=[Clock()])
    else:
        trainer = counting(trl.SFTTrainer)(model=model, args=trl.SFTConfig(**common), train_dataset=rows,
                                           processing_class=tok, callbacks=[Clock()])
    trainer.train()
    ends, counts = trainer.step_ends, trainer.step_tokens
    seconds = ends[-1] - ends[args.warmup - 1]
    tokens = sum(counts[args.warmup:])
    samples = args.steps * args.batch_size
    per_sample = stats["per_sample"][args.recipe]
    flops = tokens / per_sample["tokens"] * step_flops(args.recipe, args.mode, stats, per_sample)
    peak = args.peak or matmul_peak_gflops(torch.bfloat16 if args.mode == "bf16" else torch.float32,
                                           device=args.device)
    print_json({"impl": f"trl {trl.__version__}", "recipe": args.recipe, "mode": args.mode, "shape": args.shape,
                "tokens_per_s": tokens / seconds, "samples_per_s": samples / seconds,
                "mfu": flops / seconds / (peak * 1e9),
                "peak_gflops": peak, "peak_memory_mb": peak_memory_mb(args.device), "params": stats["params"],
                "steps_timed": args.steps, "threads": args.threads})


if __name__ == "__main__":
    main()
