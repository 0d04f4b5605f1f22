"""What a person reads: a Markdown report and a confusion-matrix plot per run, and a summary table per cache."""

import csv
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.paths import atomic_write_bytes  # noqa: E402
from pipeline.train.runs import RunRecord  # noqa: E402

LARGE = 30  # above this many classes: no per-cell numbers or names in the plot, top confusions in the report
MAX_INCHES = 12.0  # the confusion plot never exceeds this (1320 px at 110 dpi), whatever the class count
TOP_CONFUSIONS = 20
SUMMARY_FIELDS = ["pooling", "head", "accuracy", "acc_lo", "acc_hi", "macro_f1", "f1_lo", "f1_hi", "roc_auc",
                  "log_loss", "ece", "train_s", "params"]


def fmt(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def run_report(record: RunRecord, metrics: dict) -> str:
    """Markdown for one run: headline numbers with intervals, the baseline, per-class scores, the confusion."""
    names = record.label_names
    lo, hi = metrics["accuracy_ci95"]
    flo, fhi = metrics["macro_f1_ci95"]
    base = metrics["majority_baseline"]
    lines = [
        f"# {record.head} on {record.pooling} — {record.cache}",
        "",
        f"Model `{record.encoder.model.name}`, max length {record.encoder.max_length}, "
        f"dtype {record.encoder.dtype}. Train {record.n_train} rows, dev {record.n_dev}, "
        f"test {metrics['n_test']}. Hyperparameters chosen on {record.selection}: {record.params or 'fixed'}. "
        f"Trained in {record.train_seconds:.1f}s.",
        "",
        "| metric | test | 95% CI | majority baseline |",
        "|---|---|---|---|",
        f"| accuracy | {fmt(metrics['accuracy'])} | {fmt(lo)} – {fmt(hi)} | {fmt(base['accuracy'])} |",
        f"| macro-F1 | {fmt(metrics['macro_f1'])} | {fmt(flo)} – {fmt(fhi)} | {fmt(base['macro_f1'])} |",
        f"| weighted-F1 | {fmt(metrics['weighted_f1'])} | | |",
        f"| ROC-AUC | {fmt(metrics['roc_auc'])} | | 0.5 |",
        f"| average precision | {fmt(metrics['average_precision'])} | | |",
        f"| log-loss | {fmt(metrics['log_loss'])} | | |",
        f"| ECE (15 bins) | {fmt(metrics['ece'])} | | |",
        "",
        *per_class_lines(metrics),
        *confusion_lines(metrics["confusion"], names),
        "",
    ]
    return "\n".join(lines)


def per_class_lines(metrics: dict) -> list[str]:
    """Per-class scores for the classes with test rows; those without any are named apart, since their zeros are
    not scores and the macro averages leave them out."""
    untested = metrics.get("no_test_rows", {})
    lines = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|",
             *[f"| {n} | {fmt(c['precision'])} | {fmt(c['recall'])} | {fmt(c['f1'])} | {c['support']} |"
               for n, c in metrics["per_class"].items() if n not in untested]]
    if untested:
        listed = ", ".join(f"{n} (predicted {k} time{'' if k == 1 else 's'})" for n, k in untested.items())
        lines += ["", f"No test rows: {listed}. Macro averages cover the {len(metrics['per_class']) - len(untested)} "
                      "classes with test rows only."]
    return [*lines, ""]


def confusion_lines(confusion: list[list[int]], names: list[str]) -> list[str]:
    """The full matrix for a few classes; above LARGE classes only the most frequent confusions, which a reader can
    use (a 200 x 200 Markdown table is not readable)."""
    if len(names) <= LARGE:
        return ["Confusion matrix (rows: true, columns: predicted):", "",
                "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|",
                *[f"| {names[i]} | " + " | ".join(str(v) for v in row) + " |" for i, row in enumerate(confusion)]]
    top = top_confusions(np.asarray(confusion), TOP_CONFUSIONS)
    return [f"Top {len(top)} confusions of {len(names)} classes (full matrix in metrics.json):", "",
            "| true | predicted | count |", "|---|---|---|",
            *[f"| {names[i]} | {names[j]} | {count} |" for i, j, count in top]]


