"""What a person reads: a Markdown report and a confusion-matrix plot per run, and a summary table per cache."""

import csv
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.paths import atomic_write_bytes  # noqa: E402

SUMMARY_FIELDS = ["pooling", "head", "accuracy", "acc_lo", "acc_hi", "macro_f1", "f1_lo", "f1_hi", "roc_auc",
                  "log_loss", "ece", "train_s", "params"]


def fmt(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def run_report(record: dict, metrics: dict) -> str:
    """Markdown for one run: headline numbers with intervals, the baseline, per-class scores, the confusion."""
    names = record["label_names"]
    lo, hi = metrics["accuracy_ci95"]
    flo, fhi = metrics["macro_f1_ci95"]
    base = metrics["majority_baseline"]
    lines = [
        f"# {record['head']} on {record['pooling']} — {record['cache']}",
        "",
        f"Model `{record['encoder']['model']['name']}`, max length {record['encoder']['max_length']}, "
        f"dtype {record['encoder']['dtype']}. Train {record['n_train']} rows, dev {record['n_dev']}, "
        f"test {metrics['n_test']}. Hyperparameters chosen on {record['selection']}: {record['params'] or 'fixed'}. "
        f"Trained in {record['train_seconds']:.1f}s.",
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
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
        *[f"| {n} | {fmt(c['precision'])} | {fmt(c['recall'])} | {fmt(c['f1'])} | {c['support']} |"
          for n, c in metrics["per_class"].items()],
        "",
        "Confusion matrix (rows: true, columns: predicted):",
        "",
        "| | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
        *[f"| {names[i]} | " + " | ".join(str(v) for v in row) + " |" for i, row in enumerate(metrics["confusion"])],
        "",
    ]
    return "\n".join(lines)


def confusion_png(path: Path, confusion: list[list[int]], names: list[str], title: str) -> None:
    matrix = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(2.2 + 0.9 * len(names), 1.8 + 0.9 * len(names)), dpi=110)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > matrix.max() / 2 else "black")
    save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def summary_row(record: dict, metrics: dict) -> dict:
    return {"pooling": record["pooling"], "head": record["head"], "accuracy": metrics["accuracy"],
            "acc_lo": metrics["accuracy_ci95"][0], "acc_hi": metrics["accuracy_ci95"][1],
            "macro_f1": metrics["macro_f1"], "f1_lo": metrics["macro_f1_ci95"][0],
            "f1_hi": metrics["macro_f1_ci95"][1], "roc_auc": metrics["roc_auc"], "log_loss": metrics["log_loss"],
            "ece": metrics["ece"], "train_s": record["train_seconds"], "params": record["params"]}


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
