"""Safe names for folders derived from data and model names, so nothing escapes the output root."""

import errno
import hashlib
import json
import os
import re
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, TypeVar

from filelock import FileLock, Timeout

from pipeline.errors import PipelineError

T = TypeVar("T")
WRITER_WAIT_S = 600  # how long a reader waits for a writer of the same folder before it reports what it read


def safe_name(name: str, max_len: int = 60) -> str:
    """Turn any string (a path, a hub id) into a short name of letters, digits, '.', '_' and '-' only.

    Why: cache and run folders are named after user-controlled strings; '../', absolute paths or odd characters must
    never turn into a path outside the output root.
    """
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-_")
    cleaned = re.sub(r"\.{2,}", ".", cleaned)
    return (cleaned or "unnamed")[:max_len]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """The one writer of every output file: readers never see half a file, and a failure changes nothing (see
    `atomic_writer`)."""
    with atomic_writer(path) as handle:
        handle.write(data)


@contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """A binary handle whose bytes appear at `path` all at once when the block ends, or not at all if it fails, so
    that a large output can be written piece by piece (predict streams its rows) with the same promise.

    Why each case: a regular file (or a new path) is replaced through a temp file and a rename, so a crash or a full
    disk leaves the old file whole; a device, FIFO or socket (/dev/null, /dev/stdout) is written in place, since a
    rename would put a regular file where the device was; a symlink stays a link and its target gets the data; a
    folder is refused. An OSError becomes one PipelineError line naming the path and the fix.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        kind = _existing_kind(path)
        if kind == "folder":
            raise PipelineError(f"{path} is a folder: give a file name (a path inside it or elsewhere)")
        target = path.resolve() if path.is_symlink() else path
        with _in_place(path) if kind == "stream" else _replacing(target) as handle:
            yield handle
    except OSError as exc:
        raise PipelineError(_write_error(path, exc)) from None


def _existing_kind(path: Path) -> str:
    """'new' (nothing there, or a dangling link), 'file', 'folder' or 'stream' (device, FIFO, socket), links
    followed."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "new"
    if stat.S_ISDIR(mode):
        return "folder"
    return "file" if stat.S_ISREG(mode) else "stream"


@contextmanager
def _in_place(path: Path) -> Iterator[BinaryIO]:
    """Write to something that is not a regular file, without O_CREAT: if it vanished, fail rather than make a file."""
    fd = os.open(path, os.O_WRONLY)
    with os.fdopen(fd, "wb") as handle:
        yield handle


@contextmanager
def _replacing(path: Path) -> Iterator[BinaryIO]:
    """Temp file in the same folder, fsync, rename over `path`; the temp file never outlives a failure."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        publish(Path(tmp), path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_WRITE_FIXES = {errno.ENOSPC: "free disk space or write elsewhere", errno.EDQUOT: "free disk space or write elsewhere",
                errno.EROFS: "the file system is read-only: write elsewhere",
                errno.EACCES: "fix its permissions or write elsewhere",
                errno.EPERM: "fix its permissions or write elsewhere"}


def _write_error(path: Path, exc: OSError) -> str:
    """One line: which path, what the system said, what to do; earlier contents are untouched in every case."""
    fix = _WRITE_FIXES.get(exc.errno, "check the path and write elsewhere if needed")
    return f"cannot write {path} ({exc.strerror or exc}): {fix}; any earlier file there is unchanged"


_UMASK_LOCK = threading.Lock()  # the umask is process-wide; reading it means setting it, so one thread at a time


def _kept_mode(path: Path) -> int | None:
    """The permission bits of the file being replaced (None for a new file): a file a user made private (0600) must
    not become world-readable because a command rewrote it."""
    try:
        return os.stat(path).st_mode & 0o777  # never setuid/setgid bits onto new contents
    except OSError:
        return None


def publish(tmp: Path, path: Path) -> None:
    """Rename a finished temp file into place with the permissions of the file it replaces, else the usual ones of a
    new file (mkstemp makes files private, 0600). Shards are published from several writer threads at once, hence
    the lock around reading the umask."""
    mode = _kept_mode(path)
    if mode is None:
        with _UMASK_LOCK:
            umask = os.umask(0)
            os.umask(umask)
        mode = 0o666 & ~umask
    os.chmod(tmp, mode)
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


def write_record(folder: Path, stem: str, record, markdown: str) -> list[Path]:
    """A bench's record as `<stem>.json` and its table as `<stem>.md` under `folder`, each written atomically."""
    paths = [Path(folder) / f"{stem}.json", Path(folder) / f"{stem}.md"]
    atomic_write_json(paths[0], record)
    atomic_write_bytes(paths[1], markdown.encode())
    return paths


