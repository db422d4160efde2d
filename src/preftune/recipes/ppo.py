"""Online RLHF (InstructGPT step 3): sample from π_θ, score with a reward source, optimise with PPO
under a per-token KL penalty to the frozen π_ref — or critic-free with RLOO or GRPO.

Per "The N implementation details of RLHF with PPO" (Huang et al. 2024): sampled tokens' log-probs
are recomputed with a training-precision forward; the per-token reward is −β·KL_t plus the sequence
reward on the last response token; the critic starts from the reward model; GAE, advantage
whitening, clipped surrogate and value losses, entropy bonus, several epochs of minibatches. GRPO
optimises TRL 1.16's loss family (``losses.ppo.grpo_loss``) on group-normalised sequence advantages.
No pass runs that no term needs: no reference without a KL term, no old-policy pass with one update
per rollout (its own detached log-probs are the old ones). One loop step is one minibatch update; each
iteration's rollout is made when its first update asks for it, so checkpoints (taken at iteration
boundaries) resume to the same rollouts.
"""
from __future__ import annotations

import copy
import math
import time

import torch
from torch import nn

from ..data import build_examples, collate
from ..data.tokenize import IGNORE
from ..losses.advantages import grpo_advantages, rloo_advantages
from ..losses.ppo import gae, grpo_loss, grpo_loss_weight, kl_estimate, masked_mean, policy_loss, value_loss, whiten
from ..models import CausalLMScorer, load_causal_lm, load_reward_model
from ..models.load import disable_dropout, require_same_tokenizer
from ..models.logprobs import classifier_outputs, has_score_head
from ..rewards import RewardModel, load_reward_source
from ..rewards.shaping import KLController, RunningMoments, shape_scores
from ..rollout import generate
from ..runtime import distributed
from ..runtime.device import move
from ..train import Trainer
from ..train.loop import ExampleStream
from .common import (Inputs, Means, Parts, Result, model_options, model_source, run_recipe, shares,
                     tokenizer_and_data)
from .reference import reference_model


class ActorCritic(nn.Module):
    """The trained models in one module (one optimizer, one DDP wrapper): the policy and, for PPO,
    a separate critic (a one-output sequence classifier read at every position) or a value head on
    the policy's last hidden states."""

    def __init__(self, policy_lm, critic=None, shared_head: bool = False):
        super().__init__()
        self.policy = CausalLMScorer(policy_lm)
        self.critic = critic
        self.value_head = nn.Linear(policy_lm.config.hidden_size, 1) if shared_head else None
        if self.value_head is not None:
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask, labels, ptx: dict | None = None, with_entropy: bool = False) -> dict:
        """Per-token log-probs, mask, entropy and values over shifted positions (N, T−1) (values None
        without a critic; position t's value is V of the state before token t+1), and with a ``ptx``
        batch the policy's mean NLL on it — all in one forward call so DDP sees every use."""
        shared = self.value_head is not None
        out = self.policy(input_ids, attention_mask, labels, with_entropy=with_entropy, with_hidden=shared)
        result = {"logps": out.logps, "mask": out.mask, "entropy": out.entropy, "values": None}
        if shared:
            result["values"] = self.value_head(out.hidden).squeeze(-1)[:, :-1].float()
        elif self.critic is not None:
            result["values"] = classifier_outputs(self.critic, input_ids, attention_mask)[:, :-1]
        if ptx is not None:
            text = self.policy(ptx["input_ids"], ptx["attention_mask"], ptx["labels"])
            result["ptx_nll"] = -text.logps.sum() / text.mask.sum().clamp(min=1)
        return result


def explained_variance(values, returns, mask) -> float:
    var = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    resid = masked_mean((returns - values - masked_mean(returns - values, mask)) ** 2, mask)
    return float(1 - resid / var) if var > 0 else float("nan")


