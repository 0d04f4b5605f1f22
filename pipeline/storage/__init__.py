"""Where files live. A plain path (or a file:// URI) stays a pathlib.Path and takes today's local code unchanged; an
s3://, gs:// or hdfs:// URI becomes a RemotePath over a pyarrow filesystem, resolved once per process.

The seam is narrow on purpose: a RemotePath answers the few pathlib calls the cache and the table reader make
(`/`, name, exists, stat, read_bytes, open, unlink, glob), so those modules take either; the writers below are
the only places that branch on where a file lives.
"""

import hashlib
import json
import os
import re
from contextlib import AbstractContextManager
from pathlib import Path
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import PipelineError
from pipeline.paths import atomic_writer as local_writer
from pipeline.paths import ensure_writable as ensure_local_writable
from pipeline.paths import file_stamp
from pipeline.storage.remote import REMOTE_SCHEMES, RemotePath, remote_path

Location = Path | RemotePath

__all__ = ["Location", "RemotePath", "arrow_source", "atomic_writer", "ensure_writable", "is_uri", "location",
           "require_local", "publish_parquet", "stamp", "write_bytes", "write_json"]


def is_uri(target: object) -> bool:
    """True for 'scheme://...' strings (a Windows drive letter or a name with '://' inside is a path, not a URI)."""
    return isinstance(target, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", target) is not None


def location(target: "str | Path | RemotePath") -> Location:
    """A Path for a plain path or file:// URI, a RemotePath for s3://, gs://, gcs://, hdfs:// and viewfs://."""
    if isinstance(target, (Path, RemotePath)):
        return target
    if not is_uri(target):
        return Path(target)
    scheme = target.split("://", 1)[0].lower()
    if scheme == "file":
        return Path(unquote(urlparse(target).path))
    if scheme not in REMOTE_SCHEMES:
        known = ", ".join(f"{s}://" for s in ("file", *REMOTE_SCHEMES))
        raise PipelineError(f"unknown storage scheme in {target}: use a local path or one of {known}")
    return remote_path(target)


def require_local(target: Location, what: str) -> Path:
    """Refuse a URI where only a local folder is supported yet, rather than create a folder named 's3:' here."""
    if isinstance(target, RemotePath):
        raise PipelineError(f"{what} cannot be on object storage yet ({target}): give a local path")
    return target


def ensure_writable(folder: Location) -> Location:
    """Create `folder` if needed and fail early, with a fix, when it cannot be written: locally the usual probe
    file; on object storage a probe object, so an unreachable endpoint, rejected credentials, a missing bucket or
    a read-only bucket stop the command before any work is done."""
    if isinstance(folder, Path):
        return ensure_local_writable(folder)
    folder.check_bucket()
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".write-probe-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink(missing_ok=True)
    return folder


def write_bytes(path: Location, data: bytes) -> None:
    """Atomic publication either way: a temp file and a rename locally, a temp object and a move remotely."""
    with atomic_writer(path) as out:
        out.write(data)


def atomic_writer(path: Location) -> AbstractContextManager:
    """A binary stream whose bytes appear at `path` all at once when the block ends (nothing on failure): a temp
    file and a rename locally, a temporary object (a multipart upload on S3) and a move remotely."""
    return local_writer(path) if isinstance(path, Path) else path.writer()


def write_json(path: Location, record: object, sort_keys: bool = False) -> None:
    write_bytes(path, json.dumps(record, indent=2, sort_keys=sort_keys).encode())


def publish_parquet(path: RemotePath, table: pa.Table, **options) -> tuple[int, str]:
    """Write a Parquet object atomically; returns its size and sha256, taken from the very bytes published (built in
    memory, as an upload needs them whole or in parts anyway; a shard is a few MB to a few hundred)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **options)
    data = sink.getvalue().to_pybytes()
    path.write_bytes(data)
    return len(data), hashlib.sha256(data).hexdigest()


def arrow_source(path: Location) -> tuple["str | Path", dict]:
    """What pyarrow's readers take for `path`: the Path itself, or the object's key with its filesystem."""
    return (path, {}) if isinstance(path, Path) else (path.key, {"filesystem": path.fs})


def stamp(path: Location) -> list[int]:
    """What changes when a file is rewritten: the full local stamp, or an object's size and modification time."""
    return file_stamp(path) if isinstance(path, Path) else path.stamp()
