"""The one training loop. A recipe supplies the trainable module, a batch source and
``step(batch) -> (loss_sum, metrics)``; this loop does the rest: AdamW, warm-up + decay, gradient
accumulation, clipping, bfloat16 compute over float32 master weights (``precision.py``), DDP,
evaluation, logging, atomic checkpoints, resume and the non-finite-loss guard.

Normalisation: ``step`` returns the *sum* of per-item losses of its micro-batch and ``count(batch)``
the number of items (tokens for SFT, pairs for DPO). Each micro-batch's loss is divided by the
item count of the whole global batch (summed over micro-batches and processes), so one process with
batch 2B and two processes with batch B give the same gradient.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
import warnings
from contextlib import nullcontext
from typing import Callable

import torch
from tqdm import tqdm

from ..data.tokenize import real_tokens
from ..models import save_model
from ..runtime import distributed
from ..runtime.device import move
from . import checkpoint
from .precision import MasterWeights
from .run import INPUT_OPTIONS


class TrainingError(RuntimeError):
    pass


# settings a resumed run may change: they do not change what one optimizer step computes
MAY_CHANGE_ON_RESUME = frozenset({"output_dir", "data", "eval_data", "eval_fraction", "max_steps", "epochs",
                                  "save_steps", "keep_checkpoints", "log_steps", "eval_steps", "progress", "resume",
                                  "overwrite", "threads", "max_bad_steps", "on_bad_row", "eval_prompts"})


def resume_settings(cfg) -> dict:
    """The config values a checkpoint records and a resume must match; a local path as its resolved
    absolute path (the same model spelt ``./m`` or ``../run/m`` is the same model)."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in MAY_CHANGE_ON_RESUME}
    for k in INPUT_OPTIONS:
        if isinstance(settings.get(k), str) and os.path.exists(settings[k]):
            settings[k] = os.path.realpath(settings[k])
    return settings


def lr_schedule(kind: str, warmup: int, total: int) -> Callable[[int], float]:
    """LR multiplier: linear warm-up from 0 over ``warmup`` steps, then cosine to 0, linear to 0, or
    constant (the schedules of ``transformers.get_scheduler``, whose import alone costs ~100 MB RSS)."""
    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "cosine":
            return max(0.0, 0.5 * (1 + math.cos(math.pi * progress)))
        if kind == "linear":
            return max(0.0, 1 - progress)
        return 1.0
    return factor


class ExampleStream:
    """Deterministic micro-batches: global example position k maps to epoch k // n and a permutation
    seeded by (seed, epoch), so the data position is a function of the step alone and every rank
    takes its own slice of each global micro-batch."""

    def __init__(self, examples: list, collate: Callable, batch_size: int, grad_accum: int, *,
                 seed: int, rank: int = 0, world: int = 1, shuffle: bool = True):
        self.examples, self.collate = examples, collate
        self.batch_size, self.grad_accum = batch_size, grad_accum
        self.seed, self.rank, self.world, self.shuffle = seed, rank, world, shuffle
        self._perms: dict[int, list[int]] = {}

    def _index(self, k: int) -> int:
        n = len(self.examples)
        epoch = k // n
        if not self.shuffle:
            return k % n
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            self._perms = {epoch: torch.randperm(n, generator=g).tolist()}
        return self._perms[epoch][k % n]

    def __call__(self, step: int, micro: int):
        per_step = self.batch_size * self.grad_accum * self.world
        start = step * per_step + (micro * self.world + self.rank) * self.batch_size
        return self.collate([self.examples[self._index(k)] for k in range(start, start + self.batch_size)])