def user_cache_dir() -> Path | None:
    """This tool's folder for what it remembers between runs (file hashes, compiled graphs):
    $XDG_CACHE_HOME/bert-pipeline, else ~/.cache/bert-pipeline; None when neither is an absolute path."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bert-pipeline" if os.path.isabs(base) else None


def file_stamp(path: Path) -> list[int]:
    """What changes when a file is rewritten, touched or replaced (size, mtime, ctime, device, inode): the key under
    which a file's hash may be remembered instead of read again."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev, st.st_ino]


def hash_file_into(digest, path: Path) -> None:
    """Feed a file to a hashlib digest in 1 MiB blocks (weights and shards can be large)."""
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


def file_sha256(path: Path) -> str:
    """A file's sha256 (hex): what shard records, pinned wheels and exports are checked against."""
    digest = hashlib.sha256()
    hash_file_into(digest, path)
    return digest.hexdigest()


def writer_lock(folder: Path) -> FileLock:
    """The lock a writer of `folder` (a cache, a run) holds while it replaces the folder's files; beside the folder,
    so a reader of a read-only folder never needs to create anything."""
    folder = Path(folder)
    return FileLock(str(folder.parent / f".{folder.name}.lock"))


def read_whole(folder: Path, read: Callable[[], T], watched: Callable[[], list[Path]]) -> T:
    """`read()` of a folder that a writer may be rewriting: the old version whole or the new one whole.

    Why: readers take no lock (a shared, read-only folder must stay readable, and readers must not stall writers),
    so a read can catch a writer between two files and fail its checks (a record naming a head that is already the
    new one). When a read fails while the folder's writer holds its lock, or while the `watched` files changed under
    it, the reader waits for the writer and reads again; a failure with no writer about is real damage, reported.
    A folder on object storage (not a Path) has no local lock to wait for: it is read once, and its manifest,
    published last under the writer's lease, vouches for what it holds (pipeline/storage/lease.py)."""
    if not isinstance(folder, Path):
        return read()
    attempts = 0
    while True:
        before = _stamps(watched())
        try:
            return read()
        except PipelineError:
            attempts += 1
            changed = _stamps(watched()) != before
            if attempts == 3 or not (_waited_for_writer(folder) or changed):
                raise


def _stamps(paths: list[Path]) -> list:
    return [file_stamp(p) if p.exists() else None for p in paths]


def _waited_for_writer(folder: Path) -> bool:
    """True after waiting for a writer that held `folder`'s lock; False at once when none did (or the lock cannot
    be made, e.g. a read-only parent: then no writer can be working there either). A reader never creates the
    lock file: a folder no writer ever held is left exactly as it was."""
    lock = writer_lock(folder)
    if not Path(lock.lock_file).exists():
        return False
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            lock.acquire(timeout=WRITER_WAIT_S)
        except Timeout:
            return False
        lock.release()
        return True
    except OSError:
        return False
    lock.release()
    return False


def publish_together(pairs: list[tuple[Path, Path]]) -> None:
    """Rename finished files and folders (made beside their targets, same file system) into place as one step: all
    of them or, when a rename fails, none (targets already replaced get their old contents back). A replaced file's
    permissions are kept, as in publish."""
    done: list[tuple[Path, Path | None]] = []
    target = pairs[0][1]
    try:
        for new, target in pairs:  # noqa: B007 - `target` names the failing one below
            mode = _kept_mode(target) if target.is_file() else None
            old = None
            if target.exists() or target.is_symlink():
                old = new.with_name(f"{new.name}.old")
                os.replace(target, old)
            done.append((target, old))
            os.replace(new, target)
            if mode is not None:
                os.chmod(target, mode)
    except OSError as exc:
        for target, old in reversed(done):
            _remove(target)
            if old is not None:
                os.replace(old, target)
        raise PipelineError(_write_error(target, exc)) from None


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
