"""Faults that lost or corrupted a run before (issue 28), each reproduced as a user would meet it."""
import json
import math
import shutil

from conftest import corpus, write_jsonl
from preftune.cli import main
from test_preference import pairs


def sft_args(model, data, out, *extra):
    return ["sft", "--model", str(model), "--data", data, "--output_dir", str(out), "--max_steps", "2",
            "--batch_size", "4", "--max_length", "24", "--progress", "false", *extra]


def dpo_args(model, data, out, *extra):
    return ["dpo", "--model", str(model), "--data", data, "--output_dir", str(out), "--max_steps", "1",
            "--batch_size", "4", "--max_length", "48", "--progress", "false", "--report_to", "none", *extra]


def first_loss(out):
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["loss"]


def test_overwrite_never_deletes_the_input_model(tiny_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in corpus(20)])
    run = tmp_path / "R"
    assert main(sft_args(tiny_model, data, run)) == 0
    for out in (run, run / "final" / "again"):
        assert main(sft_args(run / "final", data, out, "--overwrite", "true")) == 2
        assert "must not write where it reads" in capsys.readouterr().err
    assert (run / "final" / "config.json").exists()
    assert main(sft_args(tiny_model, write_jsonl(run / "final" / "d.jsonl", [{"text": "a b"}] * 8),
                         run, "--overwrite", "true")) == 2   # data inside an artefact the overwrite removes


def test_reference_cache_follows_the_weights_not_the_path(tiny_model, tiny_lm, tmp_path):
    """A model replaced at the same path trains against its own reference (step-1 DPO loss ln 2: policy =
    reference), and a damaged cache is computed again."""
    data = write_jsonl(tmp_path / "p.jsonl", pairs(16))
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    out = tmp_path / "run"
    assert main(dpo_args(model, data, out, "--ref", "precomputed")) == 0
    assert math.isclose(first_loss(out), math.log(2), rel_tol=1e-5)
    shutil.rmtree(model)
    shutil.copytree(tiny_lm, model)
    assert main(dpo_args(model, data, out, "--ref", "precomputed", "--overwrite", "true")) == 0
    assert math.isclose(first_loss(out), math.log(2), rel_tol=1e-5)
    cache = out / "ref_logps_train.safetensors"
    cache.write_bytes(cache.read_bytes()[:40])
    assert main(dpo_args(model, data, out, "--ref", "precomputed", "--overwrite", "true")) == 0
    assert math.isclose(first_loss(out), math.log(2), rel_tol=1e-5)


def test_sft_on_chosen_phase_is_trained_again_on_overwrite(tiny_model, tmp_path):
    out = tmp_path / "run"
    for n in (12, 20):
        data = write_jsonl(tmp_path / f"p{n}.jsonl", pairs(n, seed=n))
        assert main(dpo_args(tiny_model, data, out, "--sft_on_chosen", "true", "--sft_steps", "1",
                             "--overwrite", "true")) == 0
        assert json.loads((out / "sft" / "summary.json").read_text())["train_examples"] == n


def checkpointed_run(tiny_model, tmp_path, steps):
    data = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in corpus(40)])
    out = tmp_path / "run"
    args = sft_args(tiny_model, data, out, "--save_steps", "2", "--keep_checkpoints", "3", "--lr_scheduler", "constant",
                    "--max_steps", str(steps))
    return args, out


def resume_from(args, capsys):
    """Resume the run; (exit code, captured output)."""
    code = main([*args, "--resume", "true"])
    return code, capsys.readouterr()


