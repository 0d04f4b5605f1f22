"""Read a table file (CSV, TSV, JSON Lines, Parquet) into plain columns, with one-line errors for bad files."""

import csv
import io
import json
import math
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.budget import check_decoded, check_parquet_metadata, check_text_file
from pipeline.data.sniff import not_utf8, refuse_non_parquet, refuse_non_text, refuse_single_document, separator_hint
from pipeline.errors import PipelineError, first_line
from pipeline.storage import arrow_source

FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
           ".parquet": "parquet", ".pq": "parquet"}

if TYPE_CHECKING:
    from _csv import Reader

Columns = dict[str, list]
T = TypeVar("T")

# The csv module refuses fields over 131,072 characters; such a text is valid (JSON Lines reads it), so lift the cap
# as far as every platform's C long allows.
CSV_FIELD_LIMIT = min(sys.maxsize, 2**31 - 1)

def detect_format(path: Path) -> str:
    """The file's format from its suffix; an unknown suffix is refused rather than guessed."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(FORMATS))
        raise PipelineError(f"unknown file format '{path.suffix or path.name}' for {path}: use one of {known}")
    return fmt


def read_table(path: Path) -> Columns:
    """All columns of the file as lists, in row order. Raises PipelineError for missing, empty or undecodable files."""
    _require_regular_file(path)
    fmt = detect_format(path)
    if fmt == "parquet":
        return _read_parquet(path)
    text = _decode(path, fmt)
    if not text.strip():
        raise PipelineError(f"data file is empty: {path} (it needs a header row and at least one data row)")
    columns = _read_jsonl(path, text) if fmt == "jsonl" else _read_delimited(path, text, "\t" if fmt == "tsv" else ",")
    if not columns:
        raise PipelineError(f"data file has no named columns: {path} (give each row fields such as text and label)")
    if not len(next(iter(columns.values()))):
        raise PipelineError(f"data file has a header but no rows: {path}")
    return columns


def _require_regular_file(path: Path) -> None:
    """Only a real directory is called a folder; a pipe or device (e.g. /dev/stdin) cannot be read twice, and every
    stage reads --data again, so it is refused rather than half-supported."""
    if not path.exists():
        raise PipelineError(f"data file not found: {path} (check the path given to --data / DATA=)")
    if path.is_dir():
        raise PipelineError(f"--data {path} is a folder, not a file: point it at a CSV, TSV, JSONL or Parquet file")
    if not path.is_file():
        raise PipelineError(f"{path} is not a regular file (a pipe or device): save it to a file first")


def _decode(path: Path, fmt: str) -> str:
    """The file as text, after refusing files that are not UTF-8 text at all (their decode error would mislead)."""
    try:
        check_text_file(path, path.stat().st_size)
        raw = path.read_bytes()
    except OSError as exc:
        raise PipelineError(f"cannot read {path}: {exc.strerror or exc} (check its permissions)") from None
    refuse_non_text(path, raw, fmt)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise not_utf8(path, raw, exc) from None


def _read_delimited(path: Path, text: str, delimiter: str) -> Columns:
    rows = delimited_rows(path, io.StringIO(text, newline=""), delimiter)
    header = next(rows)
    columns: Columns = {name: [] for name in header if name}
    for row in rows:
        for name, value in zip(header, row, strict=True):
            if name:
                columns[name].append(value)
    return columns


def delimited_rows(path: Path, lines: Iterable[str], delimiter: str) -> Iterator[list[str]]:
    """The header (names stripped), then every non-blank row, from `lines` as they are read (predict streams a
    large file this way). Every row must have the header's number of fields: an extra one is an unquoted delimiter
    inside a text, which would otherwise cut the text short silently."""
    csv.field_size_limit(CSV_FIELD_LIMIT)
    reader = csv.reader(lines, delimiter=delimiter)
    kind = "TSV" if delimiter == "\t" else "CSV"
    try:
        records = _records(reader)
        header = _header(path, records, delimiter)
        yield header
        for start, row in records:
            if len(row) != len(header):
                raise PipelineError(_field_count_message(path, start, reader.line_num, len(row), len(header), kind))
            yield row
    except csv.Error as exc:
        raise PipelineError(f"cannot parse {path} as {kind} (line {reader.line_num}): {exc}") from None


def _records(reader: "Reader") -> Iterator[tuple[int, list[str]]]:
    """Non-blank rows with the physical line each starts on (a quoted newline makes a row span lines). Rows of only
    empty fields (',,' as spreadsheets write below the data) count as blank."""
    while True:
        start = reader.line_num + 1
        row = next(reader, None)
        if row is None:
            return
        if any(field.strip() for field in row):
            yield start, row


def _header(path: Path, records: Iterator[tuple[int, list[str]]], delimiter: str) -> list[str]:
    """The first non-blank row as column names, refusing headers that show the file is not what its name says."""
    first = next(records, None)
    if first is None:
        raise PipelineError(f"data file is empty: {path} (it needs a header row and at least one data row)")
    header = [name.strip() for name in first[1]]
    line = delimiter.join(first[1]).strip()
    if re.fullmatch(r"sep=.?", line):
        raise PipelineError(f"{path} starts with Excel's separator line {line!r}: delete that line "
                            "so the first line is the header")
    hint = separator_hint(header) if len(header) == 1 else None
    if hint:
        raise PipelineError(f"{path} has a single column {header[0]!r}: {hint}")
    refuse_duplicates(path, [name for name in header if name])
    return header


def refuse_duplicates(path: Path, names: list[str]) -> None:
    """Two columns of one name would silently become one (CSV, TSV) or be unreadable (Parquet): refuse, name it."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise PipelineError(f"duplicate column name {name!r} in the header of {path}: rename one of them")
        seen.add(name)


