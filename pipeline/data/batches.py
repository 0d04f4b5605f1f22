"""A table file read in batches of rows, every batch an Arrow table of one schema, so that a file larger than memory
can be read row by row and written back out (predict adds its columns to each batch and appends it to its output).

Each batch holds what `read_table` would have given for those rows, typed as predict has always written them: a
CSV or TSV cell is the text it was (the same parser, row rules and header checks as `read_table`), a Parquet column
keeps its exact Arrow type and the file's schema metadata, and a JSON Lines column gets the type Arrow infers for
the whole column. That last one needs the whole column, so `table_schema` reads a JSON Lines file once for it
(batch by batch, unifying the types it finds; a column whose values have no common type is written as text, as
before), and the batches are read in a second pass.
"""

import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import TextIO

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.tables import delimited_rows, detect_format, json_object
from pipeline.errors import PipelineError
from pipeline.storage import Location

BATCH_ROWS = 4096  # rows per batch: a few MB of texts, whatever the file's size


def table_schema(path: Location) -> pa.Schema:
    """The columns every batch of `path` has, in file order (a JSON Lines file is read once for them)."""
    fmt = detect_format(path)
    if fmt == "parquet":
        return _parquet_file(path).schema_arrow
    if fmt == "jsonl":
        return _jsonl_schema(path)
    with _text(path) as lines:
        header = next(delimited_rows(path, lines, "\t" if fmt == "tsv" else ","))
    return pa.schema([(name, pa.string()) for name in header if name])


def table_batches(path: Location, schema: pa.Schema, rows: int | None = None) -> Iterator[pa.Table]:
    """The file's rows in order, at most `rows` (BATCH_ROWS) at a time, each batch with `schema` (table_schema's)."""
    fmt, rows = detect_format(path), rows or BATCH_ROWS
    if fmt == "parquet":
        for batch in _parquet_file(path).iter_batches(batch_size=rows):
            yield pa.Table.from_batches([batch], schema=schema)
        return
    with _text(path) as lines:
        if fmt == "jsonl":
            for records in _chunks(_json_records(path, lines), rows):
                yield _typed({name: [r.get(name) for r in records] for name in schema.names}, schema)
            return
        table = delimited_rows(path, lines, "\t" if fmt == "tsv" else ",")
        header = next(table)
        for chunk in _chunks(table, rows):
            yield _typed({name: [row[i] for row in chunk] for i, name in enumerate(header) if name}, schema)


def arrow_column(values: list) -> pa.Array:
    """A column as Arrow, its type inferred; a column mixing types (possible in JSON Lines) is kept as text."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        return pa.array(_as_text(values), pa.string())


def _as_text(values: list) -> list:
    return [None if v is None else v if isinstance(v, str) else json.dumps(v, default=str) for v in values]


def _typed(columns: dict[str, list], schema: pa.Schema) -> pa.Table:
    """One batch's values as `schema` says; a text column holding other values (their file-wide types differ) gets
    them as JSON text, as arrow_column does for a whole column."""
    arrays = []
    for field in schema:
        try:
            arrays.append(pa.array(columns[field.name], field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            if field.type != pa.string():
                raise PipelineError(f"column '{field.name}' changes type within the file (expected "
                                    f"{field.type}): give its values one type") from None
            arrays.append(pa.array(_as_text(columns[field.name]), pa.string()))
    return pa.Table.from_arrays(arrays, schema=schema)


def _jsonl_schema(path: Location) -> pa.Schema:
    """Each column's type over the whole file: the batches' inferred types unified (an int and a float column part
    make a float column, a struct's fields are merged), text where they have no common type."""
    types: dict[str, pa.DataType] = {}
    with _text(path) as lines:
        for records in _chunks(_json_records(path, lines), BATCH_ROWS):
            for name in dict.fromkeys(key for record in records for key in record):
                found = arrow_column([record.get(name) for record in records]).type
                types[name] = _unify(types.get(name, pa.null()), found)
    if not types:
        raise PipelineError(f"data file has no named columns: {path} (give each row fields such as text and label)")
    return pa.schema(list(types.items()))


def _unify(a: pa.DataType, b: pa.DataType) -> pa.DataType:
    if a == b:
        return a
    try:
        merged = pa.unify_schemas([pa.schema([("v", a)]), pa.schema([("v", b)])], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, NotImplementedError):
        return pa.string()
    return merged.field("v").type


def _json_records(path: Location, lines: TextIO) -> Iterator[dict]:
    """The file's objects, line by line (split on '\\n' only, as read_table does), blank lines skipped."""
    for number, line in enumerate(lines, start=1):
        if line.strip():
            yield json_object(path, number, line)


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    while chunk := list(islice(items, size)):
        yield chunk


@contextmanager
def _text(path: Location) -> Iterator[TextIO]:
    """The file as UTF-8 text lines (a BOM dropped), read as needed; lines end at '\\n' only, untranslated."""
    raw = path.open("rb")
    with io.TextIOWrapper(raw, encoding="utf-8-sig", newline="" if detect_format(path) != "jsonl" else "\n") as text:
        try:
            yield text
        except UnicodeDecodeError as exc:
            raise PipelineError(f"{path} is not UTF-8 text (byte {exc.start} of a read block): save it as "
                                "UTF-8") from None


def _parquet_file(path: Location) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path if isinstance(path, Path) else path.fs.open_input_file(path.key))
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise PipelineError(f"cannot read {path} as Parquet ({str(exc).splitlines()[0]}): check that the file "
                            "is complete") from None
