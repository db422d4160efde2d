"""Schema detection, rendering, masking, truncation and every bad-input case (error and skip)."""
import json

import pytest

from conftest import write_jsonl
from preftune.cli import main
from preftune.data import BadRows, DataError, Encoder, Row, collate, detect_kind, load_rows, validate
from preftune.models import load_tokenizer


def rows_of(*dicts):
    return [Row("mem", i + 1, d) for i, d in enumerate(dicts)]


@pytest.mark.parametrize("row,expect,kind", [
    ({"text": "hello"}, ("text", "sft"), "text"),
    ({"prompt": "a", "completion": "b"}, ("sft", "text"), "sft"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, ("messages",),
     "messages"),
    ({"prompt": "a", "chosen": "b", "rejected": "c"}, ("preference", "ranking"), "preference"),
    ({"prompt": "a", "completions": ["b", "c"], "ranking": [1, 0]}, ("preference", "ranking"), "ranking"),
    ({"prompt": "a"}, ("prompt",), "prompt"),
])
def test_detect_kind(row, expect, kind):
    assert detect_kind(rows_of(row), "mem", expect) == kind


def test_detect_kind_names_missing_columns():
    with pytest.raises(DataError, match="missing required column.*chosen\\+rejected"):
        detect_kind(rows_of({"prompt": "a", "chosen": "b"}), "f.jsonl", ("preference",))


def test_conversational_and_implicit_prompt(tiny_model):
    tok = load_tokenizer(tiny_model)
    user = {"role": "user", "content": "Hi there"}
    chosen = [user, {"role": "assistant", "content": "Hello!"}]
    rejected = [user, {"role": "assistant", "content": "Go away."}]
    ex = validate(Row("m", 1, {"chosen": chosen, "rejected": rejected}), "preference")
    assert ex["prompt"] == [user] and ex["chosen"] == chosen[1:]
    enc = Encoder(tok, 64, 32).encode(Row("m", 1, {}), ex)
    assert enc["prompt_text"].endswith("<|assistant|>\n")
    assert tok.decode(enc["chosen_ids"], skip_special_tokens=True).strip() == "Hello!"
    # the template's own end of turn ("</s>\n") ends the completion; nothing is appended
    assert enc["prompt_ids"] + enc["chosen_ids"] == tok.apply_chat_template(chosen, tokenize=True, return_dict=False)
    assert tok.eos_token_id in enc["chosen_ids"][-2:]


def test_ranking_from_scores():
    ex = validate(Row("m", 1, {"prompt": "p", "completions": ["a", "b", "c"], "scores": [0.1, 0.9, 0.5]}), "ranking")
    assert ex["ranking"] == [1, 2, 0]


def test_masking_and_truncation(tiny_model):
    tok = load_tokenizer(tiny_model)
    enc = Encoder(tok, max_length=8, max_prompt_length=5)
    ex = enc.encode(Row("m", 1, {}), {"prompt": "the film was great fun and the cast",
                                      "completion": " was superb but slow"})
    assert len(ex["prompt_ids"]) == 5                                   # cut from the left
    full = tok("the film was great fun and the cast", add_special_tokens=False)["input_ids"]
    assert ex["prompt_ids"] == [tok.bos_token_id] + full[-4:]             # the leading BOS stays
    assert len(ex["prompt_ids"]) + len(ex["completion_ids"]) == 8       # completion cut to fit
    batch = collate([(ex["prompt_ids"], ex["completion_ids"]), ([1, 5], [6, 2])], tok.pad_token_id)
    assert (batch["labels"][0, :5] == -100).all() and (batch["labels"][0, 5:] != -100).all()
    assert batch["labels"][1].tolist()[:4] == [-100, -100, 6, 2] and (batch["labels"][1, 4:] == -100).all()
    assert batch["attention_mask"][1].tolist() == [1] * 4 + [0] * 4


def test_a_completion_truncated_away_is_a_bad_row(tiny_model):
    """Only reachable when the prompt limit leaves no room (the commands clamp it to max_length / 2)."""
    tok = load_tokenizer(tiny_model)
    with pytest.raises(DataError, match="field 'chosen': the completion would be removed entirely by truncation"):
        Encoder(tok, 8, 8).encode(Row("m", 3, {}), {"prompt": "the film " * 10, "chosen": " great.", "rejected": " b."})


def test_column_mapping(tmp_path):
    path = write_jsonl(tmp_path / "se.jsonl", [{"question": "q", "response_j": "good", "response_k": "bad"}])
    rows = load_rows(path, columns={"question": "prompt", "response_j": "chosen", "response_k": "rejected"})
    assert detect_kind(rows, path, ("preference",)) == "preference"
    assert validate(rows[0], "preference") == {"prompt": "q", "chosen": "good", "rejected": "bad"}


def test_parquet_and_csv(tmp_path):
    import datasets
    ds = datasets.Dataset.from_list([{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}])
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.to_csv(str(tmp_path / "d.csv"), index=False)
    for name in ("d.parquet", "d.csv"):
        rows = load_rows(str(tmp_path / name))
        assert [r.data for r in rows] == ds.to_list() and rows[1].number == 2


