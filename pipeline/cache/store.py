"""Reading and writing one cache folder: the shards, the key file, the manifest, the lock, and finding a cache."""

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

from pipeline.cache.records import MANIFEST_FILE, Manifest, ShardRecord
from pipeline.cache.shards import EMB_PREFIX, TEXT, parquet_options
from pipeline.errors import PipelineError
from pipeline.paths import file_sha256, publish, read_whole, safe_name, writer_lock
from pipeline.storage import Location, RemotePath, arrow_source, location, publish_parquet, stamp, write_json
from pipeline.storage.lease import Lease

KEY_FILE = "_key.json"
LAYERS = "layers"  # the per-layer column; 'layerK' names its layer K


def cache_dir(embeddings: Location, data_name: str, model_name: str, key: str) -> Location:
    """A folder name a person can read; the names are sanitised so nothing escapes `embeddings`."""
    return embeddings / f"{safe_name(data_name)}__{safe_name(model_name.split('/')[-1])}__{key[:12]}"


@dataclass(frozen=True)
class Embeddings:
    """Rows of one cache for one pooling, in input order."""

    X: np.ndarray
    y: np.ndarray
    ids: np.ndarray
    splits: np.ndarray
    label_names: list[str]
    texts: np.ndarray | None = None  # None for a cache made before shards kept their texts (None per such row)

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        rows = self.splits == name
        return self.X[rows], self.y[rows]


