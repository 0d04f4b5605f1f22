"""Read a table file (CSV, TSV, JSON Lines, Parquet) into plain columns, with one-line errors for bad files."""

import csv
import io
import json
import math
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.errors import PipelineError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
           ".parquet": "parquet", ".pq": "parquet"}

Columns = dict[str, list]


def detect_format(path: Path) -> str:
    """The file's format from its suffix; an unknown suffix is refused rather than guessed."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(FORMATS))
        raise PipelineError(f"unknown file format '{path.suffix or path.name}' for {path}: use one of {known}")
    return fmt


def read_table(path: Path) -> Columns:
    """All columns of the file as lists, in row order. Raises PipelineError for missing, empty or undecodable files."""
    if not path.exists():
        raise PipelineError(f"data file not found: {path} (check the path given to --data / DATA=)")
    if not path.is_file():
        raise PipelineError(f"--data {path} is a folder, not a file: point it at a CSV, TSV, JSONL or Parquet file")
    fmt = detect_format(path)
    if fmt == "parquet":
        return _read_parquet(path)
    text = _decode(path)
    if not text.strip():
        raise PipelineError(f"data file is empty: {path} (it needs a header row and at least one data row)")
    columns = _read_jsonl(path, text) if fmt == "jsonl" else _read_delimited(path, text, "\t" if fmt == "tsv" else ",")
    if not columns or not len(next(iter(columns.values()))):
        raise PipelineError(f"data file has a header but no rows: {path}")
    return columns


def _decode(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PipelineError(f"cannot read {path}: {exc.strerror or exc} (check its permissions)") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PipelineError(
            f"{path} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} on line {line}): re-save it as UTF-8, "
            f"e.g. iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}"
        ) from None


def _read_delimited(path: Path, text: str, delimiter: str) -> Columns:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
        rows = list(reader)
    except csv.Error as exc:
        raise PipelineError(f"cannot parse {path} as {'TSV' if delimiter == chr(9) else 'CSV'}: {exc}") from None
    header = [name.strip() for name in header]
    columns: Columns = {name: [] for name in header}
    for row in rows:
        if not row:
            continue
        for i, name in enumerate(header):
            columns[name].append(row[i] if i < len(row) else None)
    return columns


def _read_jsonl(path: Path, text: str) -> Columns:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PipelineError(f"{path} line {number} is not valid JSON ({exc.msg}): "
                                "one JSON object per line") from None
        if not isinstance(record, dict):
            raise PipelineError(f"{path} line {number} is not a JSON object: one {{...}} object per line")
        records.append(record)
    names = list(dict.fromkeys(key for record in records for key in record))
    return {name: [record.get(name) for record in records] for name in names}


def _read_parquet(path: Path) -> Columns:
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise PipelineError(f"cannot read {path} as Parquet ({exc}): check that the file is complete") from None
    if table.num_rows == 0:
        raise PipelineError(f"data file has no rows: {path}")
    return {name: table.column(name).to_pylist() for name in table.column_names}


def is_missing(value: object) -> bool:
    """True for the ways a missing value shows up across formats: None, '', 'nan', NaN."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and value.strip().lower() in ("", "nan", "null", "none", "na")
