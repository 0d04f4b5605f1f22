"""Predict's output file: its suffix decides its format, and a Parquet input's columns keep their exact Arrow types.

Why a module of its own: the two promises (an output is what its name says; a Parquet round trip changes no column
type, be it a timestamp with its unit and zone, an unsigned or narrow integer, a decimal or a dictionary) are
checked in one place, before any embedding starts, for both the file and the --text paths. An input or output on
object storage (a RemotePath) is compared by its URI: it can be no local file, run file or device.
"""

import json
import os
from pathlib import Path

import pyarrow as pa

from pipeline.errors import PipelineError, capped
from pipeline.storage import Location, RemotePath, arrow_source, write_bytes

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


def typed_input(input_path: Location, names: list[str]) -> pa.Table | None:
    """A Parquet input's own columns, types untouched, for a Parquet output (None for other inputs: their values
    are text or JSON, and Arrow's inference keeps them as they were read)."""
    if OUTPUT_FORMATS.get(input_path.suffix.lower()) != "parquet" or not input_path.is_file():
        return None
    import pyarrow.parquet as pq

    source, filesystem = arrow_source(input_path)
    return pq.read_table(source, columns=names, **filesystem)


def write_table(path: Location, table: pa.Table) -> None:
    """Serialise in memory in the suffix's format, then write in one atomic step (a temp file and a rename locally, a
    temporary object and a move on object storage: storage.write_bytes)."""
    fmt = output_format(path)
    _refuse_unwritable(path, table, fmt)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        payload = sink.getvalue().to_pybytes()
    elif fmt == "jsonl":
        payload = "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in table.to_pylist()).encode()
    else:
        payload = _delimited(table, "\t" if fmt == "tsv" else ",")
    write_bytes(path, payload)


def _refuse_unwritable(path: Path, table: pa.Table, fmt: str) -> None:
    """Bytes have no faithful text form, and CSV/TSV cells hold no lists or structs: refuse, naming the columns
    and the formats that hold them, instead of writing something else under the name."""
    binary = [f.name for f in table.schema if _is_binary(f.type)]
    nested = [f.name for f in table.schema if pa.types.is_nested(f.type)] if fmt in ("csv", "tsv") else []
    for names, what, fix in ((binary, "bytes", ".parquet"), (nested, "nested values", ".parquet or .jsonl")):
        if names and fmt != "parquet":
            raise PipelineError(f"cannot write {path} as {fmt.upper()}: column(s) {capped(names, 5)} hold {what}; "
                                f"write {fix} instead")


def _is_binary(kind: pa.DataType) -> bool:
    value = kind.value_type if pa.types.is_dictionary(kind) else kind
    return pa.types.is_binary(value) or pa.types.is_large_binary(value) or pa.types.is_fixed_size_binary(value)


def _delimited(table: pa.Table, delimiter: str) -> bytes:
    import pyarrow.csv as pacsv

    sink = pa.BufferOutputStream()
    plain = pa.table({f.name: _plain(table.column(f.name)) for f in table.schema})
    pacsv.write_csv(plain, sink, pacsv.WriteOptions(delimiter=delimiter))
    return sink.getvalue().to_pybytes()


def _plain(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A dictionary column as its values: the CSV writer cannot write the dictionary type itself."""
    if pa.types.is_dictionary(column.type):
        return column.cast(column.type.value_type)
    return column
