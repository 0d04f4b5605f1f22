"""The embedding cache: one folder per key, Parquet shards with one fixed-size-list column per pooling, a manifest.

Layout of `<root>/<data>__<model>__<key12>/`:
  _key.json             what the key was made of, and the shard size (written first)
  shard-00000.parquet   id, split, label, n_tokens, truncated, emb_<pooling>... (page checksums on)
  _manifest.json        model identity, poolings and dims, label names, shard list, stats (written last)
Every write goes to a temp file and is renamed into place, so a killed run leaves whole files or none.
"""

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock, Timeout

from pipeline.errors import PipelineError
from pipeline.paths import atomic_write_json, hash_file_into, publish, safe_name

SCHEMA_VERSION = 1
EMB_PREFIX = "emb_"


def cache_key(encoder_settings: dict, data_fingerprint: str) -> str:
    """sha256 of everything that changes the vectors: model and tokenizer identity, max length, dtype, the data."""
    blob = json.dumps({"schema": SCHEMA_VERSION, "encoder": encoder_settings, "data": data_fingerprint},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def cache_dir(root: Path, data_name: str, model_name: str, key: str) -> Path:
    """A folder name a person can read; the names are sanitised so nothing escapes `root`."""
    return root / f"{safe_name(data_name)}__{safe_name(model_name.split('/')[-1])}__{key[:12]}"


@dataclass(frozen=True)
class Embeddings:
    """Rows of one cache for one pooling, in input order."""

    X: np.ndarray
    y: np.ndarray
    ids: np.ndarray
    splits: np.ndarray
    label_names: list[str]

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        rows = self.splits == name
        return self.X[rows], self.y[rows]


class EmbeddingCache:
    """Reads and writes one cache folder. Writers hold `lock()`; readers trust only what the manifest vouches for."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def manifest_path(self) -> Path:
        return self.path / "_manifest.json"

    def shard_path(self, index: int) -> Path:
        return self.path / f"shard-{index:05d}.parquet"

    def lock(self) -> FileLock:
        return FileLock(str(self.path.parent / f".{self.path.name}.lock"))

    def acquire(self) -> FileLock:
        """Take the writer lock or stop at once: two runs on one cache would interleave shards."""
        lock = self.lock()
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise PipelineError(f"another run is writing {self.path} right now: wait for it to finish, "
                                "then run the same command again") from None
        return lock

    def start(self, key: str, key_parts: dict, shard_rows: int) -> int:
        """Write _key.json for a new cache, or check an existing one; returns the cache's shard size."""
        key_file = self.path / "_key.json"
        if key_file.exists():
            existing = json.loads(key_file.read_text())
            if existing.get("key") != key:
                raise PipelineError(f"{self.path} holds a cache with another key: remove that folder and run again")
            return int(existing["shard_rows"])
        record = {"key": key, "shard_rows": shard_rows, **key_parts}
        atomic_write_json(key_file, record, sort_keys=True)
        return shard_rows

    def shard_columns(self, index: int, ids: list[str]) -> set[str] | None:
        """The pooling columns of a finished shard, or None if it is missing, unreadable or not these rows."""
        vectors = self.shard_vectors(index, ids)
        return None if vectors is None else set(vectors)

    def shard_vectors(self, index: int, ids: list[str]) -> dict[str, np.ndarray] | None:
        """A finished shard's vectors by pooling, or None if it is missing, damaged or holds other rows. A full read
        with page checksums: a shard damaged anywhere is recomputed, never trusted."""
        if not self.shard_path(index).exists():
            return None
        try:
            table = self.read_shard(index)
        except Exception:
            return None
        if table.num_rows != len(ids) or table.column("id").to_pylist() != ids:
            return None
        return {n[len(EMB_PREFIX):]: _flat_matrix(table.column(n)) for n in table.column_names
                if n.startswith(EMB_PREFIX)}

    def read_shard(self, index: int) -> pa.Table:
        return pq.read_table(self.shard_path(index), page_checksum_verification=True)

    def write_shard(self, index: int, table: pa.Table) -> None:
        path = self.shard_path(index)
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            pq.write_table(table, tmp, write_page_checksum=True)
            publish(Path(tmp), path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def drop_manifest(self) -> None:
        """Before shards change, the old manifest must go: it would vouch for files that no longer match it."""
        self.manifest_path.unlink(missing_ok=True)

    def write_manifest(self, manifest: dict) -> None:
        atomic_write_json(self.manifest_path, manifest, sort_keys=True)

    def manifest(self) -> dict:
        if not self.manifest_path.exists():
            raise PipelineError(f"{self.path} is not a finished cache (no _manifest.json): run the same "
                                "`bert-pipeline embed` command again to complete it")
        try:
            return json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            raise PipelineError(f"the manifest of {self.path} is damaged: run `bert-pipeline embed` again "
                                "to rebuild it") from None


def shard_table(ids: list[str], splits: list[str], labels: np.ndarray, n_tokens: np.ndarray,
                truncated: np.ndarray, vectors: dict[str, np.ndarray]) -> pa.Table:
    """One shard as an Arrow table; vectors become fixed_size_list<float32> columns without a per-row copy."""
    columns = {"id": pa.array(ids, pa.string()), "split": pa.array(splits, pa.string()),
               "label": pa.array(labels, pa.int64()), "n_tokens": pa.array(n_tokens, pa.int32()),
               "truncated": pa.array(truncated, pa.bool_())}
    for name, matrix in vectors.items():
        flat = np.ascontiguousarray(matrix, dtype=np.float32).reshape(len(ids), -1)
        columns[EMB_PREFIX + name] = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), flat.shape[1])
    return pa.table(columns)


