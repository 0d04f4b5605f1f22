"""The SentEval-style transfer table: frozen encoder + logistic regression on the classic benchmarks.

Protocols (as in SentEval): MR, CR, SUBJ, MPQA and TweetEval sentiment by 10-fold stratified CV, the L2 strength
chosen by an inner CV on each training fold only; SST-2 and SST-5 by train / dev (selection) / test; TREC by train /
test with selection by CV on train. The reporting fold or split never takes part in any selection.
"""

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sklearn
from sklearn.metrics import recall_score
from sklearn.model_selection import StratifiedKFold
from tqdm import tqdm

from pipeline.cache import Embeddings, load_embeddings
from pipeline.data.benchmarks import TASKS, load_task
from pipeline.embed.encoder import Encoder
from pipeline.embed.stage import embed_dataset
from pipeline.errors import PipelineError
from pipeline.paths import atomic_write_json, write_record
from pipeline.records import JsonRecord
from pipeline.train.heads import fit_head, head_params
from pipeline.train.stage import fit_one
from pipeline.workers import process_pool

OUTER_FOLDS = 10
# Kept scores are reused only when written under the same protocol: bump this when cv_scores, split_scores or the
# logreg head they fit change, so that a resumed eval never reports scores of the old code as new.
SCORES_PROTOCOL = 1
# Reimers & Gurevych (2019), SBERT paper, Table 5: SentEval, logistic regression on frozen bert-base.
PUBLISHED = {
    "bert-base [CLS]": {"mr": 78.68, "cr": 84.85, "subj": 94.21, "mpqa": 88.23, "sst2": 84.13, "trec": 91.4},
    "bert-base mean": {"mr": 78.66, "cr": 86.25, "subj": 94.37, "mpqa": 88.66, "sst2": 84.40, "trec": 92.8},
}


@dataclass(frozen=True)
class EvalRecord(JsonRecord):
    """results.json: the model and encoder settings, the seed, per task its protocol, size and every pooling's
    scores, and the published figures shown beside them."""

    model: dict
    encoder: dict
    seed: int
    tasks: dict[str, dict]
    published: dict[str, dict[str, float]]
    schema: int = 1

    REWRITE = "`bert-pipeline eval` again"


def cv_scores(emb: Embeddings, seed: int, folds: int = OUTER_FOLDS) -> list[dict]:
    """Outer stratified k-fold; logreg's C is picked by CV inside each training fold (fit_head never sees the test
    fold). Returns per-fold accuracy and macro recall."""
    outer = StratifiedKFold(folds, shuffle=True, random_state=seed)
    scores = []
    for train_idx, test_idx in outer.split(emb.X, emb.y):
        model = fit_head("logreg", emb.X[train_idx], emb.y[train_idx], seed=seed)
        pred = model.predict(emb.X[test_idx])
        scores.append(_scores(emb.y[test_idx], pred, model))
    return scores


def split_scores(emb: Embeddings, seed: int) -> list[dict]:
    """Train (+ dev for selection) -> test, once."""
    fitted = fit_one(emb, "eval", "logreg", seed)
    return [_scores(fitted.y_test, fitted.proba.argmax(axis=1), fitted.model)]


def _scores(y: np.ndarray, pred: np.ndarray, model) -> dict:
    return {"accuracy": float((y == pred).mean()), "macro_recall": float(recall_score(y, pred, average="macro")),
            "n": int(len(y)), "C": head_params(model).get("C")}


@process_pool()
def evaluate(data_dir: Path, encoder: Encoder, poolings: list[str], embeddings: Path, tasks: list[str] | None = None,
             seed: int = 0, progress: bool = True, scores: Path | None = None) -> EvalRecord:
    """Embed each task once (cached), then score every pooling with its task's protocol. With `scores`, each task's
    scores are kept there as they are made (one JSON per task, tied to its cache and seed), so a run that stops or
    fails part-way resumes where it was instead of refitting hours of heads."""
    results = {}
    names = find_tasks(data_dir, tasks)
    for name in tqdm(names, desc="eval", unit="task", disable=not progress, file=sys.stderr):
        ds = load_task(Path(data_dir) / name)
        cache = embed_dataset(ds, encoder, poolings, embeddings, progress=progress).path
        protocol = TASKS[name].protocol
        kept = _kept_scores(scores, name, cache.name, seed)
        results[name] = {"protocol": "10-fold CV" if protocol == "cv" else _split_protocol(ds), "rows": len(ds),
                         "classes": len(ds.label_names), "poolings": {}}
        for pooling in poolings:
            if pooling not in kept:
                started = time.perf_counter()
                emb = load_embeddings(cache, pooling)
                folds = cv_scores(emb, seed) if protocol == "cv" else split_scores(emb, seed)
                kept[pooling] = fold_summary(folds, time.perf_counter() - started)
                if scores is not None:
                    atomic_write_json(Path(scores) / f"{name}.json", _score_key(cache.name, seed) | {"poolings": kept})
            results[name]["poolings"][pooling] = kept[pooling]
    settings = encoder.settings().to_json()
    return EvalRecord(settings["model"], settings, seed, results, PUBLISHED)


