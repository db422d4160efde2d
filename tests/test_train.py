"""The loop's pieces: LR schedule, data stream, checkpoints, the non-finite guard."""
import math

import pytest
import torch

from preftune.train import checkpoint
from preftune.train.loop import ExampleStream, lr_schedule


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_lr_schedule_matches_transformers(kind):
    from transformers import get_scheduler
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = get_scheduler(kind, opt, num_warmup_steps=5, num_training_steps=40)
    ours = lr_schedule(kind, 5, 40)
    for step in range(40):
        assert ours(step) == pytest.approx(sched.get_last_lr()[0], abs=1e-12)
        opt.step()
        sched.step()
    assert lr_schedule("constant", 3, 10)(1) == pytest.approx(1 / 3) and lr_schedule("constant", 3, 10)(9) == 1.0


def test_stream_is_a_function_of_step_and_splits_ranks():
    data = list(range(10))
    one = ExampleStream(data, list, 4, 1, seed=3)
    r0 = ExampleStream(data, list, 2, 1, seed=3, rank=0, world=2)
    r1 = ExampleStream(data, list, 2, 1, seed=3, rank=1, world=2)
    for step in range(6):
        assert sorted(one(step, 0)) == sorted(r0(step, 0) + r1(step, 0))
    first_epoch = [x for s in range(5) for x in ExampleStream(data, list, 2, 1, seed=3)(s, 0)]
    assert sorted(first_epoch) == data                       # each epoch is a permutation
    assert ExampleStream(data, list, 4, 1, seed=3)(4, 0) == one(4, 0)


def test_checkpoint_is_atomic_and_keeps_last_k(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    for step in (10, 20, 30):
        checkpoint.save(tmp_path, step, model, opt, sched, {"bad_steps": 0}, keep=2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step-20", "step-30"]
    (tmp_path / ".tmp-step-40").mkdir()                     # a write killed half-way is never listed
    assert checkpoint.list_checkpoints(tmp_path)[-1].name == "step-30"
    other = torch.nn.Linear(3, 2)
    state = checkpoint.load(tmp_path / "step-30", other, torch.optim.AdamW(other.parameters()), sched)
    assert state["step"] == 30 and torch.equal(other.weight, model.weight)


def test_non_finite_losses_are_skipped_then_abort(tiny_model, tmp_path):
    """A step given to the Trainer (its ``step_fn``, the seam) returns non-finite losses: skipped, then abort."""
    from preftune.config import SFTConfig
    from preftune.recipes import sft
    from preftune.recipes.common import Inputs
    from preftune.train import TrainingError
    from preftune.train.setup import start

    rows = [{"prompt": "a", "completion": " b"}] * 4
    calls = {"n": 0}

    def flaky(model, batch):
        calls["n"] += 1
        loss, m = sft.sft_step(model, batch)
        return (loss * math.nan if calls["n"] in (2, 3) else loss), m

    def trainer(step_fn, out):
        cfg = SFTConfig(model=tiny_model, output_dir=str(tmp_path / out), max_steps=6, batch_size=2, progress=False,
                        max_bad_steps=3)
        setup = start(cfg)
        t = sft.build_sft(setup, sft.load_sft(setup, Inputs(data=rows)))
        t.step_fn = step_fn
        return t

    summary = trainer(flaky, "r").fit()
    assert summary["skipped_steps"] == 2
    with pytest.raises(TrainingError, match="not finite for 3 steps"):
        trainer(lambda m, b: (sft.sft_step(m, b)[0] * math.inf, {}), "r2").fit()


def test_packed_batches_equal_padded(tiny_model):
    """Packing changes the layout, not the numbers: per-sequence log-probs, token counts and reward
    scores equal those of the right-padded batch."""
    from preftune.data import collate, pack, real_tokens
    from preftune.models import (CausalLMScorer, RewardScorer, lm_inputs, load_causal_lm, load_reward_model,
                                 per_sequence, rm_inputs)
    torch.manual_seed(0)
    seqs = [([1] + torch.randint(3, 500, (int(n),)).tolist(), torch.randint(3, 500, (int(m),)).tolist() + [2])
            for n, m in zip(torch.randint(1, 30, (9,)), torch.randint(1, 60, (9,)))]
    padded, packed = collate(seqs, 0), pack(seqs, 0)
    assert packed["input_ids"].shape[0] == 1
    assert real_tokens(padded) == real_tokens(packed) == sum(len(p) + len(c) for p, c in seqs)
    scorer = CausalLMScorer(load_causal_lm(tiny_model, trainable=False))
    a, b = scorer(**lm_inputs(padded)), scorer(**lm_inputs(packed))
    (lp_a, m_a), (lp_b, m_b) = (a.logps, a.mask), (b.logps, b.mask)
    torch.testing.assert_close(per_sequence(lp_a, padded), per_sequence(lp_b, packed), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(per_sequence(m_a.float(), padded), per_sequence(m_b.float(), packed))
    rm = RewardScorer(load_reward_model(tiny_model, trainable=False, pad_token_id=0))
    torch.testing.assert_close(rm(**rm_inputs(padded)), rm(**rm_inputs(packed)), atol=1e-5, rtol=1e-5)


def test_scorer_logps_equal_log_softmax_of_the_logits(tiny_model):
    """Per-token log-probs (LM head on labelled positions only, chunked cross-entropy) equal
    log_softmax of the full model's logits at the labels, in float64; chunk boundaries change nothing."""
    from transformers import AutoModelForCausalLM
    from preftune.data import collate
    from preftune.models import CausalLMScorer, lm_inputs, token_logps
    torch.manual_seed(0)
    seqs = [([1] + torch.randint(3, 500, (int(n),)).tolist(), torch.randint(3, 500, (int(m),)).tolist() + [2])
            for n, m in zip(torch.randint(1, 20, (5,)), torch.randint(1, 30, (5,)))]
    batch = collate(seqs, 0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float64)
    out = CausalLMScorer(model)(**lm_inputs(batch))
    logps, mask = out.logps, out.mask
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets = batch["labels"][:, 1:]
    ref = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1) * mask
    torch.testing.assert_close(logps.double(), ref, atol=1e-6, rtol=1e-6)   # the scorer returns float32
    x, t = torch.randn(700, 50, dtype=torch.float64), torch.randint(0, 50, (700,))
    full = torch.log_softmax(x, -1).gather(-1, t[:, None]).squeeze(-1)
    for chunk in (1, 64, 256, 1000):
        torch.testing.assert_close(token_logps(x, t, chunk).double(), full, atol=1e-6, rtol=1e-6)
