"""A trained run on disk: the fitted head (joblib) guarded by its sha256, and the record of what it belongs to.

joblib files are pickles, which can run code when loaded: a head is loaded only when its bytes hash to the value
recorded at training time. Never load run folders from sources you do not trust.
"""

import hashlib
import io
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import joblib

from pipeline.cache import SCHEMA_VERSION, EncoderSettings, check_schema
from pipeline.errors import PipelineError
from pipeline.paths import atomic_write_bytes, atomic_write_json, safe_name

HEAD_FILE = "head.joblib"
HASH_FILE = "head.joblib.sha256"
RUN_FILE = "run.json"


@dataclass(frozen=True)
class RunRecord:
    """What a trained head belongs to (run.json): its cache, pooling, labels, the encoder settings that made its
    vectors, and what was chosen. Predict reads it to embed new texts exactly as the training vectors were made."""

    cache: str
    cache_key: str
    pooling: str
    head: str
    head_description: str
    label_names: list[str]
    encoder: EncoderSettings
    model_ref: str
    seed: int
    selection: str
    params: dict
    n_train: int
    n_dev: int
    train_seconds: float
    head_sha256: str | None = None
    schema: int = SCHEMA_VERSION

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, record: object, path: Path) -> "RunRecord":
        """Parse and check run.json (runs made before the field existed are version 1)."""
        check_schema(record, path, "`make train` again to retrain the run")
        try:
            return cls(**{**record, "schema": SCHEMA_VERSION, "encoder": EncoderSettings.from_json(record["encoder"])})
        except (KeyError, TypeError, ValueError) as exc:
            raise PipelineError(f"{path} is damaged ({type(exc).__name__}: {exc}): retrain with `make train`") from None


@dataclass(frozen=True)
class Run:
    path: Path
    record: RunRecord
    model: object


def cache_runs_dir(root: Path, cache_name: str) -> Path:
    """The folder of one cache's runs (and its runs.csv); names are sanitised so nothing escapes `root`."""
    return Path(root) / safe_name(cache_name, 120)


def run_dir(root: Path, cache_name: str, pooling: str, head: str) -> Path:
    return cache_runs_dir(root, cache_name) / safe_name(pooling) / safe_name(head)


def save_run(path: Path, model, record: RunRecord) -> RunRecord:
    """Write head, its hash and run.json atomically; returns the record with the head file's sha256."""
    buffer = io.BytesIO()
    joblib.dump({"model": model, "label_names": record.label_names, "pooling": record.pooling,
                 "cache_key": record.cache_key, "model_identity": asdict(record.encoder.model)}, buffer)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest()
    atomic_write_bytes(path / HEAD_FILE, payload)
    atomic_write_bytes(path / HASH_FILE, f"{digest}  {HEAD_FILE}\n".encode())
    record = replace(record, head_sha256=digest)
    atomic_write_json(path / RUN_FILE, record.to_json())
    return record


def load_run(path: Path) -> Run:
    """Load a run after checking the head file's sha256 against the recorded one; a mismatch is refused."""
    path = Path(path)
    try:
        raw = json.loads((path / RUN_FILE).read_text())
        payload = (path / HEAD_FILE).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        raise PipelineError(f"{path} is not a run folder (needs {RUN_FILE} and {HEAD_FILE}): "
                            "train one with `make train`") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise PipelineError(f"{path / RUN_FILE} is damaged: retrain with `make train`") from None
    record = RunRecord.from_json(raw, path / RUN_FILE)
    recorded = (path / HASH_FILE).read_text().split()[0] if (path / HASH_FILE).exists() else None
    actual = hashlib.sha256(payload).hexdigest()
    if recorded is None or actual != recorded or actual != record.head_sha256:
        raise PipelineError(f"{path / HEAD_FILE} does not match its recorded sha256: refusing to unpickle it "
                            "(retrain with `make train`)")
    return Run(path, record, joblib.load(io.BytesIO(payload))["model"])


def newest_run(root: Path) -> Path:
    """The most recently trained run under `root` (for `make predict` without RUN=)."""
    runs = sorted(Path(root).glob(f"*/*/*/{RUN_FILE}"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise PipelineError(f"no trained run under {root}: run `make train` first, or pass --run")
    return runs[-1].parent
