"""`preftune ppo --algo grpo` with TRL's options: every loss type trains, no pass runs that no term needs
(and skipping it changes nothing), TRL's option names are accepted."""
import pytest
import torch

from conftest import corpus, write_jsonl

REWARD = "preftune.tasks.toy:great_share"


def rows():
    return [{"prompt": " ".join(t.split()[:2])} for t in corpus(40)]


def built(tiny_lm, **options):
    """The GRPO trainer as ``preftune.ppo`` builds it, before its first step."""
    from preftune.config import PPOConfig, build_config
    from preftune.recipes.common import Inputs
    from preftune.recipes.ppo import build_ppo, load_ppo
    from preftune.train.setup import start
    cfg = build_config(PPOConfig, {"model": tiny_lm, "reward": REWARD, "algo": "grpo", "num_samples": 4,
                                   "rollout_batch_size": 2, "batch_size": 8, "max_new_tokens": 8, "eval_prompts": 0,
                                   "progress": False, "output_dir": None, **options})
    setup = start(cfg)
    parts = load_ppo(setup, Inputs(data=rows()))
    return parts, build_ppo(setup, parts)


def loss_and_grads(trainer, batch):
    trainer.model.zero_grad(set_to_none=True)
    loss, _ = trainer.step_fn(trainer.model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_one_update_per_rollout_runs_no_old_policy_pass_and_beta_zero_no_reference(tiny_lm, beta, monkeypatch):
    from preftune.models import CausalLMScorer
    parts, trainer = built(tiny_lm, beta=beta)
    assert (parts.extra["ref"] is None) == (beta == 0)
    calls = []
    real = CausalLMScorer.forward
    monkeypatch.setattr(CausalLMScorer, "forward", lambda self, *a, **k: calls.append(self) or real(self, *a, **k))
    rollouts = trainer.batches
    batch = rollouts(0, 0)
    policy = parts.extra["actor_critic"].policy
    assert policy not in calls                       # scoring made no old-policy pass
    assert len(calls) == (1 if beta else 0)          # only the reference, when the loss has a KL term
    assert "old_logps" not in batch and ("ref_logps" in batch) == bool(beta)
    # exact: the update's own detached log-probs equal a separate old-policy pass's
    loss, grads = loss_and_grads(trainer, batch)
    old, _, _, _ = rollouts.score(batch, policy=True)
    loss2, grads2 = loss_and_grads(trainer, {**batch, "old_logps": old})
    torch.testing.assert_close(loss, loss2, rtol=1e-6, atol=1e-7)
    for name in grads:
        torch.testing.assert_close(grads[name], grads2[name], rtol=1e-5, atol=1e-7)


def test_several_updates_per_rollout_keep_the_old_policy_pass(tiny_lm):
    _, trainer = built(tiny_lm, num_iterations=2)
    assert trainer.batches.updates_per_iteration == 2 and "old_logps" in trainer.batches(0, 0)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo"])
def test_every_loss_type_trains(tiny_lm, loss_type):
    import preftune
    extra = {"cispo": {"epsilon_high": 5.0}, "luspo": {"importance_sampling": "sequence"}}.get(loss_type, {})
    result = preftune.ppo(tiny_lm, rows(), reward=REWARD, algo="grpo", loss_type=loss_type, num_generations=4,
                          rollout_batch_size=2, batch_size=8, max_steps=2, max_completion_length=8, eval_prompts=0,
                          progress=False, lr=1e-3, beta=0.02, **extra)
    last = result.metrics[-1]
    for key in ("loss", "frac_reward_zero_std", "clip_ratio/region_mean", "kl", "rollout/reward_mean"):
        assert key in last and torch.isfinite(torch.tensor(float(last[key]))), (key, last)
    assert last["step"] == 2


def test_masked_truncated_completions_leave_the_loss(tiny_lm):
    parts, trainer = built(tiny_lm, max_new_tokens=3, mask_truncated_completions=True)
    batch = trainer.batches(0, 0)
    ended = (batch["labels"] == parts.examples.tokenizer.eos_token_id).any(1)
    kept = batch["mask"].sum(1) > 0
    assert (kept == ended).all() and not ended.all()
    _, plain = built(tiny_lm, max_new_tokens=3)
    assert (plain.batches(0, 0)["mask"].sum(1) > 0).all()


def test_trl_option_names_and_what_cannot_be_right(tiny_lm, tmp_path, capsys):
    from preftune.cli import main
    from preftune.config import PPOConfig, build_config
    cfg = build_config(PPOConfig, {"num_generations": 6, "max_completion_length": 40})
    assert (cfg.num_samples, cfg.max_new_tokens) == (6, 40)
    with pytest.raises(ValueError, match="another name for --num_samples"):
        build_config(PPOConfig, {"num_generations": 6, "num_samples": 4})
    with pytest.raises(ValueError, match="cispo needs --epsilon_high"):
        PPOConfig(algo="grpo", loss_type="cispo")
    with pytest.raises(ValueError, match="luspo needs --importance_sampling sequence"):
        PPOConfig(algo="grpo", loss_type="luspo")
    with pytest.raises(ValueError, match="--loss_type must be one of"):
        PPOConfig(loss_type="ppo")
    with pytest.raises(ValueError, match="did you mean --importance_sampling"):
        build_config(PPOConfig, {"importance_sampling_level": "sequence"})
    data = write_jsonl(tmp_path / "p.jsonl", rows())
    assert main(["ppo", "--model", tiny_lm, "--data", data, "--reward", REWARD, "--algo", "grpo",
                 "--num_generations", "4", "--rollout_batch_size", "2", "--batch_size", "8",
                 "--max_completion_length", "6", "--max_steps", "1", "--output_dir", str(tmp_path / "r"),
                 "--progress", "false", "--eval_prompts", "0"]) == 0
    import yaml
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert (saved["num_samples"], saved["max_new_tokens"], saved["loss_type"], saved["beta"]) == (4, 6, "dapo", 0.0)
