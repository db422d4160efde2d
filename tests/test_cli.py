"""Config files, flag overrides, --help, and the installed entry points."""
import subprocess
import sys

import pytest
import yaml

from conftest import write_jsonl
from preftune.cli import build_parser, main
from preftune.config import DPOConfig, SFTConfig, build_config
from preftune.data import load_rows


def test_yaml_then_flags_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"lr": 0.01, "max_steps": 7, "columns": {"q": "prompt"}, "loss": "ipo"}))
    args = build_parser().parse_args(["dpo", "--config", str(path), "--max_steps", "9", "--ref", "none",
                                      "--adam_betas", "[0.8, 0.9]", "--resume", "true"])
    cfg = build_config(DPOConfig, args)
    assert (cfg.lr, cfg.max_steps, cfg.loss, cfg.ref, cfg.resume) == (0.01, 9, "ipo", "none", True)
    assert cfg.columns == {"q": "prompt"} and cfg.adam_betas == [0.8, 0.9]
    with pytest.raises(ValueError, match="unknown config key"):
        build_config(SFTConfig, {"lr": 1.0, "not_a_key": 1})
    with pytest.raises(ValueError, match="must be one of"):
        build_config(SFTConfig, {"on_bad_row": "ignore"})


def test_help_lists_every_option_with_default(capsys):
    with pytest.raises(SystemExit):
        main(["dpo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for key in ("--model", "--data", "--output_dir", "--max_steps", "--batch_size", "--grad_accum", "--lr",
                "--max_length", "--seed", "--save_steps", "--resume", "--on_bad_row", "--dtype", "--loss", "--beta",
                "--ref"):
        assert key in text
    assert "(default: 0.1; > 0)" in text and "(default: \"sigmoid\"; one of sigmoid, ipo, hinge" in text


def test_config_yaml_saved_with_run(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "the film was great fun."}] * 4)
    out = tmp_path / "run"
    assert main(["sft", "--model", tiny_model, "--data", data, "--output_dir", str(out), "--max_steps", "2",
                 "--batch_size", "2", "--progress", "false"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["max_steps"] == 2 and saved["model"] == tiny_model


def test_folder_of_files_is_one_dataset(tmp_path):
    write_jsonl(tmp_path / "train-00.jsonl", [{"text": "a"}, {"text": "b"}])
    write_jsonl(tmp_path / "train-01.jsonl", [{"text": "c"}])
    write_jsonl(tmp_path / "test.jsonl", [{"text": "z"}])
    assert [r.data["text"] for r in load_rows(str(tmp_path))] == ["a", "b", "c"]
    assert [r.data["text"] for r in load_rows(str(tmp_path), split="test")] == ["z"]


def test_console_script_and_module_entry_points():
    out = subprocess.run([sys.executable, "-m", "preftune", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "demo" in out.stdout and "dpo" in out.stdout


def test_trl_style_keys_get_ours_suggested(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["dpo", "--learning_rate", "1e-5", "--per_device_train_batch_size", "4"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "4 (did you mean --lr?) (did you mean --batch_size?)" in err
    path = tmp_path / "trl.yaml"
    path.write_text("num_train_epochs: 2\ngradient_accumulation_steps: 4\nbf16: true\nbetaa: 0.2\n")
    assert main(["dpo", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    for hint in ("num_train_epochs (did you mean epochs?)", "gradient_accumulation_steps (did you mean grad_accum?)",
                 "bf16 (did you mean dtype: bfloat16?)", "betaa (did you mean beta?)"):   # YAML keys, YAML answers
        assert hint in err


def test_every_error_is_one_line_unless_debug(tmp_path, monkeypatch, capsys):
    import preftune.cli as cli
    real = cli._commands

    def broken():
        commands = real()
        cls, _, text = commands["sft"]
        commands["sft"] = (cls, lambda cfg: {}["no such key"], text)
        return commands

    monkeypatch.setattr(cli, "_commands", broken)
    assert main(["sft", "--model", "m"]) == 2
    err = capsys.readouterr().err
    assert err == "preftune sft: error: KeyError: 'no such key' (run with --debug for the traceback)\n"
    with pytest.raises(KeyError):
        main(["sft", "--model", "m", "--debug"])


def test_truncation_is_counted_and_a_long_prompt_limit_clamped(tiny_model, tmp_path, capsys):
    import json
    rows = [{"prompt": "the film " * 30, "completion": " was great fun and the cast was superb."}] * 3 + \
        [{"prompt": "the film", "completion": " was great."}]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "run"
    assert main(["sft", "--model", tiny_model, "--data", data, "--output_dir", str(out), "--max_steps", "1",
                 "--max_length", "40", "--progress", "false"]) == 0
    assert "--max_prompt_length 256 ≥ --max_length 40: prompts are cut to 20 tokens" in capsys.readouterr().out
    truncated = json.loads((out / "summary.json").read_text())["truncated"]
    assert truncated["prompt_rows"] == 3 and truncated["prompt_tokens"] > 3 * 20
    assert truncated["completion_rows"] == 0
