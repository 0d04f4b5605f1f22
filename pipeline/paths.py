"""Safe names for folders derived from data and model names, so nothing escapes the output root."""

import json
import os
import re
import tempfile
from pathlib import Path

from pipeline.errors import PipelineError


def safe_name(name: str, max_len: int = 60) -> str:
    """Turn any string (a path, a hub id) into a short name of letters, digits, '.', '_' and '-' only.

    Why: cache and run folders are named after user-controlled strings; '../', absolute paths or odd characters must
    never turn into a path outside the output root.
    """
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-_")
    cleaned = re.sub(r"\.{2,}", ".", cleaned)
    return (cleaned or "unnamed")[:max_len]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file in the same folder and a rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        publish(Path(tmp), path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def publish(tmp: Path, path: Path) -> None:
    """Rename a finished temp file into place with the usual permissions (mkstemp makes files private, 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def ensure_writable(folder: Path) -> Path:
    """Create `folder` if needed and fail early, with a fix, when it cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-", delete=True)
        probe.close()
    except OSError as exc:
        raise PipelineError(
            f"cannot write to output folder {folder} ({exc.strerror or exc}): choose another with --out "
            "or fix its permissions"
        ) from None
    return folder


def atomic_write_json(path: Path, record, sort_keys: bool = False) -> None:
    atomic_write_bytes(path, json.dumps(record, indent=2, sort_keys=sort_keys).encode())


def hash_file_into(digest, path: Path) -> None:
    """Feed a file to a hashlib digest in 1 MiB blocks (weights and shards can be large)."""
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
