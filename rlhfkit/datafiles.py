"""Reading tabular files into (row, record) pairs, and writing JSON lines.

JSONL (or a JSON list), CSV/TSV, Parquet, or a saved `datasets` folder. Rows count
from 1 as a person counts them (JSONL lines; CSV data rows after the header). A byte
that is not UTF-8 is a `DataError` naming its row (and CSV column), with the fix.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

from rlhfkit.errors import DataError, UserError

_SURROGATE = re.compile("[\ud800-\udfff]")  # lone surrogates: bytes that were not UTF-8 (surrogateescape)


def read_records(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """Rows of a JSONL/JSON/CSV/Parquet file or a saved `datasets` folder, as (row, record)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder; check the path")
    if path.is_dir():
        return _read_datasets_folder(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path)
    if suffix == ".json":
        text = _read_utf8(path)
        if text.lstrip().startswith("["):
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(path, None, None, f"unparsable JSON ({e.msg} at line {e.lineno}, "
                                f"column {e.colno})") from None
            return [(i, _as_record(path, i, r)) for i, r in enumerate(rows, 1)]
        return _read_jsonl(path)
    if suffix in (".csv", ".tsv"):
        return _read_csv(path, "\t" if suffix == ".tsv" else ",")
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
        return [(i, r) for i, r in enumerate(rows, 1)]
    raise UserError(
        f"{path}: unknown file type '{suffix}'; use .jsonl, .json, .csv, .parquet or a saved datasets folder"
    )


def _as_record(path, row, value) -> dict:
    if not isinstance(value, dict):
        raise DataError(path, row, None, f"expected a JSON object, got {type(value).__name__}")
    return value


def _not_utf8(path, row, e: UnicodeDecodeError, at: int | None, column: str | None = None) -> DataError:
    byte = e.object[e.start:e.start + 1].hex()
    where = "" if at is None else f" at byte {at + 1}"
    return DataError(path, row, column, f"not UTF-8 text: byte 0x{byte}{where} cannot be decoded (the file looks "
                     "like Latin-1 or Windows-1252); save it as UTF-8, e.g. `iconv -f latin1 -t utf-8 IN > OUT`")


def _read_utf8(path: Path) -> str:
    """The whole file as text; a byte that is not UTF-8 is a DataError naming its line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")  # a leading byte-order mark (as Excel writes) is dropped
    except UnicodeDecodeError as e:
        line_start = raw.rfind(b"\n", 0, e.start) + 1
        raise _not_utf8(path, raw.count(b"\n", 0, e.start) + 1, e, e.start - line_start) from None


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    records = []
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise _not_utf8(path, line_no, e, e.start) from None
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(path, line_no, None, f"unparsable JSON line ({e.msg} at column {e.colno})") from None
            records.append((line_no, _as_record(path, line_no, value)))
    return records


def _read_csv(path: Path, delimiter: str) -> list[tuple[int, dict]]:
    import csv

    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        # Name the data row and column: find the first cell holding an undecodable byte.
        escaped = raw.decode("utf-8-sig", errors="surrogateescape")
        reader = csv.reader(io.StringIO(escaped, newline=""), delimiter=delimiter)
        header = None
        for i, cells in enumerate(reader):
            header = header or cells
            bad = [j for j, cell in enumerate(cells) if _SURROGATE.search(cell)]
            if bad:
                column = header[bad[0]] if i and bad[0] < len(header) else None
                raise _not_utf8(path, i or None, e, None, column) from None
        raise _not_utf8(path, None, e, e.start) from None
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    # Data rows count from 1 after the header, as a spreadsheet user sees them minus one.
    return [(i, dict(r)) for i, r in enumerate(reader, 1)]


def _read_datasets_folder(path: Path) -> list[tuple[int, dict]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise UserError(f"{path}: a folder must be a dataset saved with `Dataset.save_to_disk`") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise UserError(f"{path}: DatasetDict has no 'train' split (has {sorted(ds)}); save one split")
        ds = ds["train"]
    return [(i, r) for i, r in enumerate(ds.to_list(), 1)]


def write_jsonl(path: str | Path, records) -> None:
    """Write records (dicts) as JSON lines, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
