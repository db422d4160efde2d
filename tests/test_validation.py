"""Inputs that cannot be right are refused with the option, file, row or field named; values are
typed from their fields; a run that made no optimizer update fails."""
import json

import pytest
import torch
import yaml

from conftest import write_jsonl
from preftune.cli import build_parser, main
from preftune.config import PREFERENCE_LOSS_NAMES, DPOConfig, SFTConfig, build_config
from preftune.data import DataError, load_rows

PAIR = {"prompt": "the film", "chosen": " was great fun.", "rejected": " was a dull boring mess."}


def run(capsys, *argv):
    """(exit code, stderr) of ``preftune argv``."""
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_yaml_values_are_typed_from_their_fields(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 5e-7\nprogress: \"false\"\nmax_steps: \"12\"\nbeta: 1\nlora_target_modules: q_proj,v_proj\n")
    assert yaml.safe_load(path.read_text())["lr"] == "5e-7"          # PyYAML reads it as a string
    cfg = build_config(DPOConfig, {"config": str(path), "eval_fraction": "0.25"})
    assert (cfg.lr, cfg.progress, cfg.max_steps, cfg.beta, cfg.eval_fraction) == (5e-7, False, 12, 1.0, 0.25)
    assert isinstance(cfg.beta, float) and cfg.lora_target_modules == ["q_proj", "v_proj"]
    assert SFTConfig(lr="1e-5", resume="true").lr == 1e-5
    for bad, message in (({"lr": "fast"}, "--lr: expected a number"), ({"progress": "maybe"}, "expected true or false"),
                         ({"max_steps": "2.5"}, "--max_steps: expected an integer")):
        with pytest.raises(ValueError, match=message):
            build_config(DPOConfig, bad)


def test_bare_boolean_flags_mean_true():
    parser = build_parser()
    cfg = build_config(DPOConfig, parser.parse_args(["dpo", "--resume", "--packing", "--progress", "false"]))
    assert cfg.resume is True and cfg.packing is True and cfg.progress is False
    from preftune.tasks.demo import DemoConfig
    assert build_config(DemoConfig, parser.parse_args(["demo", "--quick"])).quick is True


def test_loss_names_are_the_losses():
    from preftune.losses.preference import PREFERENCE_LOSSES
    assert set(PREFERENCE_LOSS_NAMES) == set(PREFERENCE_LOSSES)


@pytest.mark.parametrize("argv,option", [
    (["--beta", "-0.1"], "--beta"), (["--beta", "0"], "--beta"), (["--loss", "ipo", "--beta", "0"], "--beta"),
    (["--grad_accum", "0"], "--grad_accum"), (["--batch_size", "0"], "--batch_size"),
    (["--eval_fraction", "1"], "--eval_fraction"), (["--eval_fraction", "-0.1"], "--eval_fraction"),
    (["--loss", "robust", "--label_smoothing", "0.5"], "--label_smoothing"),
    (["--label_smoothing", "0.7"], "--label_smoothing"), (["--lr", "0"], "--lr"), (["--loss", "nope"], "--loss"),
    (["--seed", "-1"], "--seed"), (["--adam_betas", "[1.5, 0.9]"], "--adam_betas"),
])
def test_values_that_cannot_be_right_are_refused(argv, option, tmp_path, capsys):
    code, err = run(capsys, "dpo", "--model", "unused", "--data", str(tmp_path / "x.jsonl"),
                    "--output_dir", str(tmp_path / "run"), *argv)
    assert code == 2 and err.startswith(f"preftune dpo: error: {option}") and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()          # refused before anything ran