class EmbeddingCache:
    """Reads and writes one cache folder. Writers hold `lock()`; readers trust only what the manifest vouches for."""

    def __init__(self, path: "Location | str") -> None:
        self.path = location(path)
        self._lease: Lease | None = None  # held while writing to object storage
        self._written: dict[int, tuple[list[int], ShardRecord]] = {}  # index -> (file stamp, its record)

    @property
    def manifest_path(self) -> Location:
        return self.path / MANIFEST_FILE

    def shard_path(self, index: int) -> Location:
        return self.path / f"shard-{index:05d}.parquet"

    def lock(self) -> FileLock:
        return writer_lock(self.path)

    def acquire(self) -> "FileLock | Lease":
        """Take the writer lock or stop at once: two runs on one cache would interleave shards. On object storage
        the lock is a lease object in the cache folder (see pipeline/storage/lease.py)."""
        if isinstance(self.path, RemotePath):
            self._lease = Lease.take(self.path)
            return self._lease
        lock = self.lock()
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise PipelineError(f"another run is writing {self.path} right now: wait for it to finish, "
                                "then run the same command again") from None
        return lock

    def start(self, key: str, key_parts: dict, shard_rows: int) -> int:
        """Write _key.json for a new cache, or check an existing one; returns the cache's shard size.

        A damaged key file (e.g. cut short by a full disk) is rewritten, like a damaged shard is recomputed: the
        folder name holds the key, and every shard is checked against its rows before it is reused."""
        key_file = self.path / KEY_FILE
        existing = _read_json(key_file)
        if isinstance(existing, dict) and isinstance(existing.get("shard_rows"), int) and "key" in existing:
            if existing["key"] != key:
                raise PipelineError(f"{self.path} holds a cache with another key: remove that folder and run again")
            return existing["shard_rows"]
        self.drop_manifest()
        write_json(key_file, {"key": key, "shard_rows": shard_rows, **key_parts}, sort_keys=True)
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
        except (OSError, pa.ArrowException):  # unreadable, truncated or failing its page checksums: recompute it
            return None
        if table.num_rows != len(ids) or table.column("id").to_pylist() != ids:
            return None
        return {n[len(EMB_PREFIX):]: _flat_matrix(table.column(n)) for n in table.column_names
                if n.startswith(EMB_PREFIX)}

    def read_shard(self, index: int) -> pa.Table:
        source, fs = arrow_source(self.shard_path(index))
        return pq.read_table(source, page_checksum_verification=True, **fs)

    def read_columns(self, index: int, columns: list[str]) -> pa.Table:
        """A few small columns of a shard (e.g. its token counts), without the full checksummed read."""
        source, fs = arrow_source(self.shard_path(index))
        return pq.read_table(source, columns=columns, **fs)

    def write_shard(self, index: int, table: pa.Table) -> None:
        """Write a shard atomically and remember its record, hashed here so that a writer thread pays for it while
        the next shard is computed, not the manifest at the end."""
        path = self.shard_path(index)
        options = {"write_page_checksum": True, **parquet_options(table.column_names)}
        if isinstance(path, RemotePath):
            record = ShardRecord(path.name, table.num_rows, *publish_parquet(path, table, **options))
        else:
            record = _write_local_shard(path, table, options)
        self._written[index] = (stamp(path), record)
        if self._lease:
            self._lease.renew()

    def adopt(self, index: int, record: ShardRecord) -> None:
        """The record of a shard another process wrote (a Ray actor), kept as if this object had written it: the
        manifest then takes it as it is while the file is unchanged, instead of reading the shard back to hash it."""
        self._written[index] = (stamp(self.shard_path(index)), record)

    def drop_manifest(self) -> None:
        """Before shards change, the old manifest must go: it would vouch for files that no longer match it."""
        self.manifest_path.unlink(missing_ok=True)

    def write_manifest(self, manifest: Manifest) -> None:
        """Published last; on object storage only while this run still holds the lease."""
        if self._lease:
            self._lease.renew()
        write_json(self.manifest_path, manifest.to_json(), sort_keys=True)

    def manifest(self) -> Manifest:
        """The finished cache's manifest, checked; a missing or damaged one says how to rebuild it."""
        if not self.manifest_path.exists():
            raise PipelineError(f"{self.path} is not a finished cache (no {MANIFEST_FILE}): run the same "
                                "`bert-pipeline embed` command again to complete it")
        record = _read_json(self.manifest_path)
        if record is None:
            raise PipelineError(f"the manifest of {self.path} is damaged: run `bert-pipeline embed` again "
                                "to rebuild it")
        return Manifest.from_json(record, self.path)

    def previous_manifest(self) -> Manifest | None:
        """The manifest a writer may reuse shard records from, or None when it is absent or damaged."""
        try:
            return self.manifest()
        except PipelineError:
            return None

    def verified_shard(self, index: int, rows: int, record: ShardRecord) -> bool:
        """True when shard `index` is the file `record` vouches for: name, size and sha256 (one read)."""
        path = self.shard_path(index)
        return (record.file == path.name and record.rows == rows and path.exists()
                and path.stat().st_size == record.bytes and file_sha256(path) == record.sha256)

    def shard_record(self, index: int, rows: int) -> ShardRecord:
        """The record of a shard: the one remembered when this object wrote it (if the file is unchanged since),
        else hashed from the file."""
        path = self.shard_path(index)
        written, record = self._written.get(index, (None, None))
        if record is not None and record.rows == rows and written == stamp(path):
            return record
        return ShardRecord(path.name, rows, path.stat().st_size, file_sha256(path))


def _write_local_shard(path: Path, table: pa.Table, options: dict) -> ShardRecord:
    """Temp file in the cache folder, hashed before it is renamed into place (one read of fresh, cached bytes)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp, **options)
        record = ShardRecord(path.name, table.num_rows, Path(tmp).stat().st_size, file_sha256(Path(tmp)))
        publish(Path(tmp), path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return record


def _read_json(path: Location) -> object | None:
    """A JSON file's content, or None when it is missing, unreadable or not JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def load_embeddings(cache: "Location | str", pooling: str, split: str | None = None) -> Embeddings:
    """Vectors of one pooling (or 'layerK', one layer of 'layers') as numpy arrays, checked against the manifest.

    A shard that is missing, of the wrong size or row count, or fails its page checksums is refused: a damaged
    cache is never read as data. A cache that an embed is rewriting (e.g. adding a pooling) is read once the
    writer is done, never reported as damaged (paths.read_whole; a cache on object storage is read once).
    """
    store = EmbeddingCache(cache)
    return read_whole(store.path, lambda: _load_embeddings(store, pooling, split),
                      lambda: [store.manifest_path, *sorted(store.path.glob("shard-*.parquet"))])


