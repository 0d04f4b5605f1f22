"""Rows on the cluster: a data file read, validated and fingerprinted by Ray tasks, its texts left in the object store.

Ray Data's read tasks turn the file into blocks that stay in the cluster's object store. One task per block checks
its rows (the local reader's one-line errors) and sends back only what the driver needs: a 16-byte digest of each
text (the seeded split of identical texts), each row's label as an index into the block's few distinct labels, and
ids or split names only when the file has such columns. The driver then names the labels and splits the rows exactly
as the local engine does, and one task per range of RANGE_ROWS rows hashes that range (the data fingerprint is the
ordered combination of range digests, as Dataset computes it) and counts its tokens (the key's long-text part). So
the driver holds a few tens of bytes per row, never a text.
"""

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pipeline.data import ColumnSpec, Dataset
from pipeline.data.dataset import (
    RANGE_ROWS,
    _column,
    _ids,
    _require_train_rows,
    _splits_from_column,
    _texts,
    combine_ranges,
    dataset_name,
    encode_labels,
    range_digest,
    refuse_missing_labels,
    split_by_keys,
)
from pipeline.data.tables import detect_format, is_missing
from pipeline.embed.loading import load_tokenizer
from pipeline.embed.sources import resolve_model
from pipeline.embed.windows import token_counts
from pipeline.errors import PipelineError, first_line
from pipeline.storage import Location, RemotePath


class RowNumbers(Sequence):
    """The ids of a file without an id column ('0', '1', ...), made on demand instead of held per row."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [str(i) for i in range(*index.indices(self.n))]
        return str(range(self.n)[index])


@dataclass(frozen=True)
class Block:
    """One block of the file in the object store: its reference, first row and row count."""

    ref: object
    start: int
    rows: int


@dataclass(frozen=True)
class ClusterRows:
    """A data set as the Ray driver holds it: the Dataset's fields except the texts, which stay in `blocks`."""

    name: str
    blocks: list[Block]
    text_col: str
    labels: np.ndarray
    label_names: list[str]
    splits: np.ndarray
    split_origin: str
    fingerprint: str
    ids: Sequence[str]

    def __len__(self) -> int:
        return len(self.labels)

    split_counts = Dataset.split_counts

    def overlapping(self, a: int, b: int) -> list[Block]:
        return [k for k in self.blocks if k.start < b and k.start + k.rows > a]


def texts_of(blocks: list[Block], tables: list, column: str, a: int, b: int) -> list[str]:
    """Rows a..b of the text column, from the blocks that hold them (fetched by the caller: tables[i] of blocks[i])."""
    texts: list[str] = []
    for block, table in zip(blocks, tables, strict=True):
        lo, hi = max(a, block.start) - block.start, min(b, block.start + block.rows) - block.start
        texts.extend(table.column(column).slice(lo, hi - lo).to_pylist())
    return texts


def read_blocks(path: Location, cols: ColumnSpec) -> list:
    """Ray Data reads the file on the cluster (in file order); the driver gets the blocks' references only. Named
    columns of a CSV or TSV are read as strings, as the local reader reads them (no '007' turned into 7)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import ray.data

    fmt = detect_format(path)
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    # a local path whole: the read tasks run in other folders (and on other nodes, where it must exist too)
    source, fs = (str(path.resolve()), {}) if isinstance(path, Path) else (path.key, {"filesystem": path.fs})
    named = {c: pa.string() for c in (cols.text, cols.label, cols.id, cols.split) if c}
    strings = {"convert_options": pacsv.ConvertOptions(column_types=named)}
    readers = {"csv": lambda: ray.data.read_csv(source, **strings, **fs),
               "tsv": lambda: ray.data.read_csv(source, parse_options=pacsv.ParseOptions(delimiter="\t"), **strings,
                                                **fs),
               "jsonl": lambda: ray.data.read_json(source, lines=True, **fs),
               "parquet": lambda: ray.data.read_parquet(source, **fs)}
    if isinstance(path, Path) and not path.exists():
        raise PipelineError(f"data file not found: {path} (check the path given to --data / DATA=)")
    if isinstance(path, RemotePath) and not path.is_file():
        raise PipelineError(f"data file not found: {path} (check the URI given to --data / DATA=)")
    try:
        return readers[fmt]().to_arrow_refs()
    except Exception as exc:  # Ray wraps the reader's error; its first line says what is wrong
        raise PipelineError(f"Ray Data cannot read {path}: {first_line(exc)}") from None


def scan_block(table, start: int, cols: ColumnSpec, where: Location) -> dict:
    """A Ray task: one block's rows checked as the local reader checks them (row numbers of the whole file), and
    the small per-row record the driver needs. A problem comes back as its message (the driver raises the first)."""
    columns = {name: table.column(name) for name in table.column_names}
    try:
        values = {c: columns[c].to_pylist() if c in columns else None for c in (cols.text, cols.label) if c}
        texts = _texts(_as_columns(columns, cols.text, values), cols.text, where, start)
        labels = _column(_as_columns(columns, cols.label, values), cols.label, where, "label") if cols.label else []
        distinct, local, missing = _label_codes(labels)
        record = {"rows": len(texts), "digests": _digests(texts), "distinct": distinct, "local": local,
                  "missing": [start + i for i in missing]}
        if cols.id:
            record["ids"] = [str(v) for v in _column(columns, cols.id, where, "id").to_pylist()]
        if cols.split:
            record["splits"] = _splits_from_column(_column(columns, cols.split, where, "split").to_pylist(),
                                                   cols.split)
        return record
    except PipelineError as exc:
        return {"error": str(exc)}


def _as_columns(columns: dict, name: str, values: dict) -> dict:
    """The block's columns, with `name` as a Python list (the dataset checks take lists) when the block has it."""
    return {**columns, name: values[name]} if name in columns else columns


