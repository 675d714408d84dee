"""Data files -> raw rows (dicts), each tagged with where it came from.

Supported containers: JSON Lines (``.jsonl``/``.json``, one object per line), CSV (``.csv``,
header row), Parquet (``.parquet``) and a Hugging Face ``datasets`` folder written by
``save_to_disk``.  A row that cannot be decoded is yielded with a problem instead of a value, so
a checker can list every bad line and a loader can refuse the file naming all of them.
Positions are 1-based: ``line N`` for text files (the physical line; CSV's header is line 1),
``row N`` for columnar files.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from fedtune.common.data.errors import DataError

TEXT_SUFFIXES = (".jsonl", ".json", ".csv")
SUPPORTED = "a .jsonl, .csv or .parquet file, or a Hugging Face datasets folder (save_to_disk)"


@dataclass(frozen=True)
class Row:
    where: str  # "line 7" / "row 7"
    value: dict[str, Any] | None  # None when the row could not be decoded
    problem: str | None = None


def read_rows(path: str | Path, split: str = "train") -> Iterator[Row]:
    p = Path(path).expanduser()
    if p.is_dir():
        yield from _dataset_rows(p, split)
    elif not p.is_file():
        raise DataError(f"data file not found: {p}")
    elif p.suffix.lower() in (".jsonl", ".json"):
        yield from _jsonl_rows(p)
    elif p.suffix.lower() == ".csv":
        yield from _csv_rows(p)
    elif p.suffix.lower() == ".parquet":
        yield from _parquet_rows(p)
    else:
        raise DataError(f"{p}: unsupported file type '{p.suffix}'; use {SUPPORTED}")


def _decode(raw: bytes) -> tuple[str, str | None]:
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return raw.decode("utf-8", "replace"), f"not valid UTF-8 ({exc.reason} at byte {exc.start}); save the file as UTF-8"


def _jsonl_rows(p: Path) -> Iterator[Row]:
    with p.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"line {lineno}"
            text, bad = _decode(raw.removeprefix(b"\xef\xbb\xbf") if lineno == 1 else raw)
            if bad:
                yield Row(where, None, bad)
                continue
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                yield Row(where, None, f"bad JSON ({exc.msg} at character {min(exc.pos, len(text.rstrip())) + 1})")
                continue
            if not isinstance(obj, dict):
                yield Row(where, None, f"expected a JSON object, got {type(obj).__name__}")
                continue
            yield Row(where, obj)


def _csv_rows(p: Path) -> Iterator[Row]:
    raw_lines = p.read_bytes().removeprefix(b"\xef\xbb\xbf").splitlines(keepends=True)
    bad: dict[int, str] = {}
    lines = []
    for lineno, raw in enumerate(raw_lines, start=1):
        text, problem = _decode(raw)
        lines.append(text)
        if problem:
            bad[lineno] = problem
    reader = csv.reader(iter(lines))
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise DataError(f"{p}: line 1: unreadable CSV header ({exc})") from exc
    header = [h.strip() for h in header]
    last = reader.line_num
    while True:
        start = last + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            last = reader.line_num
            yield Row(f"line {start}", None, f"unreadable CSV ({exc})")
            continue
        last = reader.line_num
        problems = [bad[n] for n in range(start, last + 1) if n in bad]
        if problems:
            yield Row(f"line {start}", None, problems[0])
        elif cells and any(c.strip() for c in cells):
            if len(cells) > len(header):
                yield Row(f"line {start}", None, f"{len(cells)} cells but the header has {len(header)} columns")
            else:  # short rows: missing trailing cells are missing fields, reported by the format
                yield Row(f"line {start}", {h: c for h, c in zip(header, cells)})


def _parquet_rows(p: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for corrupt files
        raise DataError(f"{p}: not a readable Parquet file ({exc})") from exc
    for i, obj in enumerate(table.to_pylist(), start=1):
        yield Row(f"row {i}", obj)


def _dataset_rows(p: Path, split: str) -> Iterator[Row]:
    try:
        import datasets
    except ImportError as exc:
        raise DataError(f"{p} is a folder: reading Hugging Face datasets folders needs `pip install datasets`") from exc
    try:
        ds = datasets.load_from_disk(str(p))
    except FileNotFoundError as exc:
        raise DataError(f"{p} is a folder but not a Hugging Face datasets folder (save_to_disk); use {SUPPORTED}") from exc
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{p} has splits {sorted(ds)}, not '{split}'; choose one with data.split / --split")
        ds = ds[split]
    for i, obj in enumerate(ds, start=1):
        yield Row(f"row {i}", dict(obj))
