"""The writer lock of a folder on object storage: a lease object naming its holder, with an expiry.

A file lock cannot work across machines, and S3-compatible stores offer no compare-and-swap that pyarrow exposes, so
the lease is taken in three steps: refuse if a live lease of another holder is there; write ours; read it back after a
short pause and refuse if another holder's write landed last. Two writers that start in the same instant may both
pass that check; the lease is therefore checked again before the manifest is published, and a writer that finds it
lost stops without publishing. The cost of the rare race is a refused run, never a wrong cache: shards have the same
deterministic names and content for one key, and readers trust only shards whose sha256 the manifest records.
"""

import json
import os
import socket
import time
import uuid
from datetime import datetime, timezone

from pipeline.errors import PipelineError
from pipeline.storage.remote import RemotePath

LEASE_FILE = "_lease.json"
LEASE_S = 1800.0  # renewed with every shard published, so only a run that died holds it this long
SETTLE_S = 0.5  # time for a racing writer's lease to land before ours is read back


class Lease:
    """Held between `take()` and `release()`; `renew()` extends it and fails if another writer took it over."""

    def __init__(self, path: RemotePath, folder: str) -> None:
        self.path, self.folder = path, folder
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    @classmethod
    def take(cls, folder: RemotePath) -> "Lease":
        lease = cls(folder / LEASE_FILE, str(folder))
        lease._refuse_if_held()
        lease._write()
        time.sleep(SETTLE_S)
        lease._require_ours()
        return lease

    def renew(self) -> None:
        self._require_ours()
        self._write()

    def release(self) -> None:
        """Drop the lease if it is still ours (a writer that lost it must not delete the winner's)."""
        if (self._read() or {}).get("holder") == self.holder:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _write(self) -> None:
        record = {"holder": self.holder, "expires": time.time() + LEASE_S}
        self.path.write_bytes(json.dumps(record).encode())

    def _read(self) -> dict | None:
        try:
            record = json.loads(self.path.read_bytes())
        except (FileNotFoundError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def _refuse_if_held(self) -> None:
        """A live lease of another holder stops this run; an expired one, or one whose process is gone from this
        very machine (a run killed here, then run again), is taken over."""
        record = self._read()
        if (record and record.get("holder") != self.holder and float(record.get("expires", 0)) > time.time()
                and not _dead_here(str(record.get("holder")))):
            raise PipelineError(self._held_message(record))

    def _require_ours(self) -> None:
        record = self._read()
        if not record or record.get("holder") != self.holder:
            raise PipelineError(self._held_message(record or {"holder": "unknown", "expires": time.time()}))

    def _held_message(self, record: dict) -> str:
        until = datetime.fromtimestamp(float(record.get("expires", 0)), timezone.utc).strftime("%H:%M UTC")
        return (f"another run ({record.get('holder')}) is writing {self.folder} (lease until {until}): wait for it "
                f"to finish, then run the same command again; if that run is dead, delete {self.path}")


def _dead_here(holder: str) -> bool:
    """True when `holder` names a process of this machine that no longer runs."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, under another user
        return False
    return False