def load_embeddings(cache: Path | str, pooling: str, split: str | None = None) -> Embeddings:
    """Vectors of one pooling (or 'layerK', one layer of 'layers') as numpy arrays, checked against the manifest.

    A shard that is missing, of the wrong size or row count, or fails its page checksums is refused: a damaged
    cache is never read as data.
    """
    store = EmbeddingCache(Path(cache))
    manifest = store.manifest()
    column, layer = pooling_column(pooling, manifest)
    parts = [_read_checked(store, shard, column) for shard in manifest["shards"]]
    table = pa.concat_tables(parts)
    if table.num_rows != manifest["rows"]:
        raise PipelineError(f"{store.path} has {table.num_rows} rows but its manifest says {manifest['rows']}: "
                            "run `bert-pipeline embed` again to repair it")
    X = _to_matrix(table.column(EMB_PREFIX + column), manifest["poolings"][column]["shape"], layer)
    result = Embeddings(X, table.column("label").to_numpy(), np.asarray(table.column("id").to_pylist(), dtype=object),
                        np.asarray(table.column("split").to_pylist(), dtype=object), manifest["label_names"])
    if split is None:
        return result
    rows = result.splits == split
    return Embeddings(result.X[rows], result.y[rows], result.ids[rows], result.splits[rows], result.label_names)


def pooling_source(name: str) -> tuple[str, int | None]:
    """'layerK' names one layer of the 'layers' column; every other name is its own column."""
    match = re.match(r"^layer(\d+)$", name)
    return ("layers", int(match.group(1))) if match else (name, None)


def pooling_column(pooling: str, manifest: dict) -> tuple[str, int | None]:
    """The cache column holding `pooling` (and the layer, for 'layerK'); refuses names the cache lacks."""
    available = list(manifest["poolings"])
    _, layer = pooling_source(pooling)
    if layer is not None and "layers" in available:
        n_layers = manifest["poolings"]["layers"]["shape"][0]
        if layer >= n_layers:
            raise PipelineError(f"pooling '{pooling}' does not exist: this model has layers 0..{n_layers - 1}")
        return "layers", layer
    if pooling not in available:
        raise PipelineError(f"pooling '{pooling}' is not in the cache {manifest['name']} (it has: "
                            f"{', '.join(available)}): choose one of those, or add it with "
                            f"`make embed POOLING={pooling}`")
    return pooling, None


def _read_checked(store: EmbeddingCache, shard: dict, column: str) -> pa.Table:
    """Read one shard's columns only after its size and sha256 match the manifest's record."""
    path = store.path / shard["file"]
    problem = "is missing"
    if path.exists():
        payload = path.read_bytes()
        problem = "has the wrong size" if len(payload) != shard["bytes"] else None
        if problem is None and hashlib.sha256(payload).hexdigest() != shard.get("sha256"):
            problem = "does not match its recorded sha256"
        if problem is None:
            table = pq.read_table(pa.BufferReader(payload), columns=["id", "split", "label", EMB_PREFIX + column])
            if table.num_rows == shard["rows"]:
                return table
            problem = "has the wrong row count"
    raise PipelineError(f"cache shard {path} {problem}: run the same `bert-pipeline embed` command again to "
                        "recompute it")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    hash_file_into(digest, path)
    return digest.hexdigest()


def _flat_matrix(column: pa.ChunkedArray) -> np.ndarray:
    """A fixed_size_list column as an (rows, width) array, without a per-row copy."""
    return column.combine_chunks().values.to_numpy(zero_copy_only=False).reshape(len(column), -1)


def _to_matrix(column: pa.ChunkedArray, shape: list[int], layer: int | None) -> np.ndarray:
    matrix = _flat_matrix(column).reshape(len(column), *shape)
    return matrix[:, layer] if layer is not None else matrix


def find_cache(root: Path, data_name: str, model_name: str, data_fingerprint: str) -> Path | None:
    """The newest finished cache of this data (same rows, labels and split) and model under `root`, if any."""
    prefix = f"{safe_name(data_name)}__{safe_name(model_name.split('/')[-1])}__"
    found = []
    for path in Path(root).glob(prefix + "*"):
        try:
            manifest = json.loads((path / "_manifest.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if manifest.get("data", {}).get("fingerprint") == data_fingerprint:
            found.append((manifest.get("created", ""), path))
    return max(found)[1] if found else None
