"""Read rows from local JSONL / JSON (either gzipped) / Parquet / CSV files, folders of them, hub
datasets, or Python objects (an iterable of dicts, a ``datasets.Dataset``).

JSONL is parsed line by line so that a bad line is named by its number (and, with
``on_bad_row=skip``, kept whole); CSV is read with the standard library (every value a string),
Parquet through ``datasets``. A leading UTF-8 byte-order mark is accepted.
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
                data = json.loads(line.strip())
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
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        data = data.get("data", data.get("train", data))
    if isinstance(data, dict):   # a single object: one row (as one line of JSON lines would be)
        data = [data]
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


def _read_csv(path: Path) -> list[Row]:
    """CSV through the standard library: every value a string (numbers in text columns stay text; the
    schema parses the numeric fields), an empty cell a missing value, rows numbered from 1 after the
    header."""
    import csv
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):   # name the line of bad bytes
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(path, number, None, f"not valid UTF-8 ({e.reason} at byte {e.start})",
                            kind="invalid_utf8", row_label="line") from None
    with open(path, newline="", encoding="utf-8-sig") as f:
        try:
            return [Row(str(path), i, {k: (v if v != "" else None) for k, v in r.items() if k is not None})
                    for i, r in enumerate(csv.DictReader(f), start=1)]
        except csv.Error as e:
            raise DataError(path, None, None, f"not valid CSV ({e})") from None


def _read_parquet(path: Path) -> list[Row]:
    import datasets
    try:
        ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    except Exception as e:  # noqa: BLE001 - the library's message is what the user needs
        raise DataError(path, None, None, f"could not read as parquet: {e}") from e
    return [Row(str(path), i, dict(r)) for i, r in enumerate(ds, start=1)]


def _read_file(path: Path, bad: BadRows) -> list[Row]:
    fmt = data_format(path)
    if fmt is None:
        suffix = "".join(path.suffixes[-2:]) or "(no extension)"
        raise DataError(path, None, None, f"unknown format {suffix!r}; use one of {', '.join(FORMATS)}")
    try:
        if fmt.startswith(".jsonl"):
            rows = _read_jsonl(path, bad)
        elif fmt.startswith(".json"):
            rows = _read_json(path, bad)
        else:
            rows = _read_csv(path) if fmt == ".csv" else _read_parquet(path)
    except (OSError, EOFError, zlib.error) as e:   # a truncated or corrupt gzip stream
        raise DataError(path, None, None, f"could not read: {e}") from None
    if not rows and not bad.rejected:
        raise DataError(path, None, None, "the file holds no rows", kind="empty_dataset")
    return rows


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


def _read_objects(rows, name: str, bad: BadRows) -> list[Row]:
    """Rows given as Python objects — an iterable of dicts or a ``datasets.Dataset`` — named ``name``
    (``data``, ``eval_data``) and numbered by their 0-based index."""
    if isinstance(rows, dict):
        hint = " (a datasets.DatasetDict: pass one split, e.g. ds['train'])" if all(
            hasattr(v, "column_names") for v in rows.values()) else ""
        raise DataError(name, None, None, f"expected an iterable of row dicts, got a dict{hint}")
    try:
        items = iter(rows)
    except TypeError:
        raise DataError(name, None, None, f"expected a path or an iterable of row dicts, got "
                                          f"{type(rows).__name__}") from None
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            bad.handle(DataError(name, i, None, f"expected a dict, got {type(item).__name__}", kind="wrong_type",
                                 raw=item, row_label="index"))
            continue
        out.append(Row(name, i, dict(item), "index"))
    if not out and not bad.rejected:
        raise DataError(name, None, None, "holds no rows", kind="empty_dataset")
    return out


def load_rows(source, *, split: str | tuple[str, ...] = "train", columns: dict | None = None,
              bad: BadRows | None = None, name: str = "data") -> list[Row]:
    """Every row of ``source``, with columns renamed by ``columns`` ({theirs: ours}). A folder gives
    its files for ``split`` (the first of several names that matches), a hub dataset that split; rows
    given as Python objects are named ``name`` in messages."""
    bad = bad or BadRows("error")
    splits = (split,) if isinstance(split, str) else tuple(split)
    if not isinstance(source, (str, Path)):
        rows = _read_objects(source, name, bad)
        if columns:
            for r in rows:
                r.data = {columns.get(k, k): v for k, v in r.data.items()}
        return rows
    source = str(source)
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
