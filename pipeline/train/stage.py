"""Stage two: cached vectors -> heads -> metrics -> reports. The encoder is never run here."""

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.cache import EmbeddingCache, Embeddings, Manifest, load_embeddings, pooling_column
from pipeline.errors import PipelineError, capped
from pipeline.paths import atomic_write_bytes, atomic_write_json
from pipeline.registry import parse_names
from pipeline.train.head_graph import full_proba
from pipeline.train.heads import HEADS, HeadUnavailable, fit_head, head_params
from pipeline.train.metrics import classification_metrics
from pipeline.train.report import Scored, confusion_png, run_report, summary_row, update_summary
from pipeline.train.runs import RunRecord, cache_runs_dir, run_dir, save_run
from pipeline.workers import process_pool


@dataclass(frozen=True)
class Fitted:
    """A head fitted on one pooling, with its test-set probabilities and everything the reports need."""

    pooling: str
    head: str
    model: object
    proba: np.ndarray
    y_test: np.ndarray
    seconds: float
    selection: str
    n_train: int
    n_dev: int


def expand_poolings(spec: str, manifest: Manifest) -> list[str]:
    """Validated pooling names of the cache; 'all' means every pooling that is one vector per text (a per-layer
    pooling such as 'layers' is trained on one layer at a time, as 'layerK')."""
    names = parse_names(spec, None, "pooling")
    if names == ["all"]:
        names = [name for name, info in manifest.poolings.items() if len(info.shape) == 1]
        if not names:
            raise PipelineError(f"the cache {manifest.name} holds only per-layer vectors "
                                f"({', '.join(manifest.poolings)}): train on one layer with --pooling layerK, "
                                "or add a pooling with `make embed POOLING=mean`")
    for name in names:
        pooling_column(name, manifest)
    return names


def check_splits(emb: Embeddings) -> None:
    """Refuse data a head cannot be honestly trained and scored on."""
    check_split_labels(emb.y[emb.splits == "train"], emb.y[emb.splits == "test"], emb.label_names)


def check_split_labels(y_train: np.ndarray, y_test: np.ndarray, label_names: list[str]) -> None:
    """Empty splits, one class in train, test labels unseen in train: the refusals every trainer shares."""
    if len(y_test) == 0:
        raise PipelineError("the test split is empty: give a split column with test rows, or drop --split-col "
                            "so a test split is held out")
    if len(y_train) == 0:
        raise PipelineError("the train split is empty: give a split column with train rows, or drop --split-col "
                            "so the rows are split into train and test")
    if len(np.unique(y_train)) < 2:
        only = label_names[int(y_train[0])]
        raise PipelineError(f"the train split has only one class ({only}): a classifier needs at least two")
    unseen = sorted(set(np.unique(y_test)) - set(np.unique(y_train)))
    if unseen:
        raise PipelineError(f"test labels {capped(label_names[i] for i in unseen)} never occur in train: "
                            "move some of those rows into train or relabel them")


def fit_one(emb: Embeddings, pooling: str, head: str, seed: int = 0) -> Fitted:
    """Fit on train (selecting on dev if present, else CV on train) and score the test split once."""
    X_tr, y_tr = emb.split("train")
    X_dev, y_dev = emb.split("dev")
    X_te, y_te = emb.split("test")
    started = time.perf_counter()
    model = fit_head(head, X_tr, y_tr, X_dev if len(y_dev) else None, y_dev if len(y_dev) else None, seed)
    seconds = time.perf_counter() - started
    return Fitted(pooling, head, model, full_proba(model, X_te, len(emb.label_names)), y_te, seconds,
                  "the dev split" if len(y_dev) else f"{HEADS[head].folds}-fold CV on train", len(y_tr), len(y_dev))


@process_pool()
def train_cache(cache: Path, poolings: str, heads: list[str], out: Path, seed: int = 0,
                progress: bool = True) -> list[dict]:
    """Train every head on every pooling of one cache, write each run and the cache's runs.csv. With several heads,
    one that cannot be fitted on this data is skipped with a message; alone, it is an error."""
    manifest = EmbeddingCache(cache).manifest()
    names = expand_poolings(poolings, manifest)
    check_splits(load_embeddings(cache, names[0]))
    rows = []
    bar = tqdm(total=len(names) * len(heads), desc="train", unit="head", disable=not progress, file=sys.stderr)
    for pooling in names:
        emb = load_embeddings(cache, pooling)
        for head in heads:
            bar.set_postfix_str(f"{pooling}/{head}")
            try:
                rows.append(write_run(fit_one(emb, pooling, head, seed), manifest, emb, out, seed))
            except HeadUnavailable as exc:
                if len(heads) == 1:
                    raise
                tqdm.write(f"skipped {head} on {pooling}: {exc}", file=sys.stderr)
            bar.update()
    bar.close()
    if not rows:
        raise PipelineError("no head could be fitted on this data: add rows of the rarest class or use logreg")
    return update_summary(cache_runs_dir(out, manifest.name) / "runs.csv", rows)


def write_run(fitted: Fitted, manifest: Manifest, emb: Embeddings, out: Path, seed: int) -> dict:
    y_train = emb.y[emb.splits == "train"]
    metrics = classification_metrics(fitted.y_test, fitted.proba, emb.label_names, y_train, seed)
    record = RunRecord(cache=manifest.name, cache_key=manifest.key, pooling=fitted.pooling, head=fitted.head,
                       head_description=HEADS[fitted.head].description, label_names=emb.label_names,
                       encoder=manifest.encoder, model_ref=manifest.model_ref, seed=seed, selection=fitted.selection,
                       params=head_params(fitted.model), n_train=fitted.n_train, n_dev=fitted.n_dev,
                       train_seconds=fitted.seconds, int8=manifest.int8)
    path = run_dir(out, manifest.name, fitted.pooling, fitted.head, seed)
    record = save_run(path, fitted.model, record, emb.split("train")[0])
    atomic_write_json(path / "metrics.json", {**record.to_json(), "metrics": metrics.to_json()})
    tested = emb.splits == "test"
    scored = Scored(emb.ids[tested], None if emb.texts is None else emb.texts[tested], fitted.y_test, fitted.proba)
    atomic_write_bytes(path / "report.md", run_report(record, metrics, scored).encode())
    confusion_png(path / "confusion.png", metrics.confusion, emb.label_names,
                  f"{fitted.head} / {fitted.pooling}: acc {metrics.accuracy:.3f}")
    return summary_row(record, metrics)
