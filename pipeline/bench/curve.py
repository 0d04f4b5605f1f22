"""The learning curve: test accuracy against labelled rows per class (k), for every frozen head on one pooling,
SetFit and full fine-tuning, so a user sees from which k fine-tuning starts to pay on their own data.

Protocol (the MTEB / SetFit one): for each k, k rows of every class are drawn from train without replacement,
seeded and stratified, and never from dev or test; each method is scored on the full test split. Below k = all a
point sees only its drawn rows: frozen heads select by CV on them (fit_one on drawn train + test rows), SetFit has
no selection, full fine-tuning trains a fixed number of steps. At k = all every method runs exactly as its own
command does (`make train`: fit_one with dev selection; `make finetune`: early stopping on dev), so those points
equal the commands' figures. Points are written as they finish; a rerun skips the ones it already has.
"""

import csv
import hashlib
import json
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.cache import EmbeddingCache, Embeddings, load_embeddings
from pipeline.data import DataSpec, subset
from pipeline.errors import PipelineError
from pipeline.finetune.data import draw_per_class, split_rows
from pipeline.finetune.settings import FinetuneSettings
from pipeline.paths import atomic_write_bytes
from pipeline.train.heads import HEADS, HeadUnavailable
from pipeline.train.report import save_figure, write_csv
from pipeline.train.stage import check_splits, fit_one

ALL = "all"
FIELDS = ["method", "k", "rows_per_class", "seed", "accuracy", "seconds", "protocol"]


@dataclass(frozen=True)
class CurvePlan:
    """Which points to measure. ks: rows per class (ALL: the whole train split); seeds: draws per k for the frozen
    heads, tuned_seeds for the costly fine-tuning methods (k = all is one point: there is nothing to draw)."""

    ks: list = field(default_factory=lambda: [8, 16, 32, 64, 128, 256, ALL])
    seeds: int = 5
    heads: list[str] = field(default_factory=lambda: list(HEADS))
    setfit_ks: list = field(default_factory=lambda: [8, 16, 32, 64])
    full_ks: list = field(default_factory=lambda: [64, 256, ALL])
    tuned_seeds: int = 2
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    small_k_steps: int = 100  # full fine-tuning below k = all: at least this many steps (no dev to stop on)


def parse_ks(spec: str) -> list:
    """'8,16,all' -> [8, 16, 'all']; anything else is refused with the offending item."""
    out = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item == ALL:
            out.append(ALL)
        elif item.isdigit() and int(item) > 0:
            out.append(int(item))
        else:
            raise PipelineError(f"k {item!r} in {spec!r} is not a positive whole number or 'all': give e.g. 8,16,all")
    if not out:
        raise PipelineError(f"no k given in {spec!r}: give e.g. 8,16,32,all")
    return sorted(set(out), key=lambda k: (k == ALL, k if k != ALL else 0))


def capped(ks: list, smallest_class: int) -> list:
    """The ks the data can give: a k at or above the smallest train class is 'all'."""
    return sorted({k if k == ALL or k < smallest_class else ALL for k in ks}, key=lambda k: (k == ALL, k))


def draw(labels: np.ndarray, splits: np.ndarray, k, seed: int) -> np.ndarray:
    """Row indices of one point's training rows: k per class from the train split (seeded, stratified), or every
    train row for k = all. Dev and test rows are never drawn."""
    train = np.flatnonzero(splits == "train")
    return train if k == ALL else draw_per_class(labels, train, int(k), seed)


def frozen_points(cache: Path, pooling: str, plan: CurvePlan, seed: int, done: set, write, bar) -> None:
    """Every frozen head at every k and seed, on the cached vectors (no encoder run)."""
    emb = load_embeddings(cache, pooling)
    check_splits(emb)
    test = np.flatnonzero(emb.splits == "test")
    ks = capped(plan.ks, int(np.bincount(emb.y[emb.splits == "train"]).min()))
    for k in ks:
        for s in ([seed] if k == ALL else range(seed, seed + plan.seeds)):
            part = emb if k == ALL else _rows(emb, np.concatenate([draw(emb.y, emb.splits, k, s), test]))
            for head in plan.heads:
                if (f"frozen {head}", str(k), s) in done:
                    bar.update()
                    continue
                started = time.perf_counter()
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # few-shot CV folds warn by design; scores judge them
                        fitted = fit_one(part, pooling, head, s)
                except (HeadUnavailable, ValueError) as exc:
                    tqdm.write(f"skipped {head} at k={k}, seed {s}: {str(exc).splitlines()[0][:160]}",
                               file=sys.stderr)
                    bar.update()
                    continue
                accuracy = float((fitted.proba.argmax(axis=1) == fitted.y_test).mean())
                write(f"frozen {head}", k, s, accuracy, time.perf_counter() - started)
                bar.update()


def _rows(emb: Embeddings, index: np.ndarray) -> Embeddings:
    return Embeddings(emb.X[index], emb.y[index], emb.ids[index], emb.splits[index], emb.label_names)