def _field_count_message(path: Path, start: int, end: int, got: int, want: int, kind: str) -> str:
    where = f"line {start}" if start == end else f"lines {start}-{end}"
    sep = "tab" if kind == "TSV" else "comma"
    return (f"{path} {where} has {got} field(s) but the header has {want}: put a text that contains a {sep} "
            f"in double quotes, and give every row one value per column")


def _read_jsonl(path: Path, text: str) -> Columns:
    """JSON Lines, split on '\\n' only: str.splitlines() would also break a line at U+2028 or NEL inside a text."""
    refuse_single_document(path, text)
    records = [json_object(path, number, line)
               for number, line in enumerate(text.split("\n"), start=1) if line.strip()]
    names = list(dict.fromkeys(key for record in records for key in record))
    return {name: [record.get(name) for record in records] for name in names}


def json_object(path: Path, number: int, line: str) -> dict:
    try:
        record = json.loads(line, object_pairs_hook=lambda pairs: _unique_keys(path, number, pairs))
    except json.JSONDecodeError as exc:
        raise PipelineError(f"{path} line {number} is not valid JSON ({exc.msg}): "
                            "one JSON object per line") from None
    except RecursionError:  # valid JSON, but nested deeper than Python's parser can follow
        raise PipelineError(f"{path} line {number} nests arrays or objects deeper than can be read (about "
                            f"{sys.getrecursionlimit()} levels): flatten that value, e.g. store it as a "
                            "string") from None
    if "\\u" in line:
        _refuse_lone_surrogates(path, number, record)
    if not isinstance(record, dict):
        raise PipelineError(f"{path} line {number} is a JSON {_json_kind(record)}, not an object: "
                            'write one {"text": ..., "label": ...} object per line')
    return record


def _refuse_lone_surrogates(path: Path, number: int, record: object) -> None:
    """A \\ud800-style escape without its pair parses, but is no character: it cannot be tokenized as text nor
    written to any UTF-8 output. Refuse it, naming the key, rather than fail later with a traceback."""
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        items = record.items() if isinstance(record, dict) else []
        key = next((k for k, v in items if not _encodes(k) or not _encodes(json.dumps(v, ensure_ascii=False))), "?")
        raise PipelineError(f"{path} line {number} holds an unpaired UTF-16 surrogate escape (e.g. \\ud800) in "
                            f"{key!r}, which is no character: replace it, e.g. with \\ufffd") from None


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unique_keys(path: Path, number: int, pairs: list[tuple[str, object]]) -> dict:
    """json.loads keeps the last of two equal keys and drops the other silently; refuse instead."""
    record = dict(pairs)
    if len(record) != len(pairs):
        seen: set[str] = set()
        dup = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise PipelineError(f"{path} line {number} has the key {dup!r} twice: keep one of them")
    return record


def _json_kind(value: object) -> str:
    kinds = {list: "array", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


def _read_parquet(path: Path) -> Columns:
    """Checked against the memory available twice before values are decoded: from the footer, then with the text
    columns read as dictionaries (see budget.py)."""
    refuse_non_parquet(path)
    schema = _parquet(path, pq.read_schema)
    refuse_duplicates(path, schema.names)  # before read_table, which fails on them
    check_parquet_metadata(path, _parquet(path, pq.read_metadata))
    texts = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
             or pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
    table = _parquet(path, lambda p, **fs: pq.read_table(p, read_dictionary=texts, **fs))
    check_decoded(path, table)
    if table.num_rows == 0:
        raise PipelineError(f"data file has no rows: {path}")
    return {name: table.column(name).to_pylist() for name in table.column_names}


def _parquet(path: Path, read: Callable[..., T]) -> T:
    """`read(path)` for a local file; a file on object storage is named by its key and filesystem."""
    source, filesystem = arrow_source(path)
    try:
        return read(source, **filesystem)
    except Exception as exc:  # pyarrow raises several types for damaged files, some with multi-line messages
        raise PipelineError(f"cannot read {path} as Parquet ({first_line(exc)}): check that the file is "
                            "complete") from None


def stored_type(path: Path, column: str, value: object) -> str:
    """How a non-text value is stored, for error messages: the Arrow type for Parquet, the JSON kind for JSON Lines.
    Read only on the error path, so a reader need not carry types along with its columns."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt == "parquet":
        try:
            source, filesystem = arrow_source(path)
            return f"Arrow type {pq.read_schema(source, **filesystem).field(column).type}"
        except (OSError, KeyError, ValueError):  # a remote or changed file: fall back to the value's Python type
            return f"{type(value).__name__} values"
    return f"a JSON {_json_kind(value)}" if fmt == "jsonl" else f"{type(value).__name__} values"


def is_missing(value: object) -> bool:
    """True only for an absent value: None, a float NaN (a Parquet or JSON null), or an empty or whitespace-only cell.
    A label spelled 'None', 'NaN', 'null' or 'NA' is a real class name (e.g. 'NA' for 'not applicable')."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and not value.strip()
