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