def top_confusions(matrix: np.ndarray, limit: int) -> list[tuple[int, int, int]]:
    """The `limit` largest off-diagonal cells (true, predicted, count), largest first, ties in matrix order."""
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    rows, cols = np.unravel_index(np.argsort(-off, axis=None, kind="stable")[:limit], off.shape)
    return [(int(i), int(j), int(off[i, j])) for i, j in zip(rows, cols, strict=True) if off[i, j] > 0]


def confusion_png(path: Path, confusion: list[list[int]], names: list[str], title: str) -> None:
    """Counts with class names for up to LARGE classes; above that a row-normalised heat map by class index. The
    figure is capped at MAX_INCHES a side: its size (and memory) must not grow with the class count."""
    matrix, n = np.asarray(confusion), len(names)
    fig, ax = plt.subplots(figsize=(min(MAX_INCHES, 2.2 + 0.9 * n), min(MAX_INCHES, 1.8 + 0.9 * n)), dpi=110)
    if n <= LARGE:
        _labelled_counts(ax, matrix, names)
    else:
        _row_normalised(fig, ax, matrix)
    ax.set_title(title, fontsize=9)
    save_figure(fig, path)


def _labelled_counts(ax, matrix: np.ndarray, names: list[str]) -> None:
    """Every cell's count and every class name; fonts shrink once the size cap makes cells small."""
    size = 10 if len(names) <= 10 else max(5.0, 200 / len(names))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=size)
    ax.set_yticks(range(len(names)), names, fontsize=size)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=size,
                color="white" if v > matrix.max() / 2 else "black")


def _row_normalised(fig, ax, matrix: np.ndarray) -> None:
    """Share of each true class's rows per predicted class: comparable across classes of any size; no cell text."""
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0)
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class's test rows")
    ax.set_xlabel("predicted class (index in label order)")
    ax.set_ylabel("true class (index in label order)")


def save_figure(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def summary_row(record: RunRecord, metrics: dict) -> dict:
    return {"pooling": record.pooling, "head": record.head, "accuracy": metrics["accuracy"],
            "acc_lo": metrics["accuracy_ci95"][0], "acc_hi": metrics["accuracy_ci95"][1],
            "macro_f1": metrics["macro_f1"], "f1_lo": metrics["macro_f1_ci95"][0],
            "f1_hi": metrics["macro_f1_ci95"][1], "roc_auc": metrics["roc_auc"], "log_loss": metrics["log_loss"],
            "ece": metrics["ece"], "train_s": record.train_seconds, "params": record.params}


def update_summary(path: Path, rows: list[dict]) -> list[dict]:
    """Merge new rows into runs.csv (one row per pooling x head, newest wins), sorted by accuracy."""
    merged = {}
    if path.exists():
        with path.open(newline="") as handle:
            merged = {(r["pooling"], r["head"]): r for r in csv.DictReader(handle)}
    merged.update({(r["pooling"], r["head"]): r for r in rows})
    ordered = sorted(merged.values(), key=lambda r: -float(r["accuracy"]))
    write_csv(path, ordered, SUMMARY_FIELDS)
    return ordered


def write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, out.getvalue().encode())


def summary_table(rows: list[dict]) -> str:
    """A fixed-width table for the terminal: a swap's effect at a glance."""
    header = f"{'pooling':<16} {'head':<11} {'accuracy':>8} {'95% CI':>15} {'macro-F1':>8} {'train s':>8}"
    lines = [header, "-" * len(header)]
    for r in rows:
        ci = f"{float(r['acc_lo']):.3f}-{float(r['acc_hi']):.3f}"
        lines.append(f"{r['pooling']:<16} {r['head']:<11} {float(r['accuracy']):>8.4f} {ci:>15} "
                     f"{float(r['macro_f1']):>8.4f} {float(r['train_s']):>8.1f}")
    return "\n".join(lines)