class Trainer:
    """The loop over one recipe's parts. From the run's ``Setup`` (config, run folder, ranks, device) and:
    ``model`` the trainable module (wrapped in DDP/FSDP2 here), ``batches(step, micro) -> batch``,
    ``step_fn(module, batch) -> (loss_sum, metrics)``, ``count_fn(batch) -> items in the loss sum``,
    ``examples`` (tokenizer and rows: the resume fingerprint, ``--epochs``, the summary), and optionally
    ``save`` (the model written to final/ with the tokenizer), ``evaluate() -> metrics``, ``state`` (get,
    load) of recipe state kept in checkpoints, ``steps_per_epoch`` (default: training rows per global
    batch), ``step_multiple`` (the run's length is rounded up to a multiple), ``summary_extra`` and
    ``final_summary() -> dict`` (every process calls it at the end).

    Hooks: ``on_step_end`` callables get (step, metrics) after every optimizer step (a rollout engine's
    weight sync goes there); ``on_log`` callables get each logged metrics record; ``logged`` keeps them."""

    def __init__(self, setup, model: torch.nn.Module, batches: Callable[[int, int], dict],
                 step_fn: Callable[[torch.nn.Module, dict], tuple], count_fn: Callable[[dict], int], *, examples,
                 save: torch.nn.Module | None = None, evaluate: Callable[[], dict] | None = None,
                 state: tuple[Callable[[], dict], Callable[[dict], None]] | None = None,
                 steps_per_epoch: float | None = None, step_multiple: int = 1, summary_extra: dict | None = None,
                 final_summary: Callable[[], dict] | None = None):
        cfg = self.cfg = setup.cfg
        self.run, self.rank, self.world, self.device = setup.run, setup.rank, setup.world, setup.device
        self.model, self.batches, self.step_fn, self.count_fn = model, batches, step_fn, count_fn
        self.examples, self.save, self.evaluate, self.state = examples, save, evaluate, state
        self.data_fingerprint = examples.fingerprint()
        self.steps_per_epoch = steps_per_epoch or len(examples.train) / (cfg.batch_size * cfg.grad_accum * self.world)
        self.summary_extra = {**examples.summary(setup), **(summary_extra or {})}
        self.final_summary = final_summary
        self.on_step_end: list[Callable[[int, dict], None]] = []
        self.on_log: list[Callable[[dict], None]] = []
        self.logged: list[dict] = []
        if cfg.max_steps is not None:
            steps = cfg.max_steps
        elif cfg.epochs is not None:
            steps = math.ceil(cfg.epochs * self.steps_per_epoch - 1e-9)
        else:
            steps = 100
        self.max_steps = max(1, math.ceil(steps / step_multiple)) * step_multiple
        self.fsdp = cfg.fsdp
        if self.fsdp:   # FSDP2's mixed precision replaces the master weights: bf16 compute, float32 shards
            self.master = None
            self.ddp_model = distributed.shard(self.model, compute_dtype=torch.bfloat16
                                               if cfg.dtype == "bfloat16" else None)
        else:
            # bfloat16: parameters become bf16 copies before DDP builds its buckets, and the optimizer
            # steps their float32 masters
            self.master = MasterWeights(self.model) if cfg.dtype == "bfloat16" else None
            self.ddp_model = distributed.wrap(self.model, self.device)
        self.params = (list(self.master.masters.values()) if self.master is not None else
                       [p for p in self.model.parameters() if p.requires_grad])
        # fused: one kernel for all parameters (CPU and GPU), measurably cheaper than the loop
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, betas=tuple(cfg.adam_betas),
                                           weight_decay=cfg.weight_decay, fused=True)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_schedule(cfg.lr_scheduler, cfg.warmup_steps, self.max_steps))
        self.step = 0
        self.bad_in_row = 0
        self.bad_total = 0

    def _log(self, metrics: dict) -> None:
        record = {"step": self.step, **metrics}
        self.logged.append(record)
        self.run.log(self.step, metrics)
        for hook in self.on_log:
            hook(record)

    def _evaluate(self) -> dict:
        """Evaluation on its own random stream: sampling there never changes the training run (so a
        run evaluated at a step resumes exactly like one that was not)."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            return self.evaluate()

    def _masters(self) -> dict | None:
        return self.master.masters if self.master is not None else None

    def _resume(self) -> None:
        """Continue from the newest readable checkpoint (an unreadable one is named and skipped), made
        with the same data and loss-relevant settings; without one, start over with clean metrics."""
        for path in reversed(checkpoint.list_checkpoints(self.run.checkpoints)):
            try:
                saved = checkpoint.read(path)
            except checkpoint.CheckpointError as e:
                print(f"--resume: {e}; trying the one before", file=sys.stderr)
                continue
            self._check_same_run(saved["state"], path)
            try:
                state = checkpoint.apply(saved, self.model, self.optimizer, self.scheduler, masters=self._masters(),
                                         world=self.world if self.fsdp else None)
            except checkpoint.CheckpointError as e:
                raise TrainingError(f"--resume: {e}") from None
            self.step = state["step"]
            self.bad_total = state.get("bad_steps", 0)
            if self.state is not None:
                self.state[1](state.get("recipe", {}))
            self.run.truncate_metrics(self.step)
            if self.rank == 0:
                print(f"resumed from {path} (step {self.step})")
            return
        if (self.run.path / "summary.json").exists():
            raise TrainingError(f"--resume: the run in {self.run.path} finished and kept no checkpoint to continue "
                                "from (set --save_steps); --overwrite true trains it again")
        if self.rank == 0:
            print(f"--resume: no readable checkpoint in {self.run.checkpoints}; starting from step 0")
        self.run.truncate_metrics(0)

    def _check_same_run(self, state: dict, path) -> None:
        saved, now = dict(state.get("config", {})), resume_settings(self.cfg)
        for k in INPUT_OPTIONS:   # a checkpoint from before paths were resolved
            if isinstance(saved.get(k), str) and isinstance(now.get(k), str) and os.path.exists(saved[k]):
                saved[k] = os.path.realpath(saved[k])
        changed = [f"--{k} {saved[k]!r} → {now.get(k)!r}" for k in sorted(saved) if saved[k] != now.get(k)]
        if self.cfg.lr_scheduler != "constant" and state.get("total_steps", self.max_steps) != self.max_steps:
            changed.append(f"the run's length, {state['total_steps']} → {self.max_steps} steps (its "
                           f"{self.cfg.lr_scheduler} learning-rate schedule depends on it)")
        if state.get("data") not in (None, self.data_fingerprint):
            changed.append("the training data (its tokenised rows differ)")
        if changed:
            raise TrainingError(f"--resume: {path} was made with other settings: {'; '.join(changed)} (resume with "
                                "the same ones, or start over with --overwrite true)")

    def _save_checkpoint(self) -> None:
        extra = {"bad_steps": self.bad_total, "recipe": self.state[0]() if self.state else {},
                 "config": resume_settings(self.cfg), "data": self.data_fingerprint, "total_steps": self.max_steps}
        if self.fsdp:
            checkpoint.save_sharded(self.run.checkpoints, self.step, self.model, self.optimizer, self.scheduler, extra,
                                    self.cfg.keep_checkpoints, rank=self.rank, world=self.world)
        elif self.rank == 0:
            checkpoint.save(self.run.checkpoints, self.step, self.model, self.optimizer, self.scheduler, extra,
                            self.cfg.keep_checkpoints, masters=self._masters())
        distributed.barrier()

    def _check_finite(self) -> None:
        """Refuse to write final/ from weights that are not all finite (each process checks its shards)."""
        local = {name: p.detach().to_local() if hasattr(p, "to_local") else p.detach()   # FSDP2: own shards
                 for name, p in self.save.named_parameters()}
        bad = [name for name, t in local.items() if not bool(torch.isfinite(t).all())]
        if distributed.all_sum([float(len(bad))], self.device)[0]:
            raise TrainingError(f"the trained weights are not finite ({', '.join(bad[:3]) or 'on another process'}); "
                                "final/ was not written (lower --lr, or resume from an earlier checkpoint)")

    def train_step(self) -> dict | None:
        """One optimizer step over grad_accum micro-batches; None when skipped (non-finite)."""
        cfg = self.cfg
        micro = [self.batches(self.step, m) for m in range(cfg.grad_accum)]
        counts = [self.count_fn(b) for b in micro]
        tokens = sum(real_tokens(b) for b in micro)
        total, tokens = distributed.all_sum([sum(counts), tokens], self.device)
        self.ddp_model.train()
        loss_sum, sums = 0.0, {}
        finite = True
        for m, (batch, n) in enumerate(zip(micro, counts)):
            batch = move(batch, self.device)
            # gradients are reduced at the last micro-batch, or at each one when bf16 gradients move
            # into float32 sums after every backward
            reduce_now = m == len(micro) - 1 or self.world == 1 or self.master is not None
            if self.fsdp:
                self.ddp_model.set_requires_gradient_sync(m == len(micro) - 1)
            with nullcontext() if reduce_now or self.fsdp else self.ddp_model.no_sync():
                loss, metrics = self.step_fn(self.ddp_model, batch)
                finite &= bool(torch.isfinite(loss.detach()))
                (loss * self.world / max(total, 1)).backward()
            if self.master is not None:
                self.master.accumulate()
            loss_sum += float(loss.detach())
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v) * n
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
        if hasattr(grad_norm, "full_tensor"):   # FSDP2: the norm over every shard
            grad_norm = grad_norm.full_tensor()
        keys = sorted(sums)
        reduced = distributed.all_sum([loss_sum, float(not finite)] + [sums[k] for k in keys], self.device)
        finite = reduced[1] == 0 and math.isfinite(float(grad_norm))
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            with warnings.catch_warnings():   # the schedule follows the step count, skipped or not
                warnings.simplefilter("ignore", UserWarning)
                self.scheduler.step()
            return None
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        if self.master is not None:
            self.master.copy_to_model()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        out = {"loss": reduced[0] / max(total, 1), "grad_norm": float(grad_norm), "lr": lr, "tokens": tokens}
        out.update({k: v / max(total, 1) for k, v in zip(keys, reduced[2:])})
        return out

    def fit(self) -> dict:
        cfg = self.cfg
        if cfg.resume:
            self._resume()
        finished = self.run.path is not None and (self.run.path / "summary.json").exists()
        if cfg.resume and finished and self.step >= self.max_steps:
            if self.rank == 0:
                print(f"--resume: the run in {self.run.path} already finished at step {self.step}; nothing to do "
                      "(raise --max_steps to train on)")
            self.run.close()
            return json.loads((self.run.path / "summary.json").read_text())
        self.run.begin(cfg, overwrite=cfg.overwrite)
        start_step, start_time = self.step, time.perf_counter()
        bar = tqdm(total=self.max_steps, initial=self.step, disable=self.rank != 0 or not cfg.progress,
                   dynamic_ncols=True)
        tokens_done, last, final_eval, updates, logged_at = 0, None, None, 0, 0.0
        while self.step < self.max_steps:
            metrics = self.train_step()
            self.step += 1
            if metrics is None:
                self.bad_in_row += 1
                self.bad_total += 1
                if self.rank == 0:
                    print(f"step {self.step}: loss or gradient not finite, update skipped ({self.bad_in_row} in a "
                          f"row, {self.bad_total} in this run; --max_bad_steps {cfg.max_bad_steps})", file=sys.stderr)
                if self.bad_in_row >= cfg.max_bad_steps:
                    raise TrainingError(f"loss or gradient was not finite for {self.bad_in_row} steps in a row "
                                        f"(step {self.step}); lower --lr or check the data")
                continue
            self.bad_in_row = 0
            updates += 1
            tokens_done += metrics["tokens"]
            elapsed = time.perf_counter() - start_time
            metrics["tokens_per_s"] = tokens_done / max(elapsed, 1e-9)
            metrics["elapsed_s"] = elapsed
            metrics["skipped_steps"] = self.bad_total
            last = metrics
            if self.evaluate and (cfg.eval_steps and self.step % cfg.eval_steps == 0 or self.step == self.max_steps):
                final_eval = self._evaluate()
                metrics.update({f"eval/{k}": v for k, v in final_eval.items()})
            for hook in self.on_step_end:
                hook(self.step, metrics)
            if self.step % cfg.log_steps == 0 or self.step == self.max_steps:
                self._log(metrics)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
            bar.update(1)
            if cfg.log_seconds and self.rank == 0 and elapsed - logged_at >= cfg.log_seconds:
                logged_at = elapsed
                left = elapsed / (self.step - start_step) * (self.max_steps - self.step)
                print(f"  step {self.step}/{self.max_steps}  loss {metrics['loss']:.4f}  "
                      f"{metrics['tokens_per_s']:.0f} tokens/s  {elapsed:.0f} s, about {left:.0f} s to go", flush=True)
            if cfg.save_steps and (self.step % cfg.save_steps == 0 or self.step == self.max_steps):
                self._save_checkpoint()   # the last step too: a finished run can be extended
        bar.close()
        if self.step > start_step and updates == 0:
            raise TrainingError(f"no optimizer update in {self.step - start_step} steps: every loss or gradient was "
                                "not finite; nothing was saved (lower --lr or check the data)")
        elapsed = time.perf_counter() - start_time
        epochs = self.step / self.steps_per_epoch if self.steps_per_epoch else None
        summary = {"steps": self.step, "epochs": epochs, "steps_this_run": self.step - start_step,
                   "wall_s": round(elapsed, 3),
                   "tokens_per_s": tokens_done / max(elapsed, 1e-9), "skipped_steps": self.bad_total,
                   "final_train": last, **self.summary_extra}
        if self.evaluate:
            summary["eval"] = final_eval if final_eval is not None else self._evaluate()
        if self.master is not None:
            self.master.release()
        if self.save is not None and self.run.path is not None:   # every process: FSDP2 gathers for rank 0
            self._check_finite()
            save_model(self.save, self.examples.tokenizer, self.run.final, merge_lora=cfg.merge_lora,
                       main=self.rank == 0)
        distributed.barrier()
        summary["peak_memory_mb"] = distributed.all_gather(
            torch.tensor(distributed.peak_memory_mb(self.device), device=self.device)).tolist()
        if self.final_summary:
            summary.update(self.final_summary())
        self.run.write_summary(summary)
        self.run.close()
        return summary
