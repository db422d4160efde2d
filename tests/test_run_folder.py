"""Output folders that lose nothing: a folder holding a run is refused without --resume or
--overwrite; a lock keeps two runs apart; resume checks data and settings and falls back past an
unreadable checkpoint; final/ and summary.json appear whole or not at all."""
import json
import os
import subprocess
import sys

import pytest

from conftest import write_jsonl
from preftune.cli import main

ROWS = [{"prompt": f"Q{i}: what is {i} plus one?", "completion": f" It is {i + 1}."} for i in range(8)]


def sft(tiny_model, data, out, *extra):
    return ["sft", "--model", tiny_model, "--data", data, "--output_dir", str(out), "--batch_size", "2",
            "--progress", "false", "--lr", "1e-3", *extra]


def steps(out):
    return [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_folder_holding_a_run_needs_resume_or_overwrite(tiny_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    out = tmp_path / "run"
    assert main(sft(tiny_model, data, out, "--max_steps", "4", "--save_steps", "2")) == 0
    capsys.readouterr()
    assert main(sft(tiny_model, data, out, "--max_steps", "3")) == 2
    err = capsys.readouterr().err
    assert f"--output_dir {out} holds a run" in err and "--resume" in err and err.count("\n") == 1
    assert steps(out) == [1, 2, 3, 4]                       # nothing appended
    assert main(sft(tiny_model, data, out, "--max_steps", "3", "--overwrite")) == 0
    assert steps(out) == [1, 2, 3] and not (out / "checkpoints").exists()
    assert main(sft(tiny_model, data, out, "--max_steps", "3", "--overwrite", "--resume")) == 2
    assert "not both" in capsys.readouterr().err


def test_a_lock_keeps_two_runs_apart(tiny_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    out = tmp_path / "run"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(f"{sleeper.pid} {os.uname().nodename}")
        assert main(sft(tiny_model, data, out, "--max_steps", "2")) == 2
        assert f"is in use by another run (process {sleeper.pid}" in capsys.readouterr().err
    finally:
        sleeper.kill()
        sleeper.wait()
    assert main(sft(tiny_model, data, out, "--max_steps", "2")) == 0     # the lock of a dead run is taken over
    assert not (out / ".lock").exists()


def test_resume_without_checkpoint_starts_clean_and_checks_settings(tiny_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    out = tmp_path / "run"
    assert main(sft(tiny_model, data, out, "--max_steps", "3")) == 0
    (out / "summary.json").unlink()                           # as if killed before its end, no checkpoint
    assert main(sft(tiny_model, data, out, "--max_steps", "3", "--resume")) == 0
    assert steps(out) == [1, 2, 3]

    ck = tmp_path / "ck"
    constant = ["--lr_scheduler", "constant", "--save_steps", "2"]
    assert main(sft(tiny_model, data, ck, "--max_steps", "4", *constant)) == 0
    before = (ck / "summary.json").read_text(), (ck / "config.yaml").read_text()
    assert main(sft(tiny_model, data, ck, "--max_steps", "6", "--resume", "--lr", "5e-4", *constant)) == 2
    err = capsys.readouterr().err
    assert "was made with other settings: --lr 0.001 → 0.0005" in err
    other = write_jsonl(tmp_path / "other.jsonl", ROWS[::-1][:6])
    assert main(sft(tiny_model, other, ck, "--max_steps", "6", "--resume", *constant)) == 2
    assert "the training data (its tokenised rows differ)" in capsys.readouterr().err
    assert main(sft(tiny_model, str(tmp_path / "missing.jsonl"), ck, "--max_steps", "6", "--overwrite", *constant)) == 2
    assert ((ck / "summary.json").read_text(), (ck / "config.yaml").read_text()) == before   # refused: untouched
    assert main(sft(tiny_model, data, ck, "--max_steps", "6", "--resume", "--lr_scheduler", "constant",
                    "--save_steps", "3")) == 0                                  # a longer run, same schedule
    assert steps(ck) == list(range(1, 7)) and "resumed from" in capsys.readouterr().out

    cosine = tmp_path / "cosine"
    assert main(sft(tiny_model, data, cosine, "--max_steps", "4", "--save_steps", "2")) == 0
    assert main(sft(tiny_model, data, cosine, "--max_steps", "6", "--save_steps", "2", "--resume")) == 2
    assert "the run's length, 4 → 6 steps (its cosine learning-rate schedule" in capsys.readouterr().err
    plain = tmp_path / "plain"
    assert main(sft(tiny_model, data, plain, "--max_steps", "2")) == 0
    assert main(sft(tiny_model, data, plain, "--max_steps", "2", "--resume")) == 2
    assert "finished and kept no checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_falls_back_past_an_unreadable_checkpoint(tiny_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    full, broken = tmp_path / "full", tmp_path / "broken"
    args = ["--max_steps", "8", "--save_steps", "2", "--keep_checkpoints", "3"]
    assert main(sft(tiny_model, data, full, *args)) == 0
    assert main(sft(tiny_model, data, broken, *args)) == 0
    weights = broken / "checkpoints" / "step-8" / "model.safetensors"   # the last step's checkpoint
    weights.write_bytes(weights.read_bytes()[:100])
    capsys.readouterr()
    assert main(sft(tiny_model, data, broken, *args, "--resume")) == 0
    captured = capsys.readouterr()
    assert f"checkpoint {weights.parent} is unreadable" in captured.err and "step-6 (step 6)" in captured.out
    assert steps(broken) == list(range(1, 9))
    a, b = (json.loads((d / "metrics.jsonl").read_text().splitlines()[-1])["loss"] for d in (full, broken))
    assert a == pytest.approx(b, abs=1e-6)


def test_final_is_written_whole_or_not_at_all(tiny_model, tmp_path, monkeypatch, capsys):
    from transformers import PreTrainedTokenizerBase
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    out = tmp_path / "run"

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", crash)
    assert main(sft(tiny_model, data, out, "--max_steps", "2")) == 2
    assert "disk full" in capsys.readouterr().err
    assert not (out / "final").exists() and not (out / "summary.json").exists()   # the stage is not done
