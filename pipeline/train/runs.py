"""A trained run on disk: the fitted head, its sha256, and the record of what it belongs to (run.json).

Heads are saved with skops, not pickle: its loader builds only the types on an allowlist (TRUSTED_TYPES: what this
project's heads are made of), so a crafted head file cannot run code. Most heads are also saved as an ONNX graph
(head_graph.py), which predict runs instead, without loading scikit-learn. The sha256s recorded for both catch
damage, not intent: whoever can write the folder can rewrite them. Runs written before skops (head.joblib, a pickle)
still load when their sha256 matches; load those only from sources you trust. run.json carries the sha256 of its
own other fields (record_sha256): its pooling, label order or max length change predictions as much as the head
does, so an edited record is refused like an edited head. A writer holds the run's lock while it replaces the files,
and a reader that catches it half-way waits and reads again (paths.read_whole), so a rewrite is never called damage.
"""

import hashlib
import io
import json
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from pipeline.cache import EncoderSettings, Int8Check
from pipeline.errors import PipelineError
from pipeline.paths import atomic_write_bytes, atomic_write_json, read_whole, safe_name, writer_lock
from pipeline.records import JsonRecord, check_schema
from pipeline.train.head_graph import GraphHead, head_graph

HEAD_FILE = "head.skops"
HEAD_GRAPH_FILE = "head.onnx"
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
# run.json's own format version. 1: runs written when it shared the cache format's number; 2: its own (same fields).
RUN_SCHEMA = 2


@dataclass(frozen=True)
class RunRecord(JsonRecord):
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
    head_classes: list[int] | None = None  # the labels the head saw, its probability columns (None: older runs)
    head_graph_sha256: str | None = None  # of head.onnx, when the head converted to one
    int8: Int8Check | None = None  # --dtype int8: the guard's cosines to fp32 (the cache's manifest has them too)
    schema: int = RUN_SCHEMA
    record_sha256: str | None = None  # of every other field as written (None: runs made before it existed)

    def sealed(self) -> "RunRecord":
        """The record with its own sha256 filled in, as save_run writes it."""
        return replace(self, record_sha256=record_digest(replace(self, record_sha256=None).to_json()))

    @classmethod
    def from_json(cls, record: object, path: Path) -> "RunRecord":
        """Parse and check run.json (runs made before the field existed are version 1, and still load)."""
        check_schema(record, path, "`make train` again to retrain the run", current=RUN_SCHEMA, oldest=1)
        _check_record(record, path)
        try:
            int8 = Int8Check(**record["int8"]) if record.get("int8") else None
            return cls(**{**record, "schema": RUN_SCHEMA, "encoder": EncoderSettings.from_json(record["encoder"]),
                          "int8": int8})
        except (KeyError, TypeError, ValueError) as exc:
            raise PipelineError(f"{path} is damaged ({type(exc).__name__}: {exc}): retrain with `make train`") from None


@dataclass(frozen=True)
class Run:
    """A loaded run. The head predicts through its ONNX graph when it has one; the fitted scikit-learn object
    (`model`) loads only when asked for, e.g. by the export."""

    path: Path
    record: RunRecord
    head_file: Path
    head_bytes: bytes = field(repr=False)
    graph_bytes: bytes | None = field(default=None, repr=False)

    @cached_property
    def model(self):
        return _load_head(self.head_file, self.head_bytes)

    @cached_property
    def head(self):
        """What gives the probabilities (classes_ and predict_proba): the graph, else the fitted head."""
        if self.graph_bytes is None or self.record.head_classes is None:
            return self.model
        return GraphHead(self.graph_bytes, self.record.head_classes)


def record_digest(raw: dict) -> str:
    """sha256 of a run.json's fields other than record_sha256, key order and spacing aside."""
    fields = {key: value for key, value in raw.items() if key != "record_sha256"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _check_record(raw: object, path: Path) -> None:
    """An edited run.json (pooling, labels, max length...) would change predictions silently: refuse it."""
    recorded = raw.get("record_sha256") if isinstance(raw, dict) else None
    if recorded is not None and recorded != record_digest(raw):
        raise PipelineError(f"{path} was changed after training (it no longer matches its record_sha256): refusing "
                            "to use it; restore the original run.json or retrain with `make train`")


def cache_runs_dir(root: Path, cache_name: str) -> Path:
    """The folder of one cache's runs (and its runs.csv); names are sanitised so nothing escapes `root`."""
    return Path(root) / safe_name(cache_name, 120)


def run_dir(root: Path, cache_name: str, pooling: str, head: str, seed: int = 0) -> Path:
    """<root>/<cache>/<pooling>/<head>, and '<head>-seed<N>' for a seed other than 0: the seed changes a head (its
    CV folds, its initial weights), so heads of two seeds never share a folder."""
    name = f"{head}-seed{seed}" if seed else head
    return cache_runs_dir(root, cache_name) / safe_name(pooling) / safe_name(name)


def save_run(path: Path, model, record: RunRecord, X_train: np.ndarray | None = None) -> RunRecord:
    """Write head, its hash, its graph (checked on `X_train`, when given) and run.json, each atomically and
    run.json last, under the run's writer lock; returns the sealed record with the files' sha256s. Everything is
    made in memory first, so the files change within moments of each other."""
    import skops.io  # here, not at the top: importing skops walks all of scikit-learn (and loads torch through it)

    payload = skops.io.dumps(model)
    digest = hashlib.sha256(payload).hexdigest()
    graph = head_graph(model, X_train) if X_train is not None else None
    record = replace(record, head_sha256=digest, head_classes=[int(c) for c in model.classes_],
                     head_graph_sha256=hashlib.sha256(graph).hexdigest() if graph is not None else None).sealed()
    path.mkdir(parents=True, exist_ok=True)
    with writer_lock(path):
        atomic_write_bytes(path / HEAD_FILE, payload)
        atomic_write_bytes(path / f"{HEAD_FILE}.sha256", f"{digest}  {HEAD_FILE}\n".encode())
        if graph is not None:
            atomic_write_bytes(path / HEAD_GRAPH_FILE, graph)
        else:
            (path / HEAD_GRAPH_FILE).unlink(missing_ok=True)  # a previous run's graph in this folder
        atomic_write_json(path / RUN_FILE, record.to_json())
    return record


def load_run(path: Path) -> Run:
    """Load a run after checking run.json's and the head file's sha256 against the recorded ones; a mismatch is
    refused, unless it was a writer caught half-way (then the finished version is read)."""
    path = Path(path)
    files = [RUN_FILE, HEAD_FILE, f"{HEAD_FILE}.sha256", HEAD_GRAPH_FILE, LEGACY_HEAD_FILE]
    return read_whole(path, lambda: _read_run(path), lambda: [path / name for name in files])


def _read_run(path: Path) -> Run:
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
    if head.name == LEGACY_HEAD_FILE:
        return Run(path, record, head, payload)
    return Run(path, record, head, payload, _read_graph(path / HEAD_GRAPH_FILE, record.head_graph_sha256))


def _read_graph(graph: Path, recorded: str | None) -> bytes | None:
    """The head's graph, when the record names one; one that is gone or changed is refused like the head."""
    if recorded is None:
        return None
    try:
        payload = graph.read_bytes()
    except OSError:
        payload = b""
    if hashlib.sha256(payload).hexdigest() != recorded:
        raise PipelineError(f"{graph} is missing or does not match its recorded sha256: refusing to load it "
                            "(retrain with `make train`)")
    return payload


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
