"""A trained run on disk: the fitted head, its sha256, and the record of what it belongs to (run.json).

Heads are saved with skops, not pickle: its loader builds only the types on an allowlist (TRUSTED_TYPES: what this
project's heads are made of), so a crafted head file cannot run code. The sha256 beside the head catches damage,
not intent: whoever can write the folder can rewrite both. Runs written before skops (head.joblib, a pickle) still
load when their sha256 matches; load those only from sources you trust.
"""

import hashlib
import io
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from pipeline.cache import SCHEMA_VERSION, EncoderSettings, check_schema
from pipeline.errors import PipelineError
from pipeline.paths import atomic_write_bytes, atomic_write_json, safe_name

HEAD_FILE = "head.skops"
LEGACY_HEAD_FILE = "head.joblib"  # a pickle: runs made before heads were saved with skops
# Beyond skops' default trust (scikit-learn estimators, numpy, builtins): the helpers the registered heads hold.
TRUSTED_TYPES = [
    "sklearn.calibration._CalibratedClassifier", "sklearn.calibration._SigmoidCalibration",
    "sklearn.metrics._classification.accuracy_score", "sklearn.metrics._scorer._Scorer",
    "sklearn.metrics._dist_metrics.EuclideanDistance64", "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neighbors._ball_tree.BallTree", "sklearn.model_selection._split.PredefinedSplit",
    "sklearn.model_selection._split.StratifiedKFold", "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
]
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
    import skops.io  # here, not at the top: importing skops walks all of scikit-learn (and loads torch through it)

    payload = skops.io.dumps(model)
    digest = hashlib.sha256(payload).hexdigest()
    atomic_write_bytes(path / HEAD_FILE, payload)
    atomic_write_bytes(path / f"{HEAD_FILE}.sha256", f"{digest}  {HEAD_FILE}\n".encode())
    record = replace(record, head_sha256=digest)
    atomic_write_json(path / RUN_FILE, record.to_json())
    return record


def load_run(path: Path) -> Run:
    """Load a run after checking the head file's sha256 against the recorded one; a mismatch is refused."""
    path = Path(path)
    head = next((path / name for name in (HEAD_FILE, LEGACY_HEAD_FILE) if (path / name).is_file()), path / HEAD_FILE)
    try:
        raw = json.loads((path / RUN_FILE).read_text())
        payload = head.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        raise PipelineError(f"{path} is not a run folder (needs {RUN_FILE} and {HEAD_FILE}): "
                            "train one with `make train`") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise PipelineError(f"{path / RUN_FILE} is damaged: retrain with `make train`") from None
    record = RunRecord.from_json(raw, path / RUN_FILE)
    hash_file = head.with_name(f"{head.name}.sha256")
    recorded = hash_file.read_text().split()[0] if hash_file.exists() else None
    actual = hashlib.sha256(payload).hexdigest()
    if recorded is None or actual != recorded or actual != record.head_sha256:
        raise PipelineError(f"{head} does not match its recorded sha256: refusing to load it "
                            "(retrain with `make train`)")
    return Run(path, record, _load_head(head, payload))


def _load_head(head: Path, payload: bytes):
    """skops with the allowlist; a legacy pickle only after its hash matched (see the module's docstring)."""
    if head.name == LEGACY_HEAD_FILE:
        import joblib

        return joblib.load(io.BytesIO(payload))["model"]
    import skops.io

    try:
        return skops.io.loads(payload, trusted=TRUSTED_TYPES)
    except skops.io.exceptions.UntrustedTypesFoundException as exc:
        raise PipelineError(f"{head} holds types no head of bert-pipeline is made of ({exc}): refusing to load it; "
                            "retrain with `make train`") from None
    except Exception as exc:  # a damaged zip or schema: skops raises several types
        raise PipelineError(f"{head} is damaged ({type(exc).__name__}): retrain with `make train`") from None


def newest_run(root: Path) -> Path:
    """The most recently trained run under `root` (for `make predict` without RUN=)."""
    runs = sorted(Path(root).glob(f"*/*/*/{RUN_FILE}"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise PipelineError(f"no trained run under {root}: run `make train` first, or pass --run")
    return runs[-1].parent