def test_margins_all_or_none_and_finite(tiny_model, tmp_path, capsys):
    rows = [dict(PAIR, margin=2.0), dict(PAIR, margin=0.5), dict(PAIR), dict(PAIR, margin=1.0)]
    data = write_jsonl(tmp_path / "m.jsonl", rows)
    common = ["--model", tiny_model, "--max_steps", "1", "--batch_size", "2", "--progress", "false"]
    args = common + ["--data", data]
    code, err = run(capsys, "rm", *args, "--output_dir", str(tmp_path / "a"))
    assert code == 2 and "m.jsonl, line 3, field 'margin': missing, while 3 of 4 rows have one" in err
    assert run(capsys, "rm", *args, "--output_dir", str(tmp_path / "b"), "--on_bad_row", "skip")[0] == 0
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["skipped_by_reason"] == {"missing_column": 1} and summary["train_examples"] == 3
    assert run(capsys, "rm", *args, "--output_dir", str(tmp_path / "c"), "--use_margin", "false")[0] == 0
    assert run(capsys, "dpo", *args, "--output_dir", str(tmp_path / "d"))[0] == 0     # DPO reads no margin
    for value in ("NaN", "Infinity"):
        path = tmp_path / f"{value}.jsonl"
        path.write_text(json.dumps(dict(PAIR, margin=1.0)) + "\n" + json.dumps(PAIR)[:-1] + f', "margin": {value}}}\n')
        code, err = run(capsys, "rm", *common, "--data", str(path), "--output_dir", str(tmp_path / value))
        assert code == 2 and "line 2, field 'margin': expected a finite number" in err
    ranking = tmp_path / "rank.jsonl"
    ranking.write_text('{"prompt": "p", "completions": ["a", "b"], "scores": [1.0, NaN]}\n')
    code, err = run(capsys, "rm", *common, "--data", str(ranking), "--output_dir", str(tmp_path / "r"))
    assert code == 2 and "field 'scores[1]': expected a finite number" in err


def test_pairwise_margin_is_per_row():
    """With a margin on every row, a row's loss does not depend on its batch neighbours."""
    from preftune.recipes.reward import collate_groups, group_losses
    items = [{"prompt_ids": [1], "completions": [[5], [6]], "ranking": [0, 1], "margin": m} for m in (4.0, 0.0)]
    rewards = torch.tensor([1.0, 0.5, 1.0, 0.5])
    both = group_losses(rewards, collate_groups(items, 0), "pairs", True)[0]
    alone = group_losses(rewards[:2], collate_groups(items[:1], 0), "pairs", True)[0]
    assert both[0] == pytest.approx(float(alone[0])) and both[0] == pytest.approx(-torch.nn.functional.logsigmoid(
        torch.tensor(0.5 - 4.0)).item())


def test_folder_sources_never_mix_splits(tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_jsonl(mixed / "data.jsonl", [{"text": "a"}])
    write_jsonl(mixed / "test.jsonl", [{"text": "z"}])
    with pytest.raises(DataError, match=r"2 data files \(data.jsonl, test.jsonl\) and none named for the 'train'"):
        load_rows(str(mixed))
    assert [r.data["text"] for r in load_rows(str(mixed), split="test")] == ["z"]
    single = tmp_path / "single"
    single.mkdir()
    write_jsonl(single / "prefs.jsonl", [{"text": "a"}])
    assert len(load_rows(str(single))) == 1
    hub_like = tmp_path / "hub"
    (hub_like / "data").mkdir(parents=True)
    write_jsonl(hub_like / "data" / "train-00000-of-00001.jsonl", [{"text": "a"}])
    write_jsonl(hub_like / "data" / "test-00000-of-00001.jsonl", [{"text": "b"}])
    write_jsonl(hub_like / "latest.jsonl", [{"text": "not a test split"}])
    assert [r.data["text"] for r in load_rows(str(hub_like))] == ["a"]
    assert [r.data["text"] for r in load_rows(str(hub_like), split=("test", "validation"))] == ["b"]


def test_eval_data_from_a_folder_is_its_test_split_and_never_training_rows(tiny_model, tmp_path, capsys):
    folder = tmp_path / "prefs"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [PAIR] * 6)
    write_jsonl(folder / "validation.jsonl", [PAIR] * 2)
    args = ["--model", tiny_model, "--max_steps", "1", "--batch_size", "2", "--progress", "false"]
    assert run(capsys, "dpo", *args, "--data", str(folder), "--eval_data", str(folder),
               "--output_dir", str(tmp_path / "a"))[0] == 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert (summary["train_examples"], summary["eval_examples"]) == (6, 2)
    (tmp_path / "link.jsonl").symlink_to(folder / "train.jsonl")
    for same in (folder / "train.jsonl", tmp_path / "link.jsonl"):      # the same file by another path too
        code, err = run(capsys, "dpo", *args, "--data", str(folder / "train.jsonl"), "--eval_data", str(same),
                        "--output_dir", str(tmp_path / "b"))
        assert code == 2 and "--eval_data reads training file(s) of --data" in err
    code, err = run(capsys, "dpo", *args, "--data", str(folder / "train.jsonl"), "--eval_fraction", "0.99",
                    "--output_dir", str(tmp_path / "c"))
    assert code == 2 and "all 6 usable rows went to evaluation (--eval_fraction 0.99)" in err


