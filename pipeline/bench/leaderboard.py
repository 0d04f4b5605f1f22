"""Which pooling and which head win: every pooling x every head on one cache, with intervals and a paired test
against the best row, plus the layer probe (logreg on each layer's token mean)."""

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.cache import LAYERS, EmbeddingCache, load_embeddings
from pipeline.paths import atomic_write_bytes, atomic_write_json
from pipeline.records import JsonRecord
from pipeline.train.heads import HEADS, HeadUnavailable
from pipeline.train.metrics import accuracy_batch, bootstrap_ci, macro_f1_batch, paired_bootstrap_p
from pipeline.train.report import save_figure, write_csv
from pipeline.train.stage import check_splits, expand_poolings, fit_one
from pipeline.workers import process_pool

FIELDS = ["rank", "pooling", "head", "accuracy", "acc_lo", "acc_hi", "macro_f1", "f1_lo", "f1_hi", "train_s",
          "p_vs_best", "differs_from_best"]


@dataclass(frozen=True)
class LeaderboardRecord(JsonRecord):
    """leaderboard.json: every pooling x head ranked (the rows of leaderboard.csv), and the layer probe's rows."""

    leaderboard: list[dict]
    layer_probe: list[dict]
    schema: int = 1

    REWRITE = "`bert-pipeline bench heads` again"


@process_pool()
def leaderboard(cache: Path, heads: list[str] | None = None, seed: int = 0, progress: bool = True) -> list[dict]:
    """Fit every head on every pooling; rank by test accuracy; p_vs_best is a one-sided paired bootstrap p-value."""
    manifest = EmbeddingCache(cache).manifest()
    heads = heads or list(HEADS)
    poolings = expand_poolings("all", manifest)
    results = []
    bar = tqdm(total=len(poolings) * len(heads), desc="bench", unit="fit", disable=not progress, file=sys.stderr)
    for pooling in poolings:
        emb = load_embeddings(cache, pooling)
        check_splits(emb)
        for head in heads:
            bar.set_postfix_str(f"{pooling}/{head}")
            try:
                results.append(fit_one(emb, pooling, head, seed))
            except HeadUnavailable as exc:
                tqdm.write(f"skipped {head} on {pooling}: {exc}", file=sys.stderr)
            bar.update()
    bar.close()
    return rank(results, seed)


def rank(results: list, seed: int) -> list[dict]:
    y = results[0].y_test
    preds = [r.proba.argmax(axis=1) for r in results]
    accuracy = [float((p == y).mean()) for p in preds]
    order = np.argsort(accuracy, kind="stable")[::-1]
    best = preds[order[0]]
    classes = np.unique(y)  # macro-F1 over the classes with test rows only, as in metrics.macro_classes
    rows = []
    for position, i in enumerate(order, start=1):
        r, p = results[i], preds[i]
        acc_ci = bootstrap_ci(y, p, accuracy_batch, seed)
        f1 = macro_f1_batch(y, p, classes)
        f1_ci = bootstrap_ci(y, p, lambda t, q: macro_f1_batch(t, q, classes), seed)
        p_value = 1.0 if position == 1 else paired_bootstrap_p(y, best, p, seed)
        rows.append({"rank": position, "pooling": r.pooling, "head": r.head, "accuracy": accuracy[i],
                     "acc_lo": acc_ci[0], "acc_hi": acc_ci[1], "macro_f1": float(f1), "f1_lo": f1_ci[0],
                     "f1_hi": f1_ci[1], "train_s": r.seconds, "p_vs_best": p_value,
                     "differs_from_best": position > 1 and p_value < 0.05})
    return rows


@process_pool()
def layer_probe(cache: Path, seed: int = 0, progress: bool = True) -> list[dict]:
    """logreg on the token mean of each layer: which layer knows the labels best?"""
    layers = EmbeddingCache(cache).manifest().poolings.get(LAYERS)
    if layers is None:
        return []
    n_layers = layers.shape[0]
    rows = []
    for layer in tqdm(range(n_layers), desc="layer probe", unit="layer", disable=not progress, file=sys.stderr):
        fitted = fit_one(load_embeddings(cache, f"layer{layer}"), f"layer{layer}", "logreg", seed)
        pred = fitted.proba.argmax(axis=1)
        lo, hi = bootstrap_ci(fitted.y_test, pred, accuracy_batch, seed)
        rows.append({"layer": layer, "accuracy": float((pred == fitted.y_test).mean()), "acc_lo": lo, "acc_hi": hi})
    return rows


