"""Predict a file: every input row and column kept, predictions added; a labelled file also gets a report.

The texts go through the embed stage itself: they are embedded into the cache for the run's encoder settings
(sharded, resumable after a kill, a progress bar, `--engine ray`), then the head scores the cache shard by shard, so
vectors are never all in memory. The output is written in one atomic step; with `label_col`, the train stage's
metrics and report for this set are written beside it (<output>.report.md, .metrics.json, .confusion.png).
"""

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from pipeline.cache import EmbeddingCache, cache_dir, is_complete, pooling_column
from pipeline.data import Dataset, unlabelled
from pipeline.data.dataset import dataset_name, encode_labels
from pipeline.data.tables import Columns
from pipeline.embed.keying import keyed
from pipeline.embed.stage import DEFAULT_SHARD_ROWS, embed_dataset, engine_session, spans_of
from pipeline.errors import PipelineError, capped
from pipeline.paths import atomic_write_bytes, atomic_write_json, read_whole
from pipeline.predict.classifier import Classifier, check_texts
from pipeline.predict.output import (
    output_format,
    refuse_overwriting_input,
    refuse_run_files,
    typed_input,
    write_table,
)
from pipeline.storage import location, require_local

PREDICTED, CONFIDENCE, PROBA_PREFIX = "predicted_label", "confidence", "p_"

if TYPE_CHECKING:  # sklearn loads only when a labelled file is scored
    from pipeline.train.metrics import Metrics


@dataclass(frozen=True)
class PredictResult:
    """What predict_file did: the table it wrote (or would print), the cache it used, and the report if labelled."""

    table: pa.Table
    output: Path | None
    cache: Path
    computed_rows: int
    metrics: "Metrics | None"
    reports: list[Path]


def prediction_columns(label_names: list[str]) -> list[str]:
    """The columns predict adds: the label, its probability, and one probability per class."""
    return [PREDICTED, CONFIDENCE, *[PROBA_PREFIX + name for name in label_names]]


def report_paths(output: Path) -> list[Path]:
    """Where a labelled predict's report goes: beside the output, named after it."""
    return [output.parent / f"{output.stem}{suffix}" for suffix in (".report.md", ".metrics.json", ".confusion.png")]


def predict_file(clf: Classifier, input_path: Path, output: Path | None = None, text_col: str = "text",
                 label_col: str | None = None, embeddings: Path = Path("artifacts/embeddings"),
                 engine: str = "local", ray_address: str | None = None, shard_rows: int = DEFAULT_SHARD_ROWS,
                 progress: bool = True) -> PredictResult:
    """Classify every row of `input_path` with `clf`; write `output` (CSV, or Parquet by suffix) if given.

    Everything that can be refused is checked before anything is written: the output is not a folder, the text (and
    label) column exists and is filled, no input column is named like a prediction column, and every label is one
    the run knows. The texts are then embedded into the cache under `embeddings` (a rerun after a kill resumes there,
    and a second predict of the same file reuses it)."""
    input_path, output = location(input_path), location(output) if output is not None else None
    if label_col and output is None:
        raise PipelineError("a labelled predict writes its report beside the output: give --output too")
    if label_col:
        require_local(output, "--output of a labelled predict (its report is written beside it)")
    written = [output, *report_paths(output)[:2]] if output is not None and label_col else [output]
    for path in filter(None, written):
        if path.is_dir():
            raise PipelineError(f"{path} is a folder: give a file name (a path inside it or elsewhere)")
    if output is not None:
        output_format(output)
        every = [*filter(None, written), *report_paths(output)[2:]]
        refuse_overwriting_input(input_path, every)
        refuse_run_files(clf.path, clf.run.record.model_ref, every, "--output")
    with engine_session(engine, embeddings, ray_address) as (reader, runner, _):
        columns = reader(input_path)
        texts = check_texts(_column(columns, text_col, input_path, "text"), text_col)
        _refuse_clashes(columns, clf.label_names, input_path)
        y = _labels(columns, label_col, input_path, clf.label_names) if label_col else None
        cache, computed = embedded(clf, unlabelled(dataset_name(input_path), texts), embeddings, shard_rows,
                                   progress, runner)
    proba = score_cache(clf, cache)
    typed = typed_input(input_path, list(columns)) if output is not None else None
    table = output_table(columns, clf.label_names, proba, typed)
    del columns, typed
    if output is not None:
        write_table(output, table)
    metrics, reports = None, []
    if y is not None:
        metrics, reports = write_report(clf, input_path, output, texts, y, proba, cache)
    return PredictResult(table, output, cache, computed, metrics, reports)


def embedded(clf: Classifier, ds: Dataset, embeddings: Path, shard_rows: int, progress: bool,
             runner: Callable) -> tuple[Path, int]:
    """The finished cache of `ds` for the run's encoder settings, and how many rows were embedded now. A cache whose
    manifest lists the run's pooling and whose every shard still hashes to its record is used as it is (nothing is
    loaded or written); otherwise the embed stage makes, completes or repairs it."""
    source, _ = clf.source
    known = keyed(clf.encoder, ds, embeddings, spans_of(len(ds), shard_rows), keep=runner is None)
    key = known.key(ds)  # as embed makes it
    store = EmbeddingCache(cache_dir(embeddings, ds.name, clf.ref.name, key))
    if is_complete(store, key, [source]):
        return store.path, 0
    result = embed_dataset(ds, clf.encoder, [source], embeddings, shard_rows, progress, runner, known)
    return result.path, result.computed_rows


