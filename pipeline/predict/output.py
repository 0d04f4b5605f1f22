"""Predict's output file: its suffix decides its format, and a Parquet input's columns keep their exact Arrow types.

Why a module of its own: the two promises (an output is what its name says; a Parquet round trip changes no column
type, be it a timestamp with its unit and zone, an unsigned or narrow integer, a decimal or a dictionary) are
checked in one place, before any embedding starts, for both the file and the --text paths. An input or output on
object storage (a RemotePath) is compared by its URI: it can be no local file, run file or device.
"""

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.errors import PipelineError, capped
from pipeline.storage import Location, RemotePath, atomic_writer

OUTPUT_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
                  ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


def output_format(path: Location) -> str:
    """The format `path`'s suffix names. A device or pipe without a suffix (/dev/stdout) gets CSV; any other
    suffix is refused rather than written as CSV under a name that says something else."""
    fmt = OUTPUT_FORMATS.get(path.suffix.lower())
    if fmt is not None:
        return fmt
    if not path.suffix and isinstance(path, Path) and path.exists() and not path.is_file() and not path.is_dir():
        return "csv"
    known = ", ".join(sorted(OUTPUT_FORMATS))
    raise PipelineError(f"--output {path}: its suffix '{path.suffix}' names no format predict writes: end it in one "
                        f"of {known}")


def refuse_overwriting_input(input_path: Location, outputs: list[Location]) -> None:
    """An output that is the input file (by name or by a link to it; on object storage, by URI) would replace the
    data being read."""
    for output in outputs:
        if _same_file(output, input_path):
            raise PipelineError(f"--output {output} is the input file {input_path}: predict never overwrites its "
                                "input; write the predictions to another file")


def _same_file(a: Location, b: Location) -> bool:
    if isinstance(a, RemotePath) or isinstance(b, RemotePath):
        return str(a) == str(b)
    return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))


def refuse_run_files(run: Path, model_ref: str, outputs: list[Location], option: str) -> None:
    """An output named like a file of the run (run.json, head.skops: e.g. --output <run>/run.json, or an export whose
    .json lands on run.json) or of the run's model folder would break what it was made from: refuse before work."""
    model = Path(model_ref)
    owners = [Path(run).resolve(), *([model.resolve()] if model.is_dir() else [])]
    for output in (o for o in outputs if isinstance(o, Path)):  # a run and its model are local folders
        if (output.exists() or output.is_symlink()) and output.resolve().parent in owners:
            raise PipelineError(f"{option} {outputs[0]} would overwrite {output}, a file of the run or its model: "
                                "write to another name or folder")


def write_table(path: Location, table: pa.Table) -> None:
    """A whole table in the suffix's format, in one atomic step (see table_writer)."""
    with table_writer(path, table.schema) as write:
        write(table)


@contextmanager
def table_writer(path: Location, schema: pa.Schema) -> Iterator[Callable[[pa.Table], None]]:
    """A function that appends tables of `schema` to `path` in the suffix's format, published in one atomic step
    when the block ends (a temp file and a rename locally, a temporary object and a move on object storage:
    storage.atomic_writer), so an output larger than memory is written as it is made and a failure leaves none."""
    fmt = output_format(path)
    _refuse_unwritable(path, schema, fmt)
    with atomic_writer(path) as sink:
        if fmt == "jsonl":
            yield lambda table: sink.write("".join(json.dumps(row, ensure_ascii=False, default=str) + "\n"
                                                   for row in table.to_pylist()).encode())
            return
        if fmt == "parquet":
            writer = pq.ParquetWriter(sink, schema)
            yield writer.write_table
        else:
            plain = pa.schema([f.with_type(_plain_type(f.type)) for f in schema], metadata=schema.metadata)
            writer = pacsv.CSVWriter(sink, plain, write_options=pacsv.WriteOptions(delimiter="\t" if fmt == "tsv"
                                                                                   else ","))
            yield lambda table: writer.write_table(table.cast(plain))
        writer.close()


def _refuse_unwritable(path: Location, schema: pa.Schema, fmt: str) -> None:
    """Bytes have no faithful text form, and CSV/TSV cells hold no lists or structs: refuse, naming the columns
    and the formats that hold them, instead of writing something else under the name."""
    binary = [f.name for f in schema if _is_binary(f.type)]
    nested = [f.name for f in schema if pa.types.is_nested(f.type)] if fmt in ("csv", "tsv") else []
    for names, what, fix in ((binary, "bytes", ".parquet"), (nested, "nested values", ".parquet or .jsonl")):
        if names and fmt != "parquet":
            raise PipelineError(f"cannot write {path} as {fmt.upper()}: column(s) {capped(names, 5)} hold {what}; "
                                f"write {fix} instead")


def _is_binary(kind: pa.DataType) -> bool:
    value = kind.value_type if pa.types.is_dictionary(kind) else kind
    return pa.types.is_binary(value) or pa.types.is_large_binary(value) or pa.types.is_fixed_size_binary(value)


def _plain_type(kind: pa.DataType) -> pa.DataType:
    """A dictionary column as its values: the CSV writer cannot write the dictionary type itself."""
    return kind.value_type if pa.types.is_dictionary(kind) else kind
