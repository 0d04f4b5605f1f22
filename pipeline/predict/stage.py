"""Predict a file: every input row and column kept, predictions added; a labelled file also gets a report.

The texts go through the embed stage itself: they are embedded into the cache for the run's encoder settings
(sharded, resumable after a kill, a progress bar, `--engine ray`, where the file is read, checked and fingerprinted
by Ray tasks as embed reads it), then the head scores the cache shard by shard, so vectors are never all in memory.
The output is then written batch by batch (stream.py): the input read again a batch of rows at a time, each batch
given its predictions, appended to one stream published atomically at the end; so the driver holds the
probabilities, not the input or the output. With `label_col`, the train stage's metrics and report for this set are
written beside it (<output>.report.md, .metrics.json, .confusion.png).
"""

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from pipeline.cache import EmbeddingCache, cache_dir, is_complete, pooling_column
from pipeline.data import ColumnSpec, Dataset, DataSpec, read_texts, unlabelled
from pipeline.data.batches import arrow_column, table_batches, table_schema
from pipeline.data.dataset import dataset_name, encode_labels
from pipeline.data.tables import Columns
from pipeline.embed.keying import Keyed, from_counts, keyed
from pipeline.embed.stage import DEFAULT_SHARD_ROWS, embed_dataset, engine_session, spans_of
from pipeline.errors import PipelineError, capped
from pipeline.paths import atomic_write_bytes, atomic_write_json, read_whole
from pipeline.predict.classifier import Classifier, check_texts
from pipeline.predict.output import output_format, refuse_overwriting_input, refuse_run_files
from pipeline.predict.stream import (
    CachedTexts,
    prediction_batches,
    prediction_columns,
    with_predictions,
    write_predictions,
)
from pipeline.storage import Location, location, require_local

if TYPE_CHECKING:  # sklearn loads only when a labelled file is scored
    from pipeline.train.metrics import Metrics


@dataclass(frozen=True)
class PredictResult:
    """What predict_file did: how many rows it scored, the table it would print (None when written to `output`:
    an output is never held whole), the cache it used, and the report if labelled."""

    rows: int
    table: pa.Table | None
    output: Location | None
    cache: Location
    computed_rows: int
    metrics: "Metrics | None"
    reports: list[Path]


def report_paths(output: Path) -> list[Path]:
    """Where a labelled predict's report goes: beside the output, named after it."""
    return [output.parent / f"{output.stem}{suffix}" for suffix in (".report.md", ".metrics.json", ".confusion.png")]


def predict_file(clf: Classifier, input_path: Path, output: Path | None = None, text_col: str = "text",
                 label_col: str | None = None, embeddings: Path = Path("artifacts/embeddings"),
                 engine: str = "local", ray_address: str | None = None, shard_rows: int = DEFAULT_SHARD_ROWS,
                 progress: bool = True) -> PredictResult:
    """Classify every row of `input_path` with `clf`; write `output` (its suffix picks the format) if given.

    Everything that can be refused is checked before anything is written: the output is not a folder, the text (and
    label) column exists and is filled, no input column is named like a prediction column, and every label is one
    the run knows. The texts are then embedded into the cache under `embeddings` (a rerun after a kill resumes there,
    and a second predict of the same file reuses it)."""
    input_path, output = location(input_path), location(output) if output is not None else None
    _refuse_outputs(clf, input_path, output, label_col)
    with engine_session(engine, embeddings, ray_address) as (runner, cluster_rows):
        ds, known = _rows(clf, input_path, text_col, cluster_rows)
        schema = table_schema(input_path)
        _refuse_clashes(schema.names, clf.label_names, input_path)
        y = _labels(input_path, schema, label_col, clf.label_names) if label_col else None
        cache, computed = embedded(clf, ds, embeddings, shard_rows, progress, runner, known)
    proba = score_cache(clf, cache)
    table = None
    if output is None:
        table = pa.concat_tables(prediction_batches(input_path, schema, clf.label_names, proba))
    else:
        write_predictions(output, input_path, schema, clf.label_names, proba)
    metrics, reports = (None, []) if y is None else write_report(clf, input_path, output, y, proba, cache)
    return PredictResult(len(proba), table, output, cache, computed, metrics, reports)