class Rollouts:
    """Makes one iteration's rollout on demand and serves its minibatches (ppo_epochs passes)."""

    def __init__(self, cfg, setup, tokenizer, prompts, model: ActorCritic, ref: CausalLMScorer, reward_fn):
        self.cfg, self.setup, self.tok = cfg, setup, tokenizer
        self.model, self.ref, self.reward_fn = model, ref, reward_fn
        self.size = cfg.rollout_batch_size * cfg.num_samples
        self.minibatch = cfg.batch_size * cfg.grad_accum
        if self.size % self.minibatch:
            raise ValueError(f"rollout_batch_size·num_samples ({self.size}) must be a multiple of "
                             f"batch_size·grad_accum ({self.minibatch})")
        self.passes = cfg.num_iterations if cfg.algo == "grpo" else cfg.ppo_epochs
        self.updates_per_iteration = self.passes * self.size // self.minibatch
        # with one update per rollout, the update's own detached log-probs are the old ones (TRL does the same)
        # unless the reward needs the policy's log-probs for its KL term (ppo, rloo): then they are scored first
        self.score_policy = cfg.algo == "ppo" or self.updates_per_iteration > 1 or (
            cfg.algo == "rloo" and ref is not None)
        self.prompts = ExampleStream(prompts, list, cfg.rollout_batch_size, 1, seed=cfg.seed,
                                     rank=setup.rank, world=setup.world)
        self.kl = KLController(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon)
        self.moments = RunningMoments() if cfg.normalize_reward else None
        self.iteration, self.data, self._metrics = -1, None, {}

    def state(self) -> dict:
        return {"kl_coef": self.kl.value, "reward_moments": self.moments.state_dict() if self.moments else None}

    def load_state(self, d: dict) -> None:
        self.kl.value = d.get("kl_coef", self.kl.value)
        if self.moments and d.get("reward_moments"):
            self.moments.load_state_dict(d["reward_moments"])

    def sample(self, examples: list[dict], k: int):
        """Generate k completions per prompt and score them: (batch, raw scores, ended, generation, texts)."""
        cfg, tok = self.cfg, self.tok
        prompt_ids = [e["prompt_ids"] for e in examples for _ in range(k)]
        prompt_texts = [e["prompt_text"] for e in examples for _ in range(k)]
        with distributed.gathered(self.model):   # FSDP2: generation calls the policy outside the root module
            gen = generate(self.model.policy.lm, prompt_ids, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id,
                           max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                           top_p=cfg.top_p, batch_size=cfg.forward_batch_size)
        texts = [tok.decode(c, skip_special_tokens=True) for c in gen.completions]
        scores = torch.tensor(self.reward_fn(prompt_texts, texts), dtype=torch.float32)
        batch = move(collate(list(zip(prompt_ids, gen.completions)), tok.pad_token_id), self.setup.device)
        return batch, scores.to(self.setup.device), torch.tensor(gen.ended, device=self.setup.device), gen, texts

    @torch.no_grad()
    def score(self, batch: dict, *, policy: bool = True):
        """The rollout's old-policy log-probs and values (None without ``policy``: no pass), the reference
        log-probs (None without a reference) and the completion mask, over micro-batches of
        --forward_batch_size sequences (no entropy: the update computes its own when it needs it)."""
        parts = []
        for i in range(0, len(batch["input_ids"]), self.cfg.forward_batch_size):
            rows = [batch[k][i:i + self.cfg.forward_batch_size] for k in ("input_ids", "attention_mask", "labels")]
            out = self.model(*rows, with_entropy=False) if policy else {"logps": None, "values": None}
            mask = rows[2][:, 1:] != IGNORE
            parts.append((out["logps"], mask, out["values"], None if self.ref is None else self.ref(*rows).logps))
        return tuple(None if p[0] is None else torch.cat(p) for p in zip(*parts))

    @torch.no_grad()
    def make(self, iteration: int) -> None:
        """Sample → score → advantages → store, for one iteration."""
        cfg = self.cfg
        t0 = time.perf_counter()
        batch, raw, ended, gen, _ = self.sample(self.prompts(iteration, 0), self.cfg.num_samples)
        t_gen = time.perf_counter() - t0
        self.model.eval()
        logps, mask, values, ref_logps = self.score(batch, policy=self.score_policy)
        t_score = time.perf_counter() - t0 - t_gen
        self.model.train()
        maskf = mask.float()
        if cfg.algo == "grpo" and cfg.mask_truncated_completions:
            maskf = maskf * ended.float().unsqueeze(1)
        scores = shape_scores(raw, ended, missing_eos_penalty=cfg.missing_eos_penalty, clip=cfg.reward_clip,
                              moments=self.moments, gather=lambda x: distributed.all_gather(x).flatten())
        kl = None if ref_logps is None or logps is None else kl_estimate(logps, ref_logps, cfg.kl_estimator) * maskf
        data = {**batch, "old_logps": logps, "ref_logps": ref_logps, "mask": maskf}
        self._metrics = {}
        data["advantages"] = self.advantages(scores, kl, values, maskf, data)
        if kl is not None:
            kl_sum, n = distributed.all_sum([float(kl.sum()), len(kl)], self.setup.device)
            self.kl.update(kl_sum / n, self.size * self.setup.world)   # one β for every process
            self._metrics["rollout/kl"] = float(kl.sum(1).mean())
        lengths = mask.float().sum(1)
        self._metrics.update({
            "rollout/reward_mean": float(raw.mean()), "rollout/reward_std": float(raw.std()) if len(raw) > 1 else 0.0,
            "rollout/kl_coef": self.kl.value, "rollout/response_length": float(lengths.mean()),
            "rollout/eos_share": float(ended.float().mean()), "rollout/gen_tokens_per_s": gen.tokens / max(t_gen, 1e-9),
            "rollout/gen_s": t_gen, "rollout/score_s": t_score})
        self.data, self.iteration = {k: v for k, v in data.items() if v is not None}, iteration

    def advantages(self, scores, kl, values, maskf, data: dict):
        """PPO: GAE over −β·KL per token plus the sequence reward at the last token; RLOO: leave-one-out over
        the KL-penalised sequence reward; GRPO: group-normalised sequence rewards, one per completion (N,)."""
        cfg, k = self.cfg, self.cfg.num_samples
        beta = self.kl.value
        if cfg.algo == "grpo":
            adv, zero_std = grpo_advantages(scores, k, cfg.scale_rewards)
            self._metrics["frac_reward_zero_std"] = float(zero_std.float().mean())
            return adv
        if cfg.algo == "ppo":
            rewards = -beta * kl if kl is not None else torch.zeros_like(maskf)
            last = maskf.shape[1] - 1 - maskf.flip(1).argmax(1)            # last response token
            rewards[torch.arange(len(last)), last] += scores
            adv, returns = gae(rewards, values * maskf, maskf, gamma=cfg.gamma, lam=cfg.lam)
            data.update(old_values=values * maskf, returns=returns)
            self._metrics["critic/explained_variance"] = explained_variance(values, returns, maskf)
        else:
            penalised = scores - beta * kl.sum(1) if kl is not None else scores
            adv = rloo_advantages(penalised, k).reshape(-1, 1) * maskf
        return whiten(adv, maskf) if cfg.whiten_advantages else adv

    def metrics(self) -> dict:
        """The current rollout's metrics (reward, KL, lengths, timings)."""
        return dict(self._metrics)

    def __call__(self, step: int, micro: int) -> dict:
        iteration, update = divmod(step, self.updates_per_iteration)
        if iteration != self.iteration:
            self.make(iteration)
        epoch, mb = divmod(update, self.size // self.minibatch)
        g = torch.Generator().manual_seed(self.cfg.seed * 7919 + iteration * 131 + epoch)
        order = torch.randperm(self.size, generator=g)
        start = mb * self.minibatch + micro * self.cfg.batch_size
        idx = order[start:start + self.cfg.batch_size].to(self.setup.device)
        part = {k: v[idx] for k, v in self.data.items()}
        # trim columns that are padding in every row of this micro-batch
        width = int(part["attention_mask"].sum(0).nonzero().max()) + 1
        return {k: v[:, :width] if k in ("input_ids", "attention_mask", "labels") else v[:, :width - 1]
                if v.dim() == 2 else v for k, v in part.items()}


def make_step(cfg, rollouts: Rollouts, ptx=None):
    def step(model, batch):
        extra = move(ptx(), batch["input_ids"].device) if ptx is not None else None
        out = model(batch["input_ids"], batch["attention_mask"], batch["labels"], ptx=extra,
                    with_entropy=cfg.ent_coef > 0)   # no full-vocabulary entropy (or its graph) without a bonus
        logps, entropy, values, m = out["logps"], out["entropy"], out["values"], batch["mask"]
        old = batch["old_logps"] if "old_logps" in batch else logps.detach()
        if cfg.algo == "grpo":
            loss, metrics = grpo_step_loss(cfg, logps, old, batch, m)
        else:
            pg, clipped = policy_loss(logps, old, batch["advantages"], clip=cfg.clip_range)
            loss = (pg * m).sum()
            metrics = {"policy/loss": float(masked_mean(pg.detach(), m)),
                       "policy/clipfrac": float(masked_mean(clipped, m))}
        weight = count(cfg, batch)
        with torch.no_grad():
            metrics["policy/approx_kl"] = float(masked_mean(0.5 * (logps - old) ** 2, m))
        if entropy is not None:
            loss = loss - cfg.ent_coef * masked_mean(entropy, m) * weight
            metrics["policy/entropy"] = float(masked_mean(entropy.detach(), m))
        if values is not None:
            vl = value_loss(values, batch["old_values"], batch["returns"], clip=cfg.clip_range_value)
            loss = loss + cfg.vf_coef * (vl * m).sum()
            metrics["critic/loss"] = float(masked_mean(vl.detach(), m))
        if extra is not None:
            # γ·(mean LM loss on pretraining text), scaled so the loop's normalisation keeps γ
            loss = loss + cfg.ptx_coef * out["ptx_nll"] * weight
            metrics["ptx/nll"] = float(out["ptx_nll"].detach())
        metrics.update(rollouts.metrics())
        return loss, metrics
    return step


def grpo_step_loss(cfg, logps, old, batch, m):
    """TRL's GRPO loss of this micro-batch, times its weight (the loop divides by the step's summed weights)."""
    loss = grpo_loss(cfg.loss_type, logps, old, batch["advantages"], m, ref_logps=batch.get("ref_logps"),
                     beta=cfg.beta, epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high,
                     importance_sampling=cfg.importance_sampling, max_completion_length=cfg.max_new_tokens,
                     bias_corrected_kl=cfg.bias_corrected_kl)
    metrics = {"policy/loss": float(loss.detach())}
    with torch.no_grad():
        ratio = torch.exp(logps - old)
        adv = batch["advantages"].unsqueeze(1)
        low = (ratio < 1 - cfg.epsilon) & (adv < 0)
        high = (ratio > 1 + (cfg.epsilon_high or cfg.epsilon)) & (adv > 0)
        metrics.update({"clip_ratio/low_mean": float(masked_mean(low.float(), m)),
                        "clip_ratio/high_mean": float(masked_mean(high.float(), m)),
                        "clip_ratio/region_mean": float(masked_mean((low | high).float(), m))})
        metrics["policy/clipfrac"] = metrics["clip_ratio/region_mean"]
        if cfg.beta:
            metrics["kl"] = float(masked_mean(kl_estimate(logps, batch["ref_logps"], "k3"), m))
    return loss * grpo_loss_weight(cfg.loss_type, m), metrics


def count(cfg, batch) -> int:
    """What the loop averages a step's loss over: GRPO's unit for its loss_type, else completion tokens."""
    if cfg.algo == "grpo":
        return grpo_loss_weight(cfg.loss_type, batch["mask"])
    return int(batch["mask"].sum())


class PtxStream:
    """Cycles through a text dataset for the PPO-ptx language-model term."""

    def __init__(self, cfg, tokenizer, bad):
        from dataclasses import replace
        data_cfg = replace(cfg, data=cfg.ptx_data, eval_data=None, eval_fraction=0.0, columns={})
        examples = build_examples(data_cfg, tokenizer, ("text", "sft", "messages"), bad)[0]
        self.pairs = [(e["prompt_ids"], e["completion_ids"]) for e in examples]
        self.pad, self.n, self.pos, self.bs = tokenizer.pad_token_id, len(self.pairs), 0, cfg.ptx_batch_size

    def __call__(self):
        rows = [self.pairs[(self.pos + i) % self.n] for i in range(self.bs)]
        self.pos += self.bs
        return collate(rows, self.pad)


def run_state(rollouts: Rollouts, ptx: PtxStream | None):
    """What a checkpoint keeps of a PPO run besides weights: the KL coefficient, the reward
    normaliser, and where the PPO-ptx text stream is."""
    def get() -> dict:
        return {**rollouts.state(), "ptx_pos": ptx.pos if ptx else 0}

    def load(d: dict) -> None:
        rollouts.load_state(d)
        if ptx:
            ptx.pos = d.get("ptx_pos", 0)
    return get, load


@torch.no_grad()
def evaluate_policy(rollouts: Rollouts, prompts: list[dict]) -> dict:
    """Mean raw reward, KL(π‖π_ref) per completion (k1 sum; with a reference model), length and EOS share
    on held-out prompts, each process sampling its share."""
    means, setup = Means(), rollouts.setup
    for part, weights in shares(prompts, len(prompts), setup):
        batch, raw, ended, _, _ = rollouts.sample(part, 1)
        rows = batch["input_ids"], batch["attention_mask"], batch["labels"]
        mask = rows[2][:, 1:] != IGNORE
        kl = {}
        if rollouts.ref is not None:
            logps = rollouts.model(*rows, with_entropy=False)["logps"]
            kl["kl"] = ((logps - rollouts.ref(*rows).logps) * mask).sum(1).cpu()
        means.add(weights, reward=raw.cpu(), **kl, response_length=mask.sum(1).float().cpu(),
                  eos_share=ended.float().cpu())
    return means.result(setup.device)


def build_critic(setup, reward, tokenizer, inputs: Inputs):
    """PPO's separate critic, from --value_model, the reward model, or the policy (a caller's objects: a
    copy of the reward model or policy); it reads the policy's token ids, so its tokenizer must be the
    policy's."""
    cfg = setup.cfg
    if cfg.algo != "ppo" or cfg.critic == "shared":
        return None
    options = {**model_options(setup), "lora": None}
    if inputs.value_model is not None:
        source, option = inputs.value_model, "value_model"
    elif cfg.value_model:
        source, option = cfg.value_model, "value_model"
    elif isinstance(reward, RewardModel):
        source, option = reward.source, "reward"
    else:
        source, option = model_source(cfg, inputs), "model"
    if isinstance(source, torch.nn.Module):
        if option == "model":   # a causal LM object has no one-output head to start the critic from
            raise ValueError("ppo with a callable reward and a model object needs value_model= (a one-output "
                             "sequence classifier) or critic='shared'")
        source = copy.deepcopy(source).float().requires_grad_(True) if option == "reward" else source   # RM stays
    elif option != "model":
        require_same_tokenizer(tokenizer, source, option, trust_remote_code=cfg.trust_remote_code)
    critic = load_reward_model(source, pad_token_id=tokenizer.pad_token_id, **options)
    if not has_score_head(critic):
        raise ValueError(f"--{option}: an encoder classifier cannot be PPO's critic (it needs a value at every "
                         "token of a causal model); pass a decoder with --value_model, or --critic shared")
    return critic


def needs_reference(cfg) -> bool:
    """Whether any term uses π_ref: GRPO's KL loss (β > 0), or the KL penalty in PPO's and RLOO's reward."""
    return cfg.beta > 0 if cfg.algo == "grpo" else cfg.kl_coef > 0 or cfg.target_kl is not None


def load_ppo(setup, inputs: Inputs) -> Parts:
    """Paths or objects → the policy (with its critic), the frozen reference, the reward source and the
    prompts."""
    cfg = setup.cfg
    examples = tokenizer_and_data(setup, inputs, ("preference", "ranking", "messages", "unpaired", "sft", "prompt"))
    tokenizer = examples.tokenizer
    reward = inputs.reward if inputs.reward is not None else cfg.reward
    reward_fn = load_reward_source(reward, device=setup.device, dtype=cfg.dtype, batch_size=cfg.forward_batch_size,
                                   tokenizer=tokenizer)
    policy = load_causal_lm(model_source(cfg, inputs), **model_options(setup))
    critic = build_critic(setup, reward_fn, tokenizer, inputs)
    model = ActorCritic(policy, critic, shared_head=cfg.algo == "ppo" and cfg.critic == "shared").to(setup.device)
    disable_dropout(model)
    ref = None
    if needs_reference(cfg):
        ref = CausalLMScorer(reference_model(setup, policy, tokenizer, inputs, adapters_off=False)).eval()
        if cfg.fsdp:
            distributed.shard(ref)
    return Parts(policy, examples, {"actor_critic": model, "ref": ref, "reward_fn": reward_fn})


def build_ppo(setup, parts: Parts) -> Trainer:
    cfg, examples = setup.cfg, parts.examples
    model, ref, reward_fn = parts.extra["actor_critic"], parts.extra["ref"], parts.extra["reward_fn"]
    tokenizer, train = examples.tokenizer, examples.train
    rollouts = Rollouts(cfg, setup, tokenizer, train, model, ref, reward_fn)
    u = rollouts.updates_per_iteration
    if (cfg.max_steps or 0) % u or cfg.save_steps % u:
        cfg.save_steps = math.ceil(cfg.save_steps / u) * u
        if setup.rank == 0:
            print(f"ppo: {u} updates per iteration; the run and --save_steps ({cfg.save_steps}) end on whole "
                  "iterations")
    ptx = PtxStream(cfg, tokenizer, setup.bad) if cfg.ptx_coef else None
    eval_prompts = (examples.evals or train)[:cfg.eval_prompts]
    return Trainer(
        setup, model, rollouts, make_step(cfg, rollouts, ptx), lambda b: count(cfg, b), examples=examples,
        save=parts.model, evaluate=(lambda: evaluate_policy(rollouts, eval_prompts)) if eval_prompts else None,
        steps_per_epoch=len(train) / (cfg.rollout_batch_size * setup.world) * u, step_multiple=u,
        summary_extra={"algo": cfg.algo, "updates_per_iteration": u}, state=run_state(rollouts, ptx),
        final_summary=lambda: {"kl_coef_per_rank": distributed.all_gather(
            torch.tensor(rollouts.kl.value, dtype=torch.float64, device=setup.device)).tolist()})


def train_ppo(cfg, inputs: Inputs | None = None, on_log=None) -> Result:
    inputs = inputs or Inputs()
    if not cfg.reward and inputs.reward is None:
        raise ValueError("--reward is required: a reward-model folder or module:function")
    if cfg.algo in ("rloo", "grpo") and cfg.num_samples < 2:
        raise ValueError(f"--algo {cfg.algo} needs --num_samples ≥ 2 (a group per prompt)")
    if cfg.ptx_coef and not cfg.ptx_data:
        raise ValueError("--ptx_coef needs --ptx_data (a text dataset)")
    return run_recipe(cfg, load_ppo, build_ppo, inputs, on_log)


def run_ppo(cfg) -> dict:
    return train_ppo(cfg).summary
