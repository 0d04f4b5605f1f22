"""The learning curve: test accuracy against labelled rows per class (k), for every frozen head on one pooling,
SetFit and full fine-tuning, so a user sees from which k fine-tuning starts to pay on their own data.

Protocol (the MTEB / SetFit one): for each k, k rows of every class are drawn from train without replacement,
seeded and stratified, and never from dev or test; each method is scored on the full test split. Below k = all a
point sees only its drawn rows: frozen heads select by CV on them (fit_one on drawn train + test rows), SetFit has
no selection, full fine-tuning trains a fixed number of steps. At k = all every method runs exactly as its own
command does (`make train`: fit_one with dev selection; `make finetune`: early stopping on dev), so those points
equal the commands' figures. Points are written as they finish; a rerun skips the ones it already has.
"""

import hashlib
import json
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.bench.curve_report import ALL, read_csv, write_curve
from pipeline.cache import EmbeddingCache, Embeddings, load_embeddings
from pipeline.data import Dataset, DataSpec, subset
from pipeline.errors import PipelineError, first_line
from pipeline.finetune.data import draw_per_class, split_rows
from pipeline.finetune.settings import FinetuneSettings
from pipeline.train.heads import HEADS, HeadUnavailable
from pipeline.train.report import write_csv
from pipeline.train.stage import check_splits, fit_one
from pipeline.workers import process_pool

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
                    tqdm.write(f"skipped {head} at k={k}, seed {s}: {first_line(exc, 160)}",
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
    from pipeline.embed.encoder import Encoder
    from pipeline.embed.settings import EncoderOptions
    from pipeline.finetune.checkpoint import Checkpoints
    from pipeline.finetune.stage import finetune_with, run_method

    ds = data.load()
    config = EncoderOptions(plan.finetune.max_length, device, plan.finetune.dtype).resolve(model, training=True)
    smallest = int(np.bincount(ds.labels[ds.splits == "train"]).min())
    test = np.flatnonzero(ds.splits == "test")
    for method, ks in (("setfit", plan.setfit_ks), ("full", plan.full_ks)):
        for k in capped([k for k in ks if k in plan.ks], smallest):
            for s in ([data.seed] if k == ALL else range(data.seed, data.seed + plan.tuned_seeds)):
                if (method, str(k), s) in done:
                    bar.update()
                    continue
                started = time.perf_counter()
                settings = replace(plan.finetune, method=method, seed=s)
                if k == ALL:
                    accuracy = finetune_with(ds, config, settings, models, runs, progress).record.test_accuracy
                else:
                    part = subset(ds, np.sort(np.concatenate([draw(ds.labels, ds.splits, k, s), test])))
                    settings = replace(settings, min_steps=plan.small_k_steps if method == "full" else 0)
                    settings = settings.resolved(config.dtype)
                    rows = split_rows(part, None, s, hold_out=False)
                    encoder = Encoder(config)
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


@process_pool()
def learning_curve(data: DataSpec, model: str, cache: Path, pooling: str, plan: CurvePlan, out: Path,
                   models: Path, runs: Path, device: str = "auto", progress: bool = True) -> list[dict]:
    """Measure every point (skipping those already in curve.csv for the same protocol) and write curve.csv, .md
    and .png under `out`; returns the points."""
    manifest = EmbeddingCache(cache).manifest()
    what = {k: v for k, v in asdict(plan).items() if k not in ("seeds", "tuned_seeds")}  # more seeds add points
    protocol = hashlib.sha256(json.dumps({"cache": manifest.key, "pooling": pooling, "plan": what,
                                          "seed": data.seed}, sort_keys=True, default=str).encode()).hexdigest()[:12]
    path = out / "curve.csv"
    points = [p for p in read_csv(path) if p["protocol"] == protocol]
    done = {(p["method"], p["k"], int(p["seed"])) for p in points}
    counts = manifest.data.split_counts
    smallest = int(np.bincount(load_embeddings(cache, pooling, "train").y).min())
    per_class_all = counts.get("train", 0) / max(1, len(manifest.label_names))

    def write(method: str, k, seed: int, accuracy: float, seconds: float) -> None:
        points.append({"method": method, "k": str(k), "rows_per_class": per_class_all if k == ALL else k,
                       "seed": seed, "accuracy": accuracy, "seconds": round(seconds, 1), "protocol": protocol})
        write_csv(path, points, FIELDS)
        if not method.startswith("frozen"):  # a costly point: the table and plot so far, in case of a stop
            write_curve(out, points, plan, pooling, manifest.name, counts.get("test", 0))

    bar = tqdm(total=count_points(plan, smallest), desc="curve", unit="point", disable=not progress,
               file=sys.stderr)
    frozen_points(cache, pooling, plan, data.seed, done, write, bar)
    write_curve(out, points, plan, pooling, manifest.name, counts.get("test", 0))
    tuned_points(data, model, plan, models, runs, device, done, write, bar, progress)
    bar.close()
    write_curve(out, points, plan, pooling, manifest.name, counts.get("test", 0))
    return points


def default_pooling(bench_folder: Path) -> str:
    """The best pooling of an earlier `bench heads` run on this cache (its leaderboard.csv), else 'mean'."""
    rows = read_csv(bench_folder / "leaderboard.csv")
    return rows[0]["pooling"] if rows else "mean"


def frozen_cache(ds: Dataset, encoder, pooling: str | None, embeddings, bench: Path,
                 progress: bool) -> tuple[Path, str]:
    """The frozen heads' cache and pooling, embedded by `encoder` (resolved once, by the caller): `pooling`, else the
    best of an earlier `bench heads` under `bench` (found by the cache's name, not its poolings)."""
    from pipeline.embed.stage import embed_dataset
    from pipeline.storage import ensure_writable

    ensure_writable(embeddings)
    if pooling is None:
        first = embed_dataset(ds, encoder, ["mean"], embeddings, progress=progress)
        pooling = default_pooling(Path(bench) / first.path.name)
    return embed_dataset(ds, encoder, [pooling], embeddings, progress=progress).path, pooling
