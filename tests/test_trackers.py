"""--report_to: every tracker receives the metrics metrics.jsonl holds, under the same names and steps,
read back from each tracker's own local store (MLflow's file store, trackio's local database, W&B offline)."""
import json

import pytest

from conftest import corpus, write_jsonl

STEPS = 4


def sft_run(tiny_model, tmp_path, report_to, name="run"):
    from preftune.cli import main
    data = write_jsonl(tmp_path / "corpus.jsonl", [{"text": t} for t in corpus(40)])
    out = tmp_path / name
    assert main(["sft", "--model", tiny_model, "--data", data, "--output_dir", str(out), "--max_steps", str(STEPS),
                 "--batch_size", "4", "--progress", "false", "--max_length", "24", "--report_to", report_to]) == 0
    return out, [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same(got, records, name="loss"):
    """``got`` (step, value) pairs are metrics.jsonl's ``name`` at the same steps (float32 stores: 1e-6)."""
    want = [(r["step"], r[name]) for r in records if name in r]
    assert [step for step, _ in got] == [step for step, _ in want] and len(want) == STEPS
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)


def test_tensorboard_by_default(tiny_model, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out, records = sft_run(tiny_model, tmp_path, "tensorboard")
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    got = [(e.step, e.value) for e in events.Scalars("loss")]
    assert_same(got, records)


def test_none_writes_no_tracker_folder(tiny_model, tmp_path):
    out, _ = sft_run(tiny_model, tmp_path, "none")
    assert not (out / "tensorboard").exists()


def test_mlflow_file_store(tiny_model, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    store = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    out, records = sft_run(tiny_model, tmp_path, "mlflow,tensorboard")
    client = mlflow.tracking.MlflowClient(tracking_uri=store)
    [run] = client.search_runs([client.get_experiment_by_name("preftune").experiment_id])
    got = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss"))
    assert_same(got, records)
    assert run.data.params["max_steps"] == str(STEPS)
    assert (out / "tensorboard").exists()


def test_trackio_local_store(tiny_model, tmp_path, monkeypatch):
    pytest.importorskip("trackio")
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    monkeypatch.setenv("TRACKIO_PROJECT", "preftune-test")
    out, records = sft_run(tiny_model, tmp_path, "trackio")
    from trackio.sqlite_storage import SQLiteStorage
    logs = SQLiteStorage.get_logs("preftune-test", out.name)
    got = [(row["step"], row["loss"]) for row in logs if "loss" in row]
    assert_same(got, records)


def wandb_records(path):
    """The records of a W&B offline run file: a 7-byte header, then LevelDB-log records (7-byte header:
    crc, length, type; FULL=1 or FIRST/MIDDLE/LAST=2/3/4) in 32 KiB blocks, each a protobuf Record."""
    import struct
    from wandb.proto import wandb_internal_pb2
    data, block, pos, pending = path.read_bytes(), 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending, pos = pending + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_wandb_offline(tiny_model, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out, records = sft_run(tiny_model, tmp_path, "wandb")
    [run_file] = (out / "wandb").glob("offline-run-*/run-*.wandb")
    got = []
    for record in wandb_records(run_file):
        if record.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            got.append((items["_step"], items["loss"]))
    assert_same(got, records)


def test_unknown_or_missing_tracker_is_one_line(tiny_model, tmp_path, capsys, monkeypatch):
    from preftune.cli import main
    data = write_jsonl(tmp_path / "corpus.jsonl", [{"text": t} for t in corpus(10)])
    args = ["sft", "--model", tiny_model, "--data", data, "--output_dir", str(tmp_path / "r"), "--max_steps", "1"]
    assert main([*args, "--report_to", "comet"]) == 2
    assert "--report_to must be one or more of" in capsys.readouterr().err
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert main([*args, "--report_to", "wandb"]) == 2
    assert "pip install 'preftune[wandb]'" in capsys.readouterr().err
