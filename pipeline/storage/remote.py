"""A file or folder on object storage (or HDFS) that answers the pathlib calls the pipeline makes of a Path.

Every filesystem error becomes one PipelineError line naming the URI and the fix, except 'not found', which stays a
FileNotFoundError so that code written for Path (missing_ok, 'return None when absent') behaves the same here.
"""

import fnmatch
import os
import posixpath
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.fs as pafs

from pipeline.errors import PipelineError, first_line
from pipeline.storage.filesystems import filesystem

REMOTE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs")

DENIED = ("ACCESS_DENIED", "AccessDenied", "HTTP response code: 403", "Forbidden")
# Markers of the AWS SDK's error names (as pyarrow prints them) and S3 error codes, with what to do about each.
_FIXES = [
    (("NETWORK_CONNECTION", "curlCode", "Could not connect", "Couldn't connect"),
     "cannot reach the object store for {uri}: check AWS_ENDPOINT_URL ({endpoint}) and that the server is up"),
    (("INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "InvalidAccessKeyId", "SignatureDoesNotMatch",
      "InvalidClientTokenId"),
     "the object store rejected the credentials for {uri}: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
    (DENIED,
     "access to {uri} is denied: these credentials may not {action} it, or the key or secret is wrong (a HEAD "
     "request cannot tell which); check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or ask for access"),
    (("HTTP status 301", "PermanentRedirect", "AuthorizationHeaderMalformed"),
     "the bucket of {uri} is in another region than AWS_REGION: set AWS_REGION to the bucket's region"),
    (("NO_SUCH_BUCKET", "NoSuchBucket", "Bucket '"),
     "the bucket of {uri} does not exist: create it first or fix the URI"),
]


@contextmanager
def storage_errors(uri: str, action: str) -> Iterator[None]:
    """One line for any storage failure while doing `action` ('read', 'write', 'list', 'delete') on `uri`."""
    try:
        yield
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise PipelineError(_message(exc, uri, action)) from None


def _message(exc: OSError, uri: str, action: str) -> str:
    detail = str(exc)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "not set: AWS itself"
    for markers, fix in _FIXES:
        if any(marker in detail for marker in markers):
            return fix.format(uri=uri, endpoint=endpoint, action=action)
    return f"cannot {action} {uri} ({first_line(exc)}): check the URI and the storage settings"


def remote_path(uri: str) -> "RemotePath":
    return RemotePath(*filesystem(uri))


@dataclass(frozen=True)
class RemotePath:
    """`key` is what the filesystem names the object by ('bucket/prefix/name' on S3 and GCS, '/path' on HDFS);
    `root` followed by `key` is the URI ('s3://', 'hdfs://namenode:8020')."""

    fs: pafs.FileSystem
    key: str
    root: str

    def __str__(self) -> str:
        return self.root + self.key

    @property
    def scheme(self) -> str:
        return self.root.split("://", 1)[0]

    def __truediv__(self, name: str) -> "RemotePath":
        return replace(self, key=posixpath.join(self.key, name))

    @property
    def name(self) -> str:
        return posixpath.basename(self.key)

    @property
    def parent(self) -> "RemotePath":
        return replace(self, key=posixpath.dirname(self.key) or self.key)

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.name)[0]

    @property
    def bucket(self) -> str:
        return self.key.lstrip("/").split("/", 1)[0]

    def _info(self) -> pafs.FileInfo:
        with storage_errors(str(self), "read"):
            return self.fs.get_file_info(self.key)

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def stat(self) -> SimpleNamespace:
        info = self._info()
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(2, "No such object", str(self))
        return SimpleNamespace(st_size=info.size, st_mtime_ns=info.mtime_ns)

    def stamp(self) -> list[int]:
        info = self.stat()
        return [info.st_size, info.st_mtime_ns or 0]

    def open(self, mode: str = "rb"):
        """A readable stream (context manager, read(n)): enough for hashing and sniffing a file's first bytes."""
        if mode != "rb":
            raise ValueError("a RemotePath opens for reading only; write with write_bytes")
        with storage_errors(str(self), "read"):
            return self.fs.open_input_stream(self.key)

    def read_bytes(self) -> bytes:
        with self.open() as handle, storage_errors(str(self), "read"):
            return handle.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> None:
        with self.writer() as out:
            out.write(data)

    @contextmanager
    def writer(self) -> Iterator["pa.NativeFile"]:
        """A stream published atomically when the block ends: uploaded under a temporary name (in parts, as S3's
        multipart upload, for a large one), then moved over the final name, so a reader sees the old object or the
        new one, never part of one (on HDFS a file being written is visible; on S3 and GCS an interrupted upload
        leaves only the temporary object). The temporary object never outlives a failure."""
        tmp = self.parent / f".{self.name}.{uuid.uuid4().hex[:12]}.tmp"
        with storage_errors(str(self), "write"):
            try:
                with self.fs.open_output_stream(tmp.key) as out:
                    yield out
                self.fs.move(tmp.key, self.key)
            except BaseException:
                _quietly_delete(tmp)
                raise

    def unlink(self, missing_ok: bool = False) -> None:
        with storage_errors(str(self), "delete"):
            try:
                self.fs.delete_file(self.key)
            except FileNotFoundError:
                if not missing_ok:
                    raise

    def mkdir(self, parents: bool = True, exist_ok: bool = True) -> None:
        """Folders are implicit on object storage (a marker object would only clutter listings); HDFS makes one."""
        if self.scheme not in ("hdfs", "viewfs"):
            return
        with storage_errors(str(self), "write"):
            self.fs.create_dir(self.key, recursive=parents)

    def glob(self, pattern: str) -> Iterator["RemotePath"]:
        """Direct children whose name matches `pattern` (no '/' or '**': that is all the pipeline asks)."""
        selector = pafs.FileSelector(self.key, allow_not_found=True)
        with storage_errors(str(self), "list"):
            infos = self.fs.get_file_info(selector)
        for info in sorted(infos, key=lambda i: i.path):
            if fnmatch.fnmatchcase(posixpath.basename(info.path), pattern):
                yield replace(self, key=info.path)

    def check_bucket(self) -> None:
        """Object stores do not say 'no such bucket' when a key is missing; ask about the bucket itself. Credentials
        that may write keys but not look at the bucket are common: then the write itself will tell."""
        if self.scheme not in ("s3", "gs", "gcs"):
            return
        try:
            info = self.fs.get_file_info(self.bucket)
        except OSError as exc:
            if any(marker in str(exc) for marker in DENIED):
                return
            raise PipelineError(_message(exc, str(self), "read")) from None
        if info.type == pafs.FileType.NotFound:
            raise PipelineError(f"the bucket of {self} does not exist: create it first or fix the URI")


def _quietly_delete(path: RemotePath) -> None:
    """Clean-up after a failed upload must not hide the upload's own error."""
    try:
        path.fs.delete_file(path.key)
    except OSError:
        pass