def test_model_folders_are_named_plainly(tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [PAIR] * 2)
    (tmp_path / "notamodel").mkdir()
    for model, message in ((tmp_path / "notamodel", "not a model folder (no config.json)"),
                           (tmp_path / "nothing", "no such model folder")):
        code, err = run(capsys, "dpo", "--model", str(model), "--data", data, "--output_dir", str(tmp_path / "r"))
        assert code == 2 and message in err
    code, err = run(capsys, "dpo", "--model", str(tmp_path / "notamodel"), "--data", data,
                    "--output_dir", str(tmp_path / "r2"))
    assert not (tmp_path / "r2" / "config.yaml").exists()      # nothing of a run is written before training


def test_reference_with_another_tokenizer_is_refused(tiny_model, tmp_path, capsys):
    from preftune.models.tiny import build_tiny
    other = build_tiny(tmp_path / "other", ["completely different words here"] * 30, vocab_size=300, hidden=32,
                       layers=1, heads=2)
    data = write_jsonl(tmp_path / "p.jsonl", [PAIR] * 4)
    code, err = run(capsys, "dpo", "--model", tiny_model, "--ref_model", str(other), "--data", data,
                    "--output_dir", str(tmp_path / "run"), "--max_steps", "1", "--progress", "false")
    assert code == 2 and f"--ref_model {other}: its tokenizer differs from --model's" in err


@pytest.mark.parametrize("steps", [1, 3])
def test_a_run_without_any_optimizer_update_fails(tiny_model, tmp_path, monkeypatch, capsys, steps):
    """Every step non-finite with max_steps < max_bad_steps: no update was made, so no final/ and a
    non-zero exit."""
    from preftune.recipes import sft
    real = sft.sft_step
    monkeypatch.setattr(sft, "sft_step", lambda model, batch: (real(model, batch)[0] * float("nan"), {}))
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "completion": " b"}] * 4)
    out = tmp_path / "run"
    code, err = run(capsys, "sft", "--model", tiny_model, "--data", data, "--output_dir", str(out),
                    "--max_steps", str(steps), "--batch_size", "2", "--progress", "false")
    assert code == 2 and f"no optimizer update in {steps} steps" in err
    assert not (out / "final").exists()


def test_dropout_is_disabled_for_preference_training():
    from transformers import GPT2Config, GPT2LMHeadModel, OPTConfig, OPTForCausalLM
    from preftune.models.load import disable_dropout
    torch.manual_seed(0)
    ids = torch.randint(0, 100, (2, 12))
    for model in (GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, attn_pdrop=0.5)),
                  OPTForCausalLM(OPTConfig(vocab_size=100, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                           num_attention_heads=4, word_embed_proj_dim=32, attention_dropout=0.5,
                                           layerdrop=0.5))):
        disable_dropout(model)
        model.train()
        a, b = model(input_ids=ids).logits, model(input_ids=ids).logits
        torch.testing.assert_close(a, b, atol=0, rtol=0)
        torch.testing.assert_close(a, model.eval()(input_ids=ids).logits, atol=1e-6, rtol=1e-6)


def test_epochs_instead_of_max_steps(tiny_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "completion": " b"}] * 10)
    args = ["sft", "--model", tiny_model, "--data", data, "--batch_size", "2", "--grad_accum", "2", "--progress",
            "false"]
    assert main([*args, "--output_dir", str(tmp_path / "a"), "--epochs", "1.5"]) == 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["epochs"] == pytest.approx(1.6)     # ⌈1.5 · 10 / 4⌉ = 4 steps
    code, err = run(capsys, *args, "--output_dir", str(tmp_path / "b"), "--epochs", "1", "--max_steps", "3")
    assert code == 2 and "give --max_steps or --epochs, not both" in err