GOOD = {"prompt": "the film", "chosen": " was great fun.", "rejected": " was awful."}
# (line content, expected field in message, reason kind)
BAD_ROWS = {
    "invalid_json": ('{"prompt": "the film", "chosen": ', None, "invalid_json"),
    "missing_column": ({"prompt": "the film", "chosen": " great."}, "rejected", "missing_column"),
    "wrong_type": ({"prompt": "the film", "chosen": 3, "rejected": " bad."}, "chosen", "wrong_type"),
    "empty_completion": ({"prompt": "the film", "chosen": "  ", "rejected": " bad."}, "chosen", "empty_completion"),
    "unknown_role": ({"prompt": [{"role": "narrator", "content": "x"}],
                      "chosen": [{"role": "assistant", "content": "y"}],
                      "rejected": [{"role": "assistant", "content": "z"}]}, "prompt[0].role", "unknown_role"),
}


def write_with_bad(path, bad_line):
    lines = [json.dumps(GOOD), json.dumps(GOOD), bad_line if isinstance(bad_line, str) else json.dumps(bad_line),
             json.dumps(GOOD)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def sft_args(tiny_model, data, out, *extra):
    return ["sft", "--model", tiny_model, "--data", data, "--output_dir", str(out), "--max_steps", "1",
            "--batch_size", "2", "--max_length", "40", "--max_prompt_length", "40", "--progress", "false",
            "--sft_on_chosen", "true", *extra]


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_row_error_names_file_line_field(case, tiny_model, tmp_path, capsys):
    line, field, _ = BAD_ROWS[case]
    data = write_with_bad(tmp_path / "prefs.jsonl", line)
    rc = main(sft_args(tiny_model, data, tmp_path / "run"))
    err = capsys.readouterr().err
    assert rc != 0
    assert "prefs.jsonl" in err and "line 3" in err
    if field:
        assert f"field '{field}'" in err


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_row_skip_is_counted_and_kept(case, tiny_model, tmp_path):
    line, _, kind = BAD_ROWS[case]
    data = write_with_bad(tmp_path / "prefs.jsonl", line)
    out = tmp_path / "run"
    assert main(sft_args(tiny_model, data, out, "--on_bad_row", "skip")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_rows"] == 1 and summary["skipped_by_reason"] == {kind: 1}
    assert summary["train_examples"] == 3
    rejected = [json.loads(x) for x in (out / "rejected_rows.jsonl").read_text().splitlines()]
    assert len(rejected) == 1 and rejected[0]["row"] == 3 and rejected[0]["kind"] == kind
    assert rejected[0]["data"] == (line if isinstance(line, str) else line)


def test_invalid_utf8(tiny_model, tmp_path, capsys):
    path = tmp_path / "prefs.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n')
    assert main(sft_args(tiny_model, str(path), tmp_path / "run")) != 0
    err = capsys.readouterr().err
    assert "prefs.jsonl" in err and "line 2" in err and "UTF-8" in err
    assert main(sft_args(tiny_model, str(path), tmp_path / "run2", "--on_bad_row", "skip")) == 0
    rejected = [json.loads(x) for x in (tmp_path / "run2" / "rejected_rows.jsonl").read_text().splitlines()]
    assert rejected[0]["kind"] == "invalid_utf8" and "caf" in rejected[0]["data"]


def test_missing_file_and_unknown_format(tiny_model, tmp_path, capsys):
    assert main(sft_args(tiny_model, str(tmp_path / "nope.jsonl"), tmp_path / "r")) != 0
    assert "nope.jsonl" in capsys.readouterr().err
    (tmp_path / "data.xml").write_text("<a/>")
    assert main(sft_args(tiny_model, str(tmp_path / "data.xml"), tmp_path / "r")) != 0
    assert "unknown format" in capsys.readouterr().err


def test_whole_file_missing_column_names_field(tiny_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "answer": "b"}])
    assert main(sft_args(tiny_model, data, tmp_path / "r")) != 0
    err = capsys.readouterr().err
    assert "d.jsonl" in err and "missing required column" in err and "answer" in err


def test_empty_after_skipping_is_an_error(tiny_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "chosen": "", "rejected": "b"}])
    assert main(sft_args(tiny_model, data, tmp_path / "r", "--on_bad_row", "skip")) != 0
    assert "no usable rows" in capsys.readouterr().err
    assert (tmp_path / "r" / "rejected_rows.jsonl").exists()


def test_bad_rows_modes():
    bad = BadRows("skip")
    bad.handle(DataError("f", 1, "x", "boom", kind="wrong_type"))
    assert bad.summary() == {"skipped_rows": 1, "skipped_by_reason": {"wrong_type": 1}}
    with pytest.raises(DataError):
        BadRows("error").handle(DataError("f", 1, "x", "boom"))
