"""Memory a table will take once read, estimated before it is read: a few kilobytes of Parquet can hold gigabytes
of text (a compressed or dictionary-encoded column repeats one long value), and a process that runs out of memory
dies without a word, or takes the machine down with it. The estimate is refused when it exceeds the memory
available now, with one line saying how large the file really is and what to do."""

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import PipelineError

PY_CELL_BYTES = 64  # a cell as a Python object (str header, list slot): what reading into columns adds per value
TEXT_FACTOR = 3  # a CSV/JSON Lines file in memory: its bytes, the decoded text, the parsed values


def available_memory() -> int:
    """Bytes the system can give this process now without swapping (MemAvailable), else its free pages."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: no refusal on a guess


def refuse_beyond_memory(path: Path, need: int, what: str) -> None:
    have = available_memory()
    if need > have:
        raise PipelineError(f"{path} would take about {need / 2**30:.1f} GiB of memory once read ({what}), more than "
                            f"the {have / 2**30:.1f} GiB available: split it into smaller files, keep only the "
                            "columns needed, or free memory")


def check_text_file(path: Path, size: int) -> None:
    refuse_beyond_memory(path, TEXT_FACTOR * size, f"a {size / 2**20:.0f} MiB text file")


def check_parquet_metadata(path: Path, metadata: pq.FileMetaData) -> None:
    """Before any page is read: every column's uncompressed size, as the footer records it, and a Python object per
    cell."""
    raw = sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups))
    cells = metadata.num_rows * metadata.num_columns
    refuse_beyond_memory(path, raw + PY_CELL_BYTES * cells, f"{raw / 2**20:.0f} MiB uncompressed")


def check_decoded(path: Path, table: pa.Table) -> None:
    """After reading with text columns kept as dictionaries (small: each distinct value once), before they are
    decoded: a dictionary-encoded column repeats its values once per row when decoded."""
    decoded = sum(_decoded_bytes(table.column(name)) for name in table.column_names)
    cells = table.num_rows * table.num_columns
    refuse_beyond_memory(path, decoded + PY_CELL_BYTES * cells, f"{decoded / 2**20:.0f} MiB decoded")


def _decoded_bytes(column: pa.ChunkedArray) -> int:
    if not pa.types.is_dictionary(column.type):
        return column.nbytes
    total = 0
    for chunk in column.chunks:
        lengths = pc.binary_length(chunk.dictionary)
        total += int(pc.sum(pc.take(lengths, chunk.indices)).as_py() or 0)
    return total
