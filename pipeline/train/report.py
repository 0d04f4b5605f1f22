"""What a person reads: a Markdown report and a confusion-matrix plot per run, and a summary table per cache."""

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.paths import atomic_write_bytes, writer_lock  # noqa: E402
from pipeline.train.metrics import Metrics  # noqa: E402
from pipeline.train.runs import RunRecord  # noqa: E402

LARGE = 30  # above this many classes: no per-cell numbers or names in the plot, top confusions in the report
MAX_INCHES = 12.0  # the confusion plot never exceeds this (1320 px at 110 dpi), whatever the class count
TOP_CONFUSIONS = 20
EXAMPLES = 10  # rows per error-analysis table
TEXT_CHARS = 100  # a text is cut to this many characters for display
SUMMARY_FIELDS = ["pooling", "head", "accuracy", "acc_lo", "acc_hi", "macro_f1", "f1_lo", "f1_hi", "roc_auc",
                  "log_loss", "ece", "train_s", "params"]


def fmt(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


@dataclass(frozen=True)
class Scored:
    """The rows a report's metrics were computed on, for its error analysis: ids, texts (None where the cache was
    made before it kept texts), true label indices and the probabilities (columns in label order)."""

    ids: np.ndarray
    texts: np.ndarray | None
    y_true: np.ndarray
    proba: np.ndarray


def run_report(record: RunRecord, metrics: Metrics, scored: Scored | None = None, scored_on: str | None = None) -> str:
    """Markdown for one run: headline numbers with intervals, the baseline, per-class scores, the confusion, and
    (given the scored rows) the error analysis. `scored_on` names a labelled set that predict scored, instead of the
    run's own test split."""
    names = record.label_names
    lo, hi = metrics.accuracy_ci95
    flo, fhi = metrics.macro_f1_ci95
    base = metrics.majority_baseline
    encoder = record.encoder
    settings = f"Model `{encoder.model.name}`, max length {encoder.max_length}, dtype {encoder.dtype}."
    if record.int8 is not None:
        settings += f" The {record.int8.describe()}."
    if scored_on is None:
        title, column = f"# {record.head} on {record.pooling} — {record.cache}", "test"
        about = (f"{settings} Train {record.n_train} rows, dev {record.n_dev}, test {metrics.n_test}. "
                 f"Hyperparameters chosen on {record.selection}: {record.params or 'fixed'}. "
                 f"Trained in {record.train_seconds:.1f}s.")
    else:
        title, column = f"# {record.head} on {record.pooling} — scored on {scored_on}", "scored"
        about = (f"{settings} The run was trained on {record.n_train} rows of {record.cache} (dev {record.n_dev}); "
                 f"here it scores {metrics.n_test} labelled rows of {scored_on}. The majority baseline always "
                 f"predicts the run's most frequent train label.")
    lines = [
        title,
        "",
        about,
        "",
        f"| metric | {column} | 95% CI | majority baseline |",
        "|---|---|---|---|",
        f"| accuracy | {fmt(metrics.accuracy)} | {fmt(lo)} – {fmt(hi)} | {fmt(base.accuracy)} |",
        f"| macro-F1 | {fmt(metrics.macro_f1)} | {fmt(flo)} – {fmt(fhi)} | {fmt(base.macro_f1)} |",
        f"| weighted-F1 | {fmt(metrics.weighted_f1)} | | |",
        f"| ROC-AUC | {fmt(metrics.roc_auc)} | | 0.5 |",
        f"| average precision | {fmt(metrics.average_precision)} | | |",
        f"| log-loss | {fmt(metrics.log_loss)} | | |",
        f"| ECE (15 bins) | {fmt(metrics.ece)} | | |",
        "",
        *per_class_lines(metrics),
        *confusion_lines(metrics.confusion, names),
        "",
        *(error_analysis_lines(scored, names) if scored is not None else []),
    ]
    return "\n".join(lines)


def error_analysis_lines(scored: Scored, names: list[str], limit: int = EXAMPLES) -> list[str]:
    """The `limit` most confident mistakes and the `limit` least confident correct predictions: where the head is
    sure and wrong (label noise, a blind spot) and where it barely gets it right. Ties keep row order."""
    confidence, predicted = scored.proba.max(axis=1), scored.proba.argmax(axis=1)
    wrong = np.flatnonzero(predicted != scored.y_true)
    right = np.flatnonzero(predicted == scored.y_true)
    mistakes = wrong[np.argsort(-confidence[wrong], kind="stable")][:limit]
    unsure = right[np.argsort(confidence[right], kind="stable")][:limit]
    lines = ["## Error analysis", ""]
    if scored.texts is None or any(scored.texts[i] is None for i in [*mistakes, *unsure]):
        lines += ["Rows marked '(not in cache)' have no text here: their cache was made before caches kept each "
                  "row's text (delete the cache folder and embed again to see them).", ""]
    lines += _examples(scored, names, mistakes, f"Most confident mistakes ({len(mistakes)} of {len(wrong)} wrong rows)",
                       "none, every row is right")
    lines += _examples(scored, names, unsure,
                       f"Least confident correct predictions ({len(unsure)} of {len(right)} right rows)",
                       "none, every row is wrong")
    return lines


def _examples(scored: Scored, names: list[str], rows: np.ndarray, heading: str, none: str) -> list[str]:
    if not len(rows):
        return [f"{heading}: {none}.", ""]
    confidence, predicted = scored.proba.max(axis=1), scored.proba.argmax(axis=1)
    return [f"{heading}:", "", "| row | text | true | predicted | confidence |", "|---|---|---|---|---|",
            *[f"| {_cell(str(scored.ids[i]))} | {_display(scored.texts, i)} | {_cell(names[scored.y_true[i]])} "
              f"| {_cell(names[predicted[i]])} | {confidence[i]:.3f} |" for i in rows], ""]


def _display(texts: np.ndarray | None, row: int) -> str:
    """A text as one short Markdown table cell: whitespace collapsed, cut to TEXT_CHARS, pipes escaped."""
    text = None if texts is None else texts[row]
    if text is None:
        return "(not in cache)"
    text = re.sub(r"\s+", " ", str(text)).strip()
    return _cell(text if len(text) <= TEXT_CHARS else text[: TEXT_CHARS - 1].rstrip() + "…")


def _cell(value: str) -> str:
    return value.replace("\\", "\\\\").replace("|", "\\|")


def per_class_lines(metrics: Metrics) -> list[str]:
    """Per-class scores for the classes with test rows; those without any are named apart, since their zeros are
    not scores and the macro averages leave them out."""
    untested = metrics.no_test_rows
    lines = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|",
             *[f"| {n} | {fmt(c.precision)} | {fmt(c.recall)} | {fmt(c.f1)} | {c.support} |"
               for n, c in metrics.per_class.items() if n not in untested]]
    if untested:
        listed = ", ".join(f"{n} (predicted {k} time{'' if k == 1 else 's'})" for n, k in untested.items())
        lines += ["", f"No test rows: {listed}. Macro averages cover the {len(metrics.per_class) - len(untested)} "
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


def summary_row(record: RunRecord, metrics: Metrics) -> dict:
    return {"pooling": record.pooling, "head": record.head, "accuracy": metrics.accuracy,
            "acc_lo": metrics.accuracy_ci95[0], "acc_hi": metrics.accuracy_ci95[1],
            "macro_f1": metrics.macro_f1, "f1_lo": metrics.macro_f1_ci95[0],
            "f1_hi": metrics.macro_f1_ci95[1], "roc_auc": metrics.roc_auc, "log_loss": metrics.log_loss,
            "ece": metrics.ece, "train_s": record.train_seconds, "params": record.params}


def update_summary(path: Path, rows: list[dict]) -> list[dict]:
    """Merge new rows into runs.csv (one row per pooling x head, newest wins), sorted by accuracy. Under the file's
    writer lock: two commands training on one cache at once would otherwise each drop the other's rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with writer_lock(path):
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