def write_leaderboard(folder: Path, rows: list[dict], probe: list[dict], title: str) -> None:
    """leaderboard.csv/.md/.png and, when the cache has layers, layer_probe.csv/.png, under `folder`."""
    write_csv(folder / "leaderboard.csv", rows, FIELDS)
    atomic_write_bytes(folder / "leaderboard.md", leaderboard_markdown(rows, probe, title).encode())
    _bars(folder / "leaderboard.png", rows, title)
    if probe:
        write_csv(folder / "layer_probe.csv", probe, list(probe[0]))
        _probe_plot(folder / "layer_probe.png", probe, title)
    atomic_write_json(folder / "leaderboard.json", LeaderboardRecord(rows, probe).to_json())


def leaderboard_markdown(rows: list[dict], probe: list[dict], title: str) -> str:
    lines = [f"## Leaderboard: {title}", "",
             "| # | pooling | head | accuracy (95% CI) | macro-F1 (95% CI) | train s | p vs best |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = "" if r["rank"] == 1 or r["differs_from_best"] else " (tie)"
        p = "—" if r["rank"] == 1 else f"{r['p_vs_best']:.3f}{mark}"
        lines.append(f"| {r['rank']} | {r['pooling']} | {r['head']} | {r['accuracy']:.4f} ({r['acc_lo']:.3f}–"
                     f"{r['acc_hi']:.3f}) | {r['macro_f1']:.4f} ({r['f1_lo']:.3f}–{r['f1_hi']:.3f}) | "
                     f"{r['train_s']:.1f} | {p} |")
    lines += ["", "p vs best: one-sided paired bootstrap (1000 resamples of the test set) that the best row is not "
              "more accurate; '(tie)' marks rows not significantly worse than the best (p >= 0.05).", ""]
    if probe:
        lines += ["### Layer probe (logreg on each layer's token mean)", "", "| layer | accuracy (95% CI) |",
                  "|---|---|", *[f"| {p['layer']} | {p['accuracy']:.4f} ({p['acc_lo']:.3f}–{p['acc_hi']:.3f}) |"
                                 for p in probe], ""]
    return "\n".join(lines)


def _bars(path: Path, rows: list[dict], title: str) -> None:
    import matplotlib.pyplot as plt

    labels = [f"{r['pooling']} / {r['head']}" for r in rows][::-1]
    acc = np.array([r["accuracy"] for r in rows])[::-1]
    err = np.array([[r["accuracy"] - r["acc_lo"], r["acc_hi"] - r["accuracy"]] for r in rows])[::-1].T
    colors = ["tab:blue" if r["rank"] == 1 or not r["differs_from_best"] else "tab:gray" for r in rows][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(rows) + 1.2), dpi=110)
    ax.barh(labels, acc, xerr=err, color=colors, capsize=2)
    ax.set_xlim(max(0.0, acc.min() - 0.1), min(1.0, acc.max() + 0.05))
    ax.set_xlabel("test accuracy (95% bootstrap CI); blue: best and rows tied with it")
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
    save_figure(fig, path)


def _probe_plot(path: Path, probe: list[dict], title: str) -> None:
    import matplotlib.pyplot as plt

    layers = [p["layer"] for p in probe]
    fig, ax = plt.subplots(figsize=(5, 3), dpi=110)
    ax.plot(layers, [p["accuracy"] for p in probe], marker="o")
    ax.fill_between(layers, [p["acc_lo"] for p in probe], [p["acc_hi"] for p in probe], alpha=0.2)
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("test accuracy, logreg")
    ax.set_title(f"Layer probe: {title}", fontsize=9)
    save_figure(fig, path)