def _column(columns: Columns, name: str, path: Path, role: str) -> list:
    if name not in columns:
        raise PipelineError(f"no {role} column '{name}' in {path} (columns: {capped(columns)}): "
                            f"use --{role}-col")
    return columns[name]


def _refuse_clashes(columns: Columns, label_names: list[str], path: Path) -> None:
    """An input column named like a prediction column would be overwritten: refuse, never replace the user's data."""
    clashes = [name for name in prediction_columns(label_names) if name in columns]
    if clashes:
        raise PipelineError(f"{path} already has column(s) {', '.join(map(repr, clashes))}, which predict adds: "
                            "rename or drop them first (predict never overwrites an input column)")


def _labels(columns: Columns, label_col: str, path: Path, names: list[str]) -> np.ndarray:
    """The label column as indices into the run's label names, read the way training reads labels; labels the run
    never saw are refused, named (they cannot be scored: no head output means them)."""
    codes, found = encode_labels(_column(columns, label_col, path, "label"), label_col)
    unseen = [name for name in found if name not in names]
    if unseen:
        raise PipelineError(f"label(s) {capped(map(repr, unseen))} in column '{label_col}' of {path} never occur "
                            f"in the run's labels ({capped(names)}): drop those rows or map them to the run's labels")
    index = np.array([names.index(name) for name in found], dtype=np.int64)
    return index[codes]


def score_cache(clf: Classifier, cache: Path) -> np.ndarray:
    """The head's probabilities for every row of a finished cache, read and scored one shard at a time (page
    checksums on, ids checked), in row order; a cache another command is rewriting is read once it is done."""
    store = EmbeddingCache(cache)
    return read_whole(store.path, lambda: _score_store(clf, store),
                      lambda: [store.manifest_path, *sorted(store.path.glob("shard-*.parquet"))])


def _score_store(clf: Classifier, store: EmbeddingCache) -> np.ndarray:
    manifest = store.manifest()
    column, _ = pooling_column(clf.source[0], manifest)
    shape = manifest.poolings[column].shape
    proba = np.empty((manifest.rows, len(clf.label_names)))
    start = 0
    for index, shard in enumerate(manifest.shards):
        ids = [str(i) for i in range(start, start + shard.rows)]
        vectors = store.shard_vectors(index, ids)
        if vectors is None or column not in vectors:
            raise PipelineError(f"cache shard {store.shard_path(index)} is missing or damaged: run the same "
                                "command again to recompute it")
        proba[start:start + shard.rows] = clf.proba_of(vectors[column].reshape(shard.rows, *shape))
        start += shard.rows
    return proba


def output_table(columns: Columns, label_names: list[str], proba: np.ndarray,
                 typed: pa.Table | None = None) -> pa.Table:
    """The input's columns in their order (`typed`: as the input stored them, schema metadata included), then the
    prediction columns; rows in input order."""
    arrays = {name: typed.column(name) if typed is not None else _arrow(values) for name, values in columns.items()}
    arrays[PREDICTED] = pa.array([label_names[i] for i in proba.argmax(axis=1)], pa.string())
    arrays[CONFIDENCE] = pa.array(proba.max(axis=1), pa.float64())
    for i, name in enumerate(label_names):
        arrays[PROBA_PREFIX + name] = pa.array(proba[:, i], pa.float64())
    table = pa.table(arrays)
    return table.replace_schema_metadata(typed.schema.metadata) if typed is not None else table


def _arrow(values: list) -> pa.Array:
    """A column as Arrow, its type inferred; a column mixing types (possible in JSON Lines) is kept as text."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        return pa.array([None if v is None else v if isinstance(v, str) else json.dumps(v, default=str)
                         for v in values], pa.string())


def write_report(clf: Classifier, input_path: Path, output: Path, texts: list[str], y: np.ndarray, proba: np.ndarray,
                 cache: Path) -> tuple["Metrics", list[Path]]:
    """The train stage's metrics and report for this labelled set, beside the output. (Their modules load
    scikit-learn and matplotlib, a second of start-up that unlabelled predictions do without.)"""
    from pipeline.train.metrics import classification_metrics
    from pipeline.train.report import Scored, confusion_png, run_report

    names, record = clf.label_names, clf.run.record
    majority = _train_majority(clf, y)
    metrics = classification_metrics(y, proba, names, np.array([majority]), record.seed)
    scored = Scored(np.arange(1, len(y) + 1), np.asarray(texts, dtype=object), y, proba)
    report, metrics_path, png = paths = report_paths(output)
    atomic_write_json(metrics_path, {**record.to_json(), "run": str(clf.path), "scored_on": str(input_path),
                                     "cache_scored": str(cache), "metrics": metrics.to_json()})
    atomic_write_bytes(report, run_report(record, metrics, scored, input_path.name,
                                          EmbeddingCache(cache).manifest().long_texts).encode())
    confusion_png(png, metrics.confusion, names,
                  f"{record.head} / {record.pooling} on {input_path.name}: acc {metrics.accuracy:.3f}")
    return metrics, paths


def _train_majority(clf: Classifier, y: np.ndarray) -> int:
    """The run's most frequent train label (from its metrics.json), for the majority baseline; the scored set's own
    majority when the run folder lacks it."""
    try:
        name = json.loads((clf.path / "metrics.json").read_text())["metrics"]["majority_baseline"]["label"]
        return clf.label_names.index(name)
    except (OSError, ValueError, KeyError, TypeError):
        return int(np.bincount(y, minlength=len(clf.label_names)).argmax())