def _refuse_outputs(clf: Classifier, input_path: Location, output: Location | None, label_col: str | None) -> None:
    """What predict writes must be a file it may write: never a folder, the input, or a file of the run."""
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


def _rows(clf: Classifier, input_path: Location, text_col: str, cluster_rows: Callable | None) -> tuple:
    """The texts to embed, as the engine reads them: here, with every check of the local reader (the texts alone
    kept), or on the Ray cluster by its read tasks, as embed reads a file there (the driver gets no text)."""
    if cluster_rows is None:
        texts = check_texts(read_texts(input_path, text_col), text_col)
        return unlabelled(dataset_name(input_path), texts), None
    if isinstance(input_path, Path) and input_path.is_dir():
        raise PipelineError(f"--input {input_path} is a folder, not a file: point it at a CSV, TSV, JSONL or "
                            "Parquet file")
    ds, lengths = cluster_rows(DataSpec(str(input_path), ColumnSpec(text=text_col, label="")), clf.encoder)
    return ds, from_counts(clf.encoder, lengths)


def embedded(clf: Classifier, ds: Dataset, embeddings: Location, shard_rows: int, progress: bool,
             runner: Callable | None, known: Keyed | None = None) -> tuple[Location, int]:
    """The finished cache of `ds` for the run's encoder settings, and how many rows were embedded now. A cache whose
    manifest lists the run's pooling and whose every shard still hashes to its record is used as it is (nothing is
    loaded or written); otherwise the embed stage makes, completes or repairs it. `known`: how the rows are keyed,
    when their reader already counted their tokens (the Ray engine's tasks)."""
    source, _ = clf.source
    known = known or keyed(clf.encoder, ds, embeddings, spans_of(len(ds), shard_rows), keep=runner is None)
    key = known.key(ds)  # as embed makes it
    store = EmbeddingCache(cache_dir(embeddings, ds.name, clf.ref.name, key))
    if is_complete(store, key, [source]):
        return store.path, 0
    result = embed_dataset(ds, clf.encoder, [source], embeddings, shard_rows, progress, runner, known)
    return result.path, result.computed_rows


def _column_of(names: list[str], name: str, path: Location, role: str) -> None:
    if name not in names:
        raise PipelineError(f"no {role} column '{name}' in {path} (columns: {capped(names)}): use --{role}-col")


def _refuse_clashes(columns: list[str], label_names: list[str], path: Location) -> None:
    """An input column named like a prediction column would be overwritten: refuse, never replace the user's data."""
    clashes = [name for name in prediction_columns(label_names) if name in columns]
    if clashes:
        raise PipelineError(f"{path} already has column(s) {', '.join(map(repr, clashes))}, which predict adds: "
                            "rename or drop them first (predict never overwrites an input column)")


def _labels(path: Location, schema: pa.Schema, label_col: str, names: list[str]) -> np.ndarray:
    """The label column as indices into the run's label names, read the way training reads labels (batch by batch:
    a label per row is all that is kept); labels the run never saw are refused, named (they cannot be scored: no
    head output means them)."""
    _column_of(schema.names, label_col, path, "label")
    values = [v for batch in table_batches(path, schema) for v in batch.column(label_col).to_pylist()]
    codes, found = encode_labels(values, label_col)
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


def output_table(columns: Columns, label_names: list[str], proba: np.ndarray) -> pa.Table:
    """Texts given on the command line (in memory, a few) as a table with their predictions."""
    return with_predictions(pa.table({name: arrow_column(values) for name, values in columns.items()}), label_names,
                            proba)


def write_report(clf: Classifier, input_path: Location, output: Path, y: np.ndarray, proba: np.ndarray,
                 cache: Location) -> tuple["Metrics", list[Path]]:
    """The train stage's metrics and report for this labelled set, beside the output; the texts it quotes are read
    from the cache. (Their modules load scikit-learn and matplotlib, a second of start-up that unlabelled
    predictions do without.)"""
    from pipeline.train.metrics import classification_metrics
    from pipeline.train.report import Scored, confusion_png, run_report

    names, record = clf.label_names, clf.run.record
    majority = _train_majority(clf, y)
    metrics = classification_metrics(y, proba, names, np.array([majority]), record.seed)
    scored = Scored(np.arange(1, len(y) + 1), CachedTexts(cache), y, proba)
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