def _digests(texts: list[str]) -> np.ndarray:
    return np.array([hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=16).digest() for t in texts],
                    dtype="S16")


def _label_codes(values: list) -> tuple[list, np.ndarray, list[int]]:
    """The block's distinct labels (first-seen order; a list or dict label is kept as it is, for the driver's
    message), each row's index into them, and the rows without a label."""
    distinct: dict = {}
    local = np.zeros(len(values), dtype=np.int32)
    missing = []
    for i, v in enumerate(values):
        if is_missing(v):
            missing.append(i)
        elif isinstance(v, (list, dict, bytes)):
            return [v], local, missing
        else:
            local[i] = distinct.setdefault(v, len(distinct))
    return list(distinct), local, missing


def hash_range(label_names: list[str], ids: list[str], labels: np.ndarray, splits: list[str], column: str,
               model_spec: str, a: int, b: int, blocks: list[Block], *tables) -> tuple[str, np.ndarray]:
    """A Ray task: one range's digest (data fingerprint) and every text's whole token count (the key's reading)."""
    texts = texts_of(blocks, list(tables), column, a, b)
    digest = range_digest(label_names, zip(ids, texts, labels.tolist(), splits, strict=True))
    fast = load_tokenizer(resolve_model(model_spec)).backend_tokenizer
    return digest, token_counts(fast, texts).astype(np.int32)


def cluster_rows(path: Location, cols: ColumnSpec, test_size: float, seed: int, model_spec: str,
                 remote: dict) -> tuple[ClusterRows, np.ndarray]:
    """Read, check, split and fingerprint the file on the cluster; returns the rows and every text's token count.
    `remote`: the Ray options of the tasks (e.g. the storage variables to pass). No label column (`cols.label`
    empty): the texts alone, e.g. predict's input."""
    import ray

    refs = read_blocks(path, cols)
    sizes = ray.get([ray.remote(_num_rows).options(**remote).remote(ref) for ref in refs])
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int).tolist()
    blocks = [Block(ref, s, n) for ref, s, n in zip(refs, starts[:-1], sizes, strict=True) if n]
    scan = ray.remote(scan_block).options(**remote)
    records = ray.get([scan.remote(b.ref, b.start, cols, path) for b in blocks])
    if not blocks:
        raise PipelineError(f"data file has no rows: {path}")
    for record in records:
        if "error" in record:
            raise PipelineError(record["error"])
    n = sum(r["rows"] for r in records)
    if cols.label:
        labels, label_names = _labels(records, cols.label)
        splits, origin = _splits(records, cols, labels, test_size, seed)
    else:  # texts to predict, as data.unlabelled makes them: one placeholder class, every row in 'test'
        labels, label_names = np.zeros(n, dtype=np.int64), ["unlabelled"]
        splits, origin = np.full(n, "test", dtype=object), "unlabelled texts"
    ids = _given_ids(records, cols, path, n)
    rows = ClusterRows(dataset_name(path), blocks, cols.text, labels, label_names, splits, origin, "", ids)
    task = ray.remote(hash_range).options(**remote)
    parts = ray.get([task.remote(label_names, ids[a:b], labels[a:b], splits[a:b].tolist(), cols.text, model_spec,
                                 a, b, rows.overlapping(a, b), *[k.ref for k in rows.overlapping(a, b)])
                     for a, b in ((a, min(a + RANGE_ROWS, n)) for a in range(0, n, RANGE_ROWS))])
    fingerprint = combine_ranges([digest for digest, _ in parts])
    lengths = np.concatenate([counts for _, counts in parts]).astype(np.int64)
    return replace(rows, fingerprint=fingerprint), lengths


def _num_rows(table) -> int:
    return table.num_rows


def _labels(records: list[dict], column: str) -> tuple[np.ndarray, list[str]]:
    """Every row's label index and the label names, from the blocks' distinct labels (the local rules: one kind of
    label, numbers in numeric order, words alphabetically)."""
    missing = [row for r in records for row in r["missing"]]
    union = list(dict.fromkeys(v for r in records for v in r["distinct"] if not isinstance(v, (list, dict, bytes))))
    nested = [v for r in records for v in r["distinct"] if isinstance(v, (list, dict, bytes))]
    if missing and (union or nested):
        refuse_missing_labels(missing, column)
    codes, names = encode_labels(nested[:1] + union or [None], column)
    lookup = dict(zip(union, codes.tolist(), strict=True))
    return np.concatenate([np.array([lookup[v] for v in r["distinct"]], dtype=np.int64)[r["local"]]
                           if r["distinct"] else np.zeros(r["rows"], dtype=np.int64) for r in records]), names


def _given_ids(records: list[dict], cols: ColumnSpec, where: Location, n: int) -> Sequence[str]:
    if not cols.id:
        return RowNumbers(n)
    return _ids({cols.id: [i for r in records for i in r["ids"]]}, cols.id, where, n)


def _splits(records: list[dict], cols: ColumnSpec, labels: np.ndarray, test_size: float,
            seed: int) -> tuple[np.ndarray, str]:
    if cols.split:
        splits = np.concatenate([r["splits"] for r in records])
        _require_train_rows(splits, cols.split)
        return splits, f"column '{cols.split}'"
    if not 0 < test_size < 1:
        raise PipelineError(f"--test-size must be between 0 and 1, got {test_size}")
    keys = np.concatenate([r["digests"] for r in records])
    return split_by_keys(keys, labels, test_size, seed), f"auto (test_size={test_size}, seed={seed})"