def _load_embeddings(store: "EmbeddingCache", pooling: str, split: str | None) -> Embeddings:
    manifest = store.manifest()
    column, layer = pooling_column(pooling, manifest)
    parts = [_read_checked(store, shard, column) for shard in manifest.shards]
    texts = _texts(parts)
    table = pa.concat_tables([part.drop_columns([TEXT]) if TEXT in part.column_names else part for part in parts])
    if table.num_rows != manifest.rows:
        raise PipelineError(f"{store.path} has {table.num_rows} rows but its manifest says {manifest.rows}: "
                            "run `bert-pipeline embed` again to repair it")
    X = _to_matrix(table.column(EMB_PREFIX + column), manifest.poolings[column].shape, layer)
    result = Embeddings(X, table.column("label").to_numpy(), np.asarray(table.column("id").to_pylist(), dtype=object),
                        np.asarray(table.column("split").to_pylist(), dtype=object), manifest.label_names, texts)
    if split is None:
        return result
    rows = result.splits == split
    return Embeddings(result.X[rows], result.y[rows], result.ids[rows], result.splits[rows], result.label_names,
                      None if texts is None else texts[rows])


def _texts(parts: list[pa.Table]) -> np.ndarray | None:
    """Each row's text, None for rows of shards written before the text column existed; None if no shard has it."""
    if not any(TEXT in part.column_names for part in parts):
        return None
    texts = [part.column(TEXT).to_pylist() if TEXT in part.column_names else [None] * part.num_rows for part in parts]
    return np.asarray([t for chunk in texts for t in chunk], dtype=object)


def pooling_source(name: str) -> tuple[str, int | None]:
    """'layerK' names one layer of the 'layers' column; every other name is its own column."""
    match = re.match(r"^layer(\d+)$", name)
    return (LAYERS, int(match.group(1))) if match else (name, None)


def pooling_column(pooling: str, manifest: Manifest) -> tuple[str, int | None]:
    """The cache column holding `pooling` (and the layer, for 'layerK'); refuses names the cache lacks."""
    available = list(manifest.poolings)
    _, layer = pooling_source(pooling)
    if layer is not None and LAYERS in available:
        n_layers = manifest.poolings[LAYERS].shape[0]
        if layer >= n_layers:
            raise PipelineError(f"pooling '{pooling}' does not exist: this model has layers 0..{n_layers - 1}")
        return LAYERS, layer
    if pooling not in available:
        raise PipelineError(f"pooling '{pooling}' is not in the cache {manifest.name} (it has: "
                            f"{', '.join(available)}): choose one of those, or add it with "
                            f"`make embed POOLING={pooling}`")
    return pooling, None


def _read_checked(store: EmbeddingCache, shard: ShardRecord, column: str) -> pa.Table:
    """Read one shard's columns only after its size and sha256 match the manifest's record."""
    path = store.path / shard.file
    problem = "is missing"
    if path.exists():
        payload = path.read_bytes()
        problem = "has the wrong size" if len(payload) != shard.bytes else None
        if problem is None and hashlib.sha256(payload).hexdigest() != shard.sha256:
            problem = "does not match its recorded sha256"
        if problem is None:
            present = pq.read_schema(pa.BufferReader(payload)).names
            wanted = ["id", "split", "label", *([TEXT] if TEXT in present else []), EMB_PREFIX + column]
            table = pq.read_table(pa.BufferReader(payload), columns=wanted)
            if table.num_rows == shard.rows:
                return table
            problem = "has the wrong row count"
    raise PipelineError(f"cache shard {path} {problem}: run the same `bert-pipeline embed` command again to "
                        "recompute it")


def _flat_matrix(column: pa.ChunkedArray) -> np.ndarray:
    """A fixed_size_list column as an (rows, width) array, without a per-row copy."""
    return column.combine_chunks().values.to_numpy(zero_copy_only=False).reshape(len(column), -1)


def _to_matrix(column: pa.ChunkedArray, shape: list[int], layer: int | None) -> np.ndarray:
    matrix = _flat_matrix(column).reshape(len(column), *shape)
    return matrix[:, layer] if layer is not None else matrix