def test_damaged_checkpoint_is_named_and_the_one_before_used(tiny_model, tmp_path, capsys):
    args, out = checkpointed_run(tiny_model, tmp_path, 4)
    assert main(args) == 0
    state = out / "checkpoints" / "step-4" / "trainer_state.pt"
    raw = bytearray(state.read_bytes())
    raw[len(raw) // 2:len(raw) // 2 + 64] = bytes(64)            # 64 flipped bytes
    state.write_bytes(bytes(raw))
    capsys.readouterr()
    code, seen = resume_from(args, capsys)
    assert code == 0
    assert "step-4" in seen.err and "checksum" in seen.err and "resumed from" in seen.out and "step-2" in seen.out


def test_checkpoint_missing_a_tensor_is_refused(tiny_model, tmp_path, capsys):
    from safetensors.torch import load_file, save_file
    args, out = checkpointed_run(tiny_model, tmp_path, 4)
    assert main(args) == 0
    weights_file = out / "checkpoints" / "step-4" / "model.safetensors"
    weights = load_file(weights_file)
    weights.pop(sorted(weights)[0])
    save_file(weights, weights_file)
    capsys.readouterr()
    code, seen = resume_from(args, capsys)
    assert code == 0 and "step-4" in seen.err and "step-2" in seen.out


def test_non_finite_weights_never_reach_final(tiny_model, tmp_path):
    import pytest
    import torch
    from transformers import AutoModelForCausalLM
    import preftune
    from preftune.train import TrainingError
    model = AutoModelForCausalLM.from_pretrained(tiny_model)

    def poison(record):
        if record["step"] == 2:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingError, match="not finite.*final/ was not written"):
        preftune.sft(model, [{"text": t} for t in corpus(20)], output_dir=str(tmp_path / "r"), max_steps=2,
                     batch_size=4, max_length=24, progress=False, report_to=["none"], on_log=poison)
    assert not (tmp_path / "r" / "final").exists()


def test_skipped_steps_are_said_as_they_happen(tiny_model, tmp_path, capsys):
    from test_train import test_non_finite_losses_are_skipped_then_abort
    test_non_finite_losses_are_skipped_then_abort(tiny_model, tmp_path)
    err = capsys.readouterr().err
    assert "step 2: loss or gradient not finite, update skipped (1 in a row, 1 in this run" in err


def test_resume_drops_a_half_written_last_metrics_line(tiny_model, tmp_path, capsys):
    args, out = checkpointed_run(tiny_model, tmp_path, 4)
    assert main(args) == 0
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')
    (out / "summary.json").unlink()                     # as a run killed after step 4 leaves it
    code, seen = resume_from([*args[:-1], "6"], capsys)
    assert code == 0 and "dropped the half-written last line" in seen.out, seen.err
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_a_full_disk_mid_checkpoint_is_named_and_leaves_nothing(tiny_model, tmp_path, capsys, monkeypatch):
    from preftune.train import checkpoint
    args, out = checkpointed_run(tiny_model, tmp_path, 4)
    real = checkpoint.torch.save

    def full(obj, path, *a, **k):
        real(obj, path, *a, **k)
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0 | "
                           "PytorchStreamWriter failed writing file data/3: file write failed")
    monkeypatch.setattr(checkpoint.torch, "save", full)
    assert main(args) == 2
    err = capsys.readouterr().err
    [line] = [line for line in err.splitlines() if "error:" in line]
    assert f"error: no space left on {out / 'checkpoints'} for checkpoint step-2 (it was not written" in line
    assert not list((out / "checkpoints").glob(".tmp-*"))


def test_a_finished_runs_summary_survives_another_resume(tiny_model, tmp_path, capsys):
    args, out = checkpointed_run(tiny_model, tmp_path, 4)
    assert main(args) == 0
    before = (out / "summary.json").read_bytes()
    code, seen = resume_from(args, capsys)
    assert code == 0 and "already finished at step 4" in seen.out
    assert (out / "summary.json").read_bytes() == before


def test_resume_takes_the_same_model_by_another_path(tiny_model, tmp_path, monkeypatch, capsys):
    import os
    args, out = checkpointed_run(tiny_model, tmp_path, 4)
    assert main([*args[:-1], "2"]) == 0
    monkeypatch.chdir(tmp_path)
    relative = os.path.relpath(tiny_model, tmp_path)
    code, seen = resume_from([relative if a == str(tiny_model) else a for a in args], capsys)
    assert code == 0, seen.err