def _kept_scores(scores: Path | None, task: str, cache: str, seed: int) -> dict:
    """Pooling scores an earlier run kept for this task, if made on the same cache (model, settings, data) and
    seed under the same protocol; anything else (none, another cache, a damaged file) means scoring afresh."""
    if scores is None:
        return {}
    try:
        record = json.loads((Path(scores) / f"{task}.json").read_text())
    except (OSError, ValueError):
        return {}
    same = isinstance(record, dict) and all(record.get(k) == v for k, v in _score_key(cache, seed).items())
    return dict(record.get("poolings") or {}) if same else {}


def _score_key(cache: str, seed: int) -> dict:
    """What kept scores must match: the task's cache (model, settings, data), the seed, the protocol and the
    scikit-learn that fitted them."""
    return {"cache": cache, "seed": seed, "protocol": SCORES_PROTOCOL, "sklearn": sklearn.__version__}


def find_tasks(data_dir: Path, tasks: list[str] | None = None) -> list[str]:
    """The requested tasks that have a folder under `data_dir`. None at all is an error: a wrong --data-dir would
    otherwise give an empty table (and, written out, replace real results)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise PipelineError(f"--data-dir {data_dir} is not a folder: point it at the benchmark folders")
    wanted = list(tasks or TASKS)
    found = [t for t in wanted if (data_dir / t).exists()]
    if not found:
        raise PipelineError(f"no benchmark task found in {data_dir}: it should hold task folders named "
                            f"{', '.join(f'{t}/' for t in wanted)} (e.g. {wanted[0]}/{TASKS[wanted[0]].marker}); "
                            "point --data-dir at their parent folder")
    return found


def write_results(folder: Path, record: EvalRecord) -> list[Path]:
    """results.json and results.md under `folder`; a record without tasks is refused so it never replaces results."""
    if not record.tasks:
        raise PipelineError(f"no task was evaluated: nothing written, the results in {folder} are kept")
    return write_record(folder, "results", record.to_json(), results_markdown(record))


def _split_protocol(ds) -> str:
    return "train / dev / test" if (ds.splits == "dev").any() else "train / test (C by 5-fold CV on train)"


def fold_summary(folds: list[dict], seconds: float) -> dict:
    acc = np.array([f["accuracy"] for f in folds]) * 100
    recall = np.array([f["macro_recall"] for f in folds]) * 100
    return {"accuracy": float(acc.mean()), "accuracy_std": float(acc.std()), "macro_recall": float(recall.mean()),
            "folds": folds, "seconds": seconds}


def results_markdown(record: EvalRecord) -> str:
    """One row per task: cls, mean, the best other pooling, and the published bert-base figures for context."""
    lines = [f"Model `{record.model['name']}`, frozen; logistic regression; accuracy in % (mean ± std over folds "
             "for CV tasks). Published columns: Reimers & Gurevych 2019 (SBERT, Table 5), **bert-base**, a different "
             "and larger model, shown for context only.", "",
             "| task | protocol | cls | mean | best other | published bert-base [CLS] | published bert-base mean |",
             "|---|---|---|---|---|---|---|"]
    for task, r in record.tasks.items():
        pools = r["poolings"]
        others = {p: v for p, v in pools.items() if p not in ("cls", "mean")}
        best = max(others, key=lambda p: others[p]["accuracy"]) if others else None
        cell = lambda v: f"{v['accuracy']:.2f}" + (f" ± {v['accuracy_std']:.2f}" if len(v["folds"]) > 1 else "")  # noqa: E731
        extra = f" (macro recall {pools['mean']['macro_recall']:.2f})" if task == "tweet_eval_sentiment" and \
            "mean" in pools else ""
        lines.append(f"| {task} | {r['protocol']} | {cell(pools['cls']) if 'cls' in pools else '—'} | "
                     f"{cell(pools['mean']) + extra if 'mean' in pools else '—'} | "
                     f"{f'{cell(others[best])} ({best})' if best else '—'} | "
                     f"{PUBLISHED['bert-base [CLS]'].get(task, '—')} | {PUBLISHED['bert-base mean'].get(task, '—')} |")
    return "\n".join(lines) + "\n"
