"""Read rows from local JSONL / JSON (either gzipped) / Parquet / CSV files, folders of them, or hub
datasets.

JSONL is parsed line by line so that a bad line is named by its number (and, with
``on_bad_row=skip``, kept whole); Parquet and CSV go through ``datasets``. A leading UTF-8 byte-order
mark is accepted.
"""
from __future__ import annotations

import gzip
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

from .errors import BadRows, DataError

FORMATS = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet", ".csv")
BOM = b"\xef\xbb\xbf"


def data_format(path: Path) -> str | None:
    """The FORMATS entry a file name ends with, or None."""
    name = path.name.lower()
    return next((f for f in sorted(FORMATS, key=len, reverse=True) if name.endswith(f)), None)


@dataclass
class Row:
    """One input row: where it came from and its fields (after column renaming)."""
    source: str
    number: int          # 1-based line for JSONL, 1-based row otherwise
    data: dict
    label: str = "row"   # "line" for JSONL

    def error(self, field: str | None, reason: str, kind: str = "invalid") -> DataError:
        return DataError(self.source, self.number, field, reason, kind=kind, raw=self.data,
                         row_label=self.label)


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _read_jsonl(path: Path, bad: BadRows) -> list[Row]:
    rows = []
    with _open(path) as f:
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                bad.handle(DataError(path, number, None, f"not valid UTF-8 ({e.reason} at byte {e.start})",
                                     kind="invalid_utf8", raw=raw.decode("utf-8", "replace"), row_label="line"))
                continue
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                bad.handle(DataError(path, number, None, f"not valid JSON ({e.msg}, column {e.colno})",
                                     kind="invalid_json", raw=line.rstrip("\n"), row_label="line"))
                continue
            if not isinstance(data, dict):
                bad.handle(DataError(path, number, None, f"expected a JSON object, got {type(data).__name__}",
                                     kind="invalid_json", raw=data, row_label="line"))
                continue
            rows.append(Row(str(path), number, data, "line"))
    return rows


def _read_json(path: Path, bad: BadRows) -> list[Row]:
    with _open(path) as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(path, None, None, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        # Many ".json" files are really JSON lines.
        return _read_jsonl(path, bad)
    if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
        data = data.get("data", data.get("train", data))
    if not isinstance(data, list):
        raise DataError(path, None, None, "expected a JSON array of objects (or JSON lines)")
    rows = []
    for number, item in enumerate(data, start=1):
        if not isinstance(item, dict):
            bad.handle(DataError(path, number, None, f"expected an object, got {type(item).__name__}",
                                 kind="invalid_json", raw=item))
            continue
        rows.append(Row(str(path), number, item))
    return rows


def _read_with_datasets(path: Path, fmt: str) -> list[Row]:
    import datasets
    if fmt == "csv":
        # Validate the encoding first: pandas' error names neither row nor field.
        for number, raw in enumerate(path.read_bytes().splitlines(), start=0):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(path, number, None, f"not valid UTF-8 ({e.reason} at byte {e.start})",
                                kind="invalid_utf8") from None
    try:
        ds = datasets.load_dataset(fmt, data_files=str(path), split="train",
                                   **({"encoding": "utf-8-sig"} if fmt == "csv" else {}))
    except Exception as e:  # noqa: BLE001 - the library's message is what the user needs
        raise DataError(path, None, None, f"could not read as {fmt}: {e}") from e
    return [Row(str(path), i, dict(r)) for i, r in enumerate(ds, start=1)]


def _read_file(path: Path, bad: BadRows) -> list[Row]:
    fmt = data_format(path)
    if fmt is None:
        suffix = "".join(path.suffixes[-2:]) or "(no extension)"
        raise DataError(path, None, None, f"unknown format {suffix!r}; use one of {', '.join(FORMATS)}")
    try:
        if fmt.startswith(".jsonl"):
            return _read_jsonl(path, bad)
        if fmt.startswith(".json"):
            return _read_json(path, bad)
    except (OSError, EOFError, zlib.error) as e:   # a truncated or corrupt gzip stream
        raise DataError(path, None, None, f"could not read: {e}") from None
    return _read_with_datasets(path, fmt[1:])


def _read_hub(name: str, split: str) -> list[Row]:
    import datasets
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # noqa: BLE001
        raise DataError(name, None, None, f"no such local file, and the hub dataset could not be loaded: {e}") from e
    return [Row(f"{name}[{split}]", i, dict(r)) for i, r in enumerate(ds, start=1)]


def looks_local(source: str) -> bool:
    """A name with a file extension we read, a leading / . ~, or more than one / is a path, never a
    hub name ("org/name")."""
    return (data_format(Path(source)) is not None or source.startswith(("/", ".", "~"))
            or source.count("/") > 1)


def _names_split(path: Path, folder: Path, split: str) -> bool:
    """Whether a file is named for ``split``: a word of its path below the folder, e.g.
    train.jsonl, prefs_train.json, train-00000-of-00002.parquet, train/part-0.jsonl."""
    words = re.split(r"[-_./]", str(path.relative_to(folder)).lower())
    return split.lower() in words


def split_files(folder: Path, splits: tuple[str, ...]) -> list[Path]:
    """The data files of ``folder`` (and its subfolders) named for the first of ``splits`` that names
    any; a folder with a single data file gives that file; several files named for no split are an
    error (reading them all would mix, say, test rows into training)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and data_format(p))
    if not files:
        raise DataError(folder, None, None, f"folder holds no {'/'.join(FORMATS)} file", kind="missing_file")
    for split in splits:
        named = [p for p in files if _names_split(p, folder, split)]
        if named:
            return named
    if len(files) == 1:
        return files
    listed = ", ".join(str(p.relative_to(folder)) for p in files[:6]) + (" …" if len(files) > 6 else "")
    raise DataError(folder, None, None, f"{len(files)} data files ({listed}) and none named for the "
                    f"{' or '.join(repr(s) for s in splits)} split: pass one file with --data/--eval_data, or name "
                    "the files by split (train.jsonl, test.jsonl)", kind="missing_file")


def load_rows(source: str, *, split: str | tuple[str, ...] = "train", columns: dict | None = None,
              bad: BadRows | None = None) -> list[Row]:
    """Every row of ``source``, with columns renamed by ``columns`` ({theirs: ours}). A folder gives
    its files for ``split`` (the first of several names that matches), a hub dataset that split."""
    bad = bad or BadRows("error")
    splits = (split,) if isinstance(split, str) else tuple(split)
    path = Path(source).expanduser()
    if path.is_dir():
        rows = [r for p in split_files(path, splits) for r in _read_file(p, bad)]
    elif path.exists():
        rows = _read_file(path, bad)
    elif looks_local(source):
        raise DataError(source, None, None, "file not found", kind="missing_file")
    else:
        rows = _read_hub(source, splits[0])
    if columns:
        for r in rows:
            r.data = {columns.get(k, k): v for k, v in r.data.items()}
    return rows
