"""The data users bring as it is: HH-RLHF transcripts, UltraFeedback-binarized rows, TRL's unpaired
format, gzipped JSON(L), files starting with a UTF-8 byte-order mark."""
import gzip
import json

import pytest

from conftest import write_jsonl
from preftune.cli import main
from preftune.data import DataError, Row, detect_kind, load_rows, validate

HH = {"chosen": "\n\nHuman: What is a good film?\n\nAssistant: Try Casablanca.\n\nHuman: Why?\n\nAssistant: "
                "It is warm and witty.",
      "rejected": "\n\nHuman: What is a good film?\n\nAssistant: Try Casablanca.\n\nHuman: Why?\n\nAssistant: "
                  "It is old."}
UF = {"prompt": "Name a warm film.", "prompt_id": "x1", "score_chosen": 8.0, "score_rejected": 3.5,
      "chosen": [{"role": "user", "content": "Name a warm film."}, {"role": "assistant", "content": "Amélie."}],
      "rejected": [{"role": "user", "content": "Name a warm film."}, {"role": "assistant", "content": "Saw."}],
      "messages": [{"role": "user", "content": "Name a warm film."}, {"role": "assistant", "content": "Amélie."}]}


def test_hh_rlhf_prompt_is_the_shared_transcript_up_to_the_last_assistant_marker():
    ex = validate(Row("hh", 1, HH), detect_kind([Row("hh", 1, HH)], "hh", ("preference",)))
    assert ex["prompt"] == HH["chosen"][:HH["chosen"].rindex("Assistant:") + len("Assistant:")]
    assert (ex["chosen"], ex["rejected"]) == (" It is warm and witty.", " It is old.")
    # without a marker: the shared prefix, its last space going to the completions (TRL's extract_prompt)
    plain = validate(Row("p", 1, {"chosen": "The sky is blue.", "rejected": "The sky is green."}), "preference")
    assert plain == {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
    with pytest.raises(DataError, match="share no prefix"):
        validate(Row("p", 1, {"chosen": "Blue.", "rejected": "Green."}), "preference")
    with pytest.raises(DataError, match="empty completion"):
        validate(Row("p", 1, {"chosen": "Same.", "rejected": "Same."}), "preference")


def test_ultrafeedback_rows_take_the_conversation_as_prompt():
    rows = [Row("uf", 1, UF)]
    assert detect_kind(rows, "uf", ("preference",)) == "preference"     # messages column too: still a pair
    ex = validate(rows[0], "preference")
    assert ex["prompt"] == UF["chosen"][:1] and ex["chosen"] == UF["chosen"][1:] \
        and ex["rejected"] == UF["rejected"][1:]
    disagree = dict(UF, prompt="Something else entirely.")
    with pytest.raises(DataError, match="field 'prompt': does not agree with the conversation's last user turn"):
        validate(Row("uf", 2, disagree), "preference")
    split = dict(UF, rejected=[{"role": "user", "content": "Other."}, {"role": "assistant", "content": "No."}])
    with pytest.raises(DataError, match="field 'rejected': differs from chosen before its last turn"):
        validate(Row("uf", 3, split), "preference")
    # a string prompt beside completion-only message lists is one user turn
    short = {"prompt": "Hi", "chosen": [{"role": "assistant", "content": "Hello."}],
             "rejected": [{"role": "assistant", "content": "Go."}]}
    assert validate(Row("s", 1, short), "preference")["prompt"] == [{"role": "user", "content": "Hi"}]


def test_unpaired_rows(tmp_path):
    rows = [Row("u", 1, {"prompt": "a", "completion": " b", "label": True})]
    assert detect_kind(rows, "u", ("unpaired", "sft")) == "unpaired"
    with pytest.raises(DataError, match=r"are unpaired preference rows: they train with `preftune kto`"):
        detect_kind(rows, "u", ("preference", "ranking"))
    assert validate(rows[0], "unpaired")["label"] is True
    for text, value in (("yes", True), ("False", False), ("0", False)):   # CSV cells are text
        assert validate(Row("u", 2, {"prompt": "a", "completion": " b", "label": text}), "unpaired")["label"] is value
    with pytest.raises(DataError, match="field 'label': expected true or false"):
        validate(Row("u", 3, {"prompt": "a", "completion": " b", "label": "maybe"}), "unpaired")


def test_hh_rows_that_part_before_the_last_turn_and_identical_pairs_are_bad_rows():
    early = {"chosen": "\n\nHuman: A\n\nAssistant: B\n\nHuman: C1\n\nAssistant: D1",
             "rejected": "\n\nHuman: A\n\nAssistant: B\n\nHuman: C2\n\nAssistant: D2"}
    with pytest.raises(DataError, match="differ before their last assistant turn.*'Human:'"):
        validate(Row("hh", 4, early), "preference")
    with pytest.raises(DataError, match="field 'rejected': the same completion as chosen"):
        validate(Row("p", 5, {"prompt": "a", "chosen": " b", "rejected": " b"}), "preference")


def test_csv_cells_are_text_and_single_json_objects_are_rows(tmp_path):
    (tmp_path / "math.csv").write_text("prompt,completion,label,margin\n2+2=,4,true,1.5\nhi,,no,\n")
    rows = load_rows(str(tmp_path / "math.csv"))
    assert rows[0].data == {"prompt": "2+2=", "completion": "4", "label": "true", "margin": "1.5"}
    assert rows[1].data["completion"] is None and rows[1].number == 2          # an empty cell is a missing value
    assert validate(rows[0], "unpaired") == {"prompt": "2+2=", "completion": "4", "label": True}
    assert validate(Row("c", 1, {"prompt": "a", "chosen": " b", "rejected": " c", "margin": "1.5"}),
                    "preference")["margin"] == 1.5
    (tmp_path / "one.json").write_text(json.dumps({"prompt": "a", "completion": " b"}))
    assert [r.data for r in load_rows(str(tmp_path / "one.json"))] == [{"prompt": "a", "completion": " b"}]
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="empty.jsonl: the file holds no rows"):
        load_rows(str(tmp_path / "empty.jsonl"))


@pytest.mark.slow
def test_commands_train_on_hh_and_ultrafeedback_files(tiny_model, tmp_path):
    hh = write_jsonl(tmp_path / "hh.jsonl", [HH] * 6)
    uf = write_jsonl(tmp_path / "uf.jsonl", [UF] * 6)
    for command, data in (("dpo", hh), ("rm", hh), ("dpo", uf), ("kto", uf)):
        out = tmp_path / f"{command}-{data[-7:-6]}"
        assert main([command, "--model", tiny_model, "--data", data, "--output_dir", str(out), "--max_steps", "1",
                     "--batch_size", "4", "--progress", "false"]) == 0, (command, data)


def test_gzipped_json_and_byte_order_marks(tmp_path):
    rows = [{"prompt": "a", "completion": " b"}, {"prompt": "c", "completion": " d"}]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    with gzip.open(tmp_path / "d.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(text)
    with gzip.open(tmp_path / "e.json.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps(rows))
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + text.encode())
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(rows).encode())
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbfprompt,completion\na, b\nc, d\n")
    for name in ("d.jsonl.gz", "e.json.gz", "bom.jsonl", "bom.json", "bom.csv"):
        got = load_rows(str(tmp_path / name))
        assert [r.data["prompt"] for r in got] == ["a", "c"], name
    (tmp_path / "broken.jsonl.gz").write_bytes(gzip.compress(text.encode())[:-12])
    with pytest.raises(DataError, match="broken.jsonl.gz: could not read"):
        load_rows(str(tmp_path / "broken.jsonl.gz"))