def tuned_points(data: DataSpec, model: str, plan: CurvePlan, models: Path, runs: Path, device: str, done: set,
                 write, bar, progress: bool) -> None:
    """SetFit and full fine-tuning at their ks. Below k = all each point trains a fresh copy of the base model on
    a data set of its drawn rows plus the test rows; k = all is the `finetune` stage itself (reused if finished)."""
    from pipeline.embed.device import dtype_name, pick_device, pick_dtype
    from pipeline.embed.encoder import Encoder
    from pipeline.embed.models import resolve_model
    from pipeline.finetune.checkpoint import Checkpoints
    from pipeline.finetune.stage import finetune, run_method

    ds = data.load()
    ref = resolve_model(model)
    smallest = int(np.bincount(ds.labels[ds.splits == "train"]).min())
    test = np.flatnonzero(ds.splits == "test")
    dtype = dtype_name(pick_dtype(plan.finetune.dtype, pick_device(device)))
    for method, ks in (("setfit", plan.setfit_ks), ("full", plan.full_ks)):
        for k in capped([k for k in ks if k in plan.ks], smallest):
            for s in ([data.seed] if k == ALL else range(data.seed, data.seed + plan.tuned_seeds)):
                if (method, str(k), s) in done:
                    bar.update()
                    continue
                started = time.perf_counter()
                settings = replace(plan.finetune, method=method, seed=s)
                if k == ALL:
                    accuracy = finetune(data, model, settings, models, runs, device, progress).record["test_accuracy"]
                else:
                    part = subset(ds, np.sort(np.concatenate([draw(ds.labels, ds.splits, k, s), test])))
                    settings = replace(settings, min_steps=plan.small_k_steps if method == "full" else 0)
                    settings = settings.resolved(dtype)
                    rows = split_rows(part, None, s, hold_out=False)
                    encoder = Encoder(ref, device, settings.dtype, settings.max_length)
                    outcome = run_method(encoder, part, rows, settings, Checkpoints(None, ""), progress)
                    accuracy = float((outcome.proba_test.argmax(axis=1) == part.labels[rows.test]).mean())
                write(method, k, s, accuracy, time.perf_counter() - started)
                bar.update()


def count_points(plan: CurvePlan, smallest: int) -> int:
    ks = capped(plan.ks, smallest)
    frozen = sum(1 if k == ALL else plan.seeds for k in ks) * len(plan.heads)
    tuned = sum(1 if k == ALL else plan.tuned_seeds for ks_ in (plan.setfit_ks, plan.full_ks)
                for k in capped([k for k in ks_ if k in plan.ks], smallest))
    return frozen + tuned


def learning_curve(data: DataSpec, model: str, cache: Path, pooling: str, plan: CurvePlan, out: Path,
                   models: Path, runs: Path, device: str = "auto", progress: bool = True) -> list[dict]:
    """Measure every point (skipping those already in curve.csv for the same protocol) and write curve.csv, .md
    and .png under `out`; returns the points."""
    manifest = EmbeddingCache(cache).manifest()
    protocol = hashlib.sha256(json.dumps({"cache": manifest.key, "pooling": pooling, "plan": asdict(plan),
                                          "seed": data.seed}, sort_keys=True, default=str).encode()).hexdigest()[:12]
    path = out / "curve.csv"
    points = [p for p in _read(path) if p["protocol"] == protocol]
    done = {(p["method"], p["k"], int(p["seed"])) for p in points}
    counts = manifest.data.split_counts
    smallest = int(np.bincount(load_embeddings(cache, pooling, "train").y).min())
    per_class_all = counts.get("train", 0) / max(1, len(manifest.label_names))

    def write(method: str, k, seed: int, accuracy: float, seconds: float) -> None:
        points.append({"method": method, "k": str(k), "rows_per_class": per_class_all if k == ALL else k,
                       "seed": seed, "accuracy": accuracy, "seconds": round(seconds, 1), "protocol": protocol})
        write_csv(path, points, FIELDS)

    bar = tqdm(total=count_points(plan, smallest), desc="curve", unit="point", disable=not progress,
               file=sys.stderr)
    frozen_points(cache, pooling, plan, data.seed, done, write, bar)
    tuned_points(data, model, plan, models, runs, device, done, write, bar, progress)
    bar.close()
    write_curve(out, points, plan, pooling, manifest.name, counts.get("test", 0))
    return points


def _read(path: Path) -> list[dict]:
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


def curve_markdown(points: list[dict], plan: CurvePlan, pooling: str, title: str, n_test: int) -> str:
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
    return "\n".join([*lines, "", winners(summary), ""])


def write_curve(folder: Path, points: list[dict], plan: CurvePlan, pooling: str, title: str, n_test: int) -> None:
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


def default_pooling(bench_folder: Path) -> str:
    """The best pooling of an earlier `bench heads` run on this cache (its leaderboard.csv), else 'mean'."""
    board = bench_folder / "leaderboard.csv"
    rows = _read(board)
    return rows[0]["pooling"] if rows else "mean"
