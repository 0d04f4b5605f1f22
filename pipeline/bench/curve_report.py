"""The learning curve's outputs: the summary over seeds, the sentence that says which method wins from which k, the
Markdown table and the plot (accuracy against k on a log axis, one line per method, a band over seeds)."""

import csv
from pathlib import Path

import numpy as np

from pipeline.paths import atomic_write_bytes
from pipeline.train.report import save_figure

ALL = "all"


def read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def summarise(points: list[dict]) -> dict[str, dict]:
    """method -> k -> (mean, std, min, max, n) over seeds."""
    table: dict[str, dict] = {}
    for p in points:
        table.setdefault(p["method"], {}).setdefault(p["k"], []).append(float(p["accuracy"]))
    return {m: {k: (float(np.mean(v)), float(np.std(v)), min(v), max(v), len(v)) for k, v in by_k.items()}
            for m, by_k in table.items()}


def _order(ks) -> list[str]:
    return sorted(ks, key=lambda k: (k == ALL, int(k) if k != ALL else 0))


def winners(summary: dict[str, dict]) -> str:
    """The sentence that answers the question: which method is best at which k, and from which k each fine-tuning
    method beats the best frozen head."""
    ks = _order({k for by_k in summary.values() for k in by_k})
    best = {k: max((m for m in summary if k in summary[m]), key=lambda m: summary[m][k][0]) for k in ks}
    spans, start = [], 0
    for i in range(1, len(ks) + 1):
        if i == len(ks) or best[ks[i]] != best[ks[start]]:
            span = ks[start] if i - 1 == start else f"{ks[start]}–{ks[i - 1]}"
            spans.append(f"{best[ks[start]]} at k = {span}")
            start = i
    lines = ["Best method by k: " + "; ".join(spans) + "."]
    frozen = [m for m in summary if m.startswith("frozen")]
    for method in [m for m in summary if not m.startswith("frozen")]:
        beats = [k for k in _order(summary[method])
                 if summary[method][k][0] > max((summary[f][k][0] for f in frozen if k in summary[f]), default=0)]
        measured = _order(summary[method])
        tail = next((k for i, k in enumerate(measured) if all(m in beats for m in measured[i:])), None)
        where = (f"from k = {tail} on" if tail else f"only at k = {', '.join(beats)}" if beats else "at none of")
        lines.append(f"{method} beats the best frozen head {where} (measured at k = {', '.join(measured)}).")
    return " ".join(lines)


def curve_markdown(points: list[dict], plan, pooling: str, title: str, n_test: int) -> str:
    summary = summarise(points)
    ks = _order({k for by_k in summary.values() for k in by_k})
    lines = [f"## Learning curve: {title}", "",
             f"Test accuracy (mean ± std over seeds; n = seeds) on the full test split ({n_test} rows) against k "
             f"labelled train rows per class. Frozen heads on the `{pooling}` pooling with {plan.seeds} seeds; "
             f"setfit and full fine-tuning (pooling `{plan.finetune.pooling}`) with {plan.tuned_seeds}. Rows are "
             "drawn per class from train only (seeded, stratified); below k = all a point uses only its drawn rows "
             f"(heads: C by CV on them; setfit: no selection; full: at least {plan.small_k_steps} steps, no early "
             "stopping); at k = all each method runs as its own command (make train, make finetune: dev for "
             "selection).", "",
             "| method | " + " | ".join(f"k={k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
    for method, by_k in sorted(summary.items(), key=lambda kv: (not kv[0].startswith("frozen"), kv[0])):
        cells = [f"{by_k[k][0]:.4f} ± {by_k[k][1]:.3f} (n={by_k[k][4]})" if k in by_k else "—" for k in ks]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    spent: dict[str, float] = {}
    for p in points:
        kind = "frozen heads" if p["method"].startswith("frozen") else p["method"]
        spent[kind] = spent.get(kind, 0.0) + float(p["seconds"])
    time_line = "Compute time of the points: " + ", ".join(f"{m} {s / 60:.1f} min" for m, s in spent.items()) + "."
    return "\n".join([*lines, "", winners(summary), "", time_line, ""])


def write_curve(folder: Path, points: list[dict], plan, pooling: str, title: str, n_test: int) -> None:
    atomic_write_bytes(folder / "curve.md", curve_markdown(points, plan, pooling, title, n_test).encode())
    _plot(folder / "curve.png", points, title)


def _plot(path: Path, points: list[dict], title: str) -> None:
    import matplotlib.pyplot as plt

    x_of = {p["k"]: float(p["rows_per_class"]) for p in points}
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    for method, by_k in sorted(summarise(points).items()):
        ks = _order(by_k)
        x = [x_of[k] for k in ks]
        mean, lo, hi = ([by_k[k][i] for k in ks] for i in (0, 2, 3))
        style = "--" if method.startswith("frozen") else "-"
        line, = ax.plot(x, mean, style, marker="o", markersize=3, label=method,
                        linewidth=1 if method.startswith("frozen") else 2)
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15)
    ax.set_xscale("log")
    ticks = sorted(set(x_of.values()))
    ax.set_xticks(ticks, [ALL if k == ALL else k for k in sorted(x_of, key=lambda k: x_of[k])])
    ax.minorticks_off()
    ax.set_xlabel("labelled train rows per class (k, log scale)")
    ax.set_ylabel("test accuracy (band: min–max over seeds)")
    ax.set_title(f"Learning curve: {title}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, path)
