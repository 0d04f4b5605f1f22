"""Metrics of a head's predictions on the held-out split, with seeded bootstrap intervals and a baseline."""

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)
from sklearn.preprocessing import label_binarize

from pipeline.records import JsonRecord

N_BOOTSTRAP = 1000
BLOCK_CELLS = 4_000_000  # resample indices held at once (32 MB of int64)


METRICS_SCHEMA = 1  # the version in a metrics record; metrics.json written before it existed lack it


@dataclass(frozen=True)
class ClassScores:
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class Baseline:
    label: str  # the majority class of train
    accuracy: float
    macro_f1: float


@dataclass(frozen=True)
class Metrics(JsonRecord):
    """One head's test metrics, as metrics.json ("metrics"), the reports and runs.csv read them (train, fine-tune and
    predict all make them here)."""

    n_test: int
    accuracy: float
    macro_f1: float
    weighted_f1: float
    accuracy_ci95: list[float]
    macro_f1_ci95: list[float]
    macro_classes: list[str]  # the classes with test rows: what the macro averages cover
    no_test_rows: dict[str, int]  # other classes: how often each was predicted
    per_class: dict[str, ClassScores]
    confusion: list[list[int]]
    roc_auc: float | None
    average_precision: float | None
    log_loss: float
    ece: float
    majority_baseline: Baseline
    schema: int = METRICS_SCHEMA

    REWRITE = "`bert-pipeline train` again"

    @classmethod
    def parse(cls, record: dict) -> "Metrics":
        return cls(**{**record, "per_class": {k: ClassScores(**v) for k, v in record["per_class"].items()},
                      "majority_baseline": Baseline(**record["majority_baseline"])})


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, label_names: list[str], y_train: np.ndarray,
                           seed: int = 0) -> Metrics:
    """Everything a report shows. `proba` has one column per label in `label_names` order.

    Macro averages cover the classes with test rows only (`macro_classes`): a class seen only in train/dev has no
    F1 to speak of on this test set, and counting it as 0 would understate every head alike.
    """
    labels = np.arange(len(label_names))
    tested = macro_classes(y_true)
    y_pred = proba.argmax(axis=1)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    majority = int(np.bincount(y_train, minlength=len(labels)).argmax())
    baseline = np.full_like(y_true, majority)
    return Metrics(
        n_test=int(len(y_true)),
        accuracy=float(accuracy_score(y_true, y_pred)),
        macro_f1=float(f1_score(y_true, y_pred, labels=tested, average="macro", zero_division=0)),
        weighted_f1=float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        accuracy_ci95=bootstrap_ci(y_true, y_pred, accuracy_batch, seed),
        macro_f1_ci95=bootstrap_ci(y_true, y_pred, lambda t, q: macro_f1_batch(t, q, tested), seed),
        macro_classes=[label_names[i] for i in tested],
        no_test_rows={label_names[i]: int((y_pred == i).sum()) for i in labels if i not in set(tested)},
        per_class={name: ClassScores(float(p[i]), float(r[i]), float(f[i]), int(s[i]))
                   for i, name in enumerate(label_names)},
        confusion=confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        **ranking_metrics(y_true, proba, labels),
        log_loss=float(log_loss(y_true, _normalised(proba), labels=labels)),
        ece=expected_calibration_error(y_true, proba),
        majority_baseline=Baseline(label_names[majority], float(accuracy_score(y_true, baseline)),
                                   float(f1_score(y_true, baseline, labels=tested, average="macro", zero_division=0))),
    )


def ranking_metrics(y_true: np.ndarray, proba: np.ndarray, labels: np.ndarray) -> dict:
    """ROC-AUC and average precision: binary on the second class, one-vs-rest macro for more classes."""
    present = np.unique(y_true)
    if len(present) < 2:
        return {"roc_auc": None, "average_precision": None}
    if len(labels) == 2:
        return {"roc_auc": float(roc_auc_score(y_true, proba[:, 1])),
                "average_precision": float(average_precision_score(y_true, proba[:, 1]))}
    onehot = label_binarize(y_true, classes=labels)[:, present]
    return {"roc_auc": float(roc_auc_score(onehot, proba[:, present], average="macro")),
            "average_precision": float(average_precision_score(onehot, proba[:, present], average="macro"))}


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, bins: int = 15) -> float:
    """Mean |confidence - accuracy| over equal-width confidence bins, weighted by bin size (Guo et al. 2017)."""
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y_true
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            total += in_bin.mean() * abs(confidence[in_bin].mean() - correct[in_bin].mean())
    return float(total)


def accuracy_batch(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    return (t == p).mean(axis=-1)


def macro_classes(y_true: np.ndarray) -> np.ndarray:
    """The classes a macro average covers: those with at least one test row (sorted class indices)."""
    return np.unique(np.asarray(y_true))


def macro_f1_batch(t: np.ndarray, p: np.ndarray, classes) -> np.ndarray:
    """Macro-F1 for a stack of resamples (rows), vectorised: F1 = 2TP / (2TP + FP + FN) per class.

    `classes` are the class indices averaged over, fixed for all resamples (`macro_classes` of the full test split),
    so a resample that misses a rare class still scores it, as 0, like the point estimate's definition."""
    scores = []
    for c in classes:
        tp = ((t == c) & (p == c)).sum(axis=-1)
        fp = ((t != c) & (p == c)).sum(axis=-1)
        fn = ((t == c) & (p != c)).sum(axis=-1)
        denom = 2 * tp + fp + fn
        scores.append(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0))
    return np.mean(scores, axis=0)


def bootstrap_values(stat, n: int, seed: int, reps: int = N_BOOTSTRAP) -> np.ndarray:
    """`stat(idx)` for `reps` seeded resamples of n rows, drawn in blocks of about BLOCK_CELLS indices: memory stays
    bounded for large test sets (1000 x 67k indices would be half a GB). Drawing the rows block by block gives the
    same indices as one draw, so the values do not depend on the block size."""
    rng = np.random.default_rng(seed)
    step = max(1, min(reps, BLOCK_CELLS // max(n, 1)))
    return np.concatenate([stat(rng.integers(0, n, size=(min(step, reps - start), n)))
                           for start in range(0, reps, step)])


def bootstrap_ci(y_true: np.ndarray, y_pred: np.ndarray, stat, seed: int = 0) -> list[float]:
    """Seeded 95% percentile interval of `stat` over test-set resamples."""
    values = bootstrap_values(lambda idx: stat(y_true[idx], y_pred[idx]), len(y_true), seed)
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def paired_bootstrap_p(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, seed: int = 0) -> float:
    """Share of resamples in which A (the best row) does not beat B on accuracy: a one-sided paired p-value."""
    diff = bootstrap_values(lambda idx: accuracy_batch(y_true[idx], pred_a[idx]) -
                            accuracy_batch(y_true[idx], pred_b[idx]), len(y_true), seed)
    return float((diff <= 0).mean())


def _normalised(proba: np.ndarray) -> np.ndarray:
    """Clip away exact zeros (log-loss would be infinite) and keep rows summing to one."""
    clipped = np.clip(proba, 1e-15, 1)
    return clipped / clipped.sum(axis=1, keepdims=True)
