"""A trained run on disk: the fitted head (joblib) guarded by its sha256, and the record of what it belongs to.

joblib files are pickles, which can run code when loaded: a head is loaded only when its bytes hash to the value
recorded at training time. Never load run folders from sources you do not trust.
"""

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import joblib

from pipeline.errors import PipelineError
from pipeline.paths import atomic_write_bytes, atomic_write_json, safe_name

HEAD_FILE = "head.joblib"
HASH_FILE = "head.joblib.sha256"
RUN_FILE = "run.json"


@dataclass(frozen=True)
class Run:
    path: Path
    record: dict
    model: object


def run_dir(root: Path, cache_name: str, pooling: str, head: str) -> Path:
    return Path(root) / safe_name(cache_name, 120) / safe_name(pooling) / safe_name(head)


def save_run(path: Path, model, record: dict) -> str:
    """Write head, its hash and run.json atomically; returns the sha256 of the head file."""
    buffer = io.BytesIO()
    joblib.dump({"model": model, "label_names": record["label_names"], "pooling": record["pooling"],
                 "cache_key": record["cache_key"], "model_identity": record["encoder"]["model"]}, buffer)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest()
    atomic_write_bytes(path / HEAD_FILE, payload)
    atomic_write_bytes(path / HASH_FILE, f"{digest}  {HEAD_FILE}\n".encode())
    atomic_write_json(path / RUN_FILE, {**record, "head_sha256": digest})
    return digest


def load_run(path: Path) -> Run:
    """Load a run after checking the head file's sha256 against the recorded one; a mismatch is refused."""
    path = Path(path)
    try:
        record = json.loads((path / RUN_FILE).read_text())
        payload = (path / HEAD_FILE).read_bytes()
    except FileNotFoundError:
        raise PipelineError(f"{path} is not a run folder (needs {RUN_FILE} and {HEAD_FILE}): "
                            "train one with `make train`") from None
    except json.JSONDecodeError:
        raise PipelineError(f"{path / RUN_FILE} is damaged: retrain with `make train`") from None
    recorded = (path / HASH_FILE).read_text().split()[0] if (path / HASH_FILE).exists() else None
    actual = hashlib.sha256(payload).hexdigest()
    if recorded is None or actual != recorded or actual != record.get("head_sha256"):
        raise PipelineError(f"{path / HEAD_FILE} does not match its recorded sha256: refusing to unpickle it "
                            "(retrain with `make train`)")
    return Run(path, record, joblib.load(io.BytesIO(payload))["model"])


def newest_run(root: Path) -> Path:
    """The most recently trained run under `root` (for `make predict` without RUN=)."""
    runs = sorted(Path(root).glob(f"*/*/*/{RUN_FILE}"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise PipelineError(f"no trained run under {root}: run `make train` first, or pass --run")
    return runs[-1].parent
