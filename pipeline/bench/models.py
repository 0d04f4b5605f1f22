"""Which encoder for this data: accuracy against embed cost across models, on the user's own data.

The models are loaded together and timed in interleaved rounds on the same sample of texts, with the same device and
dtype (on a shared machine, load that comes and goes then hits every model alike; each model's fastest pass counts).
Then, per model: embed every pooling into the cache (reused when there), run the pooling x head leaderboard, and
keep the best row. The best rows are
then compared: a one-sided paired bootstrap of each against the overall best on the shared test split, the
accuracy/cost frontier, and one sentence on which model to use when speed matters and when accuracy does.
"""

import gc
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from pipeline.bench.leaderboard import leaderboard
from pipeline.cache import load_embeddings
from pipeline.data import Dataset
from pipeline.embed.device import dtype_name
from pipeline.embed.encoder import Encoder
from pipeline.embed.pooling import DEFAULT_POOLINGS, POOLINGS
from pipeline.embed.settings import EncoderOptions
from pipeline.embed.sources import ModelRef, resolve_model
from pipeline.embed.stage import embed_dataset, embed_texts
from pipeline.errors import PipelineError
from pipeline.paths import atomic_write_bytes, atomic_write_json
from pipeline.records import JsonRecord
from pipeline.registry import parse_names
from pipeline.train.metrics import paired_bootstrap_p
from pipeline.train.report import save_figure, write_csv
from pipeline.train.stage import fit_one
from pipeline.workers import process_pool

DEFAULT_MODELS = ("default", "all-mpnet-base-v2")
SPEED_TEXTS = 500
SPEED_REPEATS = 5
WARMUP_TEXTS = 32
FIELDS = ["rank", "model", "name", "source", "params", "dim", "texts_per_s", "tokens_per_s", "s_per_1k", "cache_mb",
          "pooling", "head", "accuracy", "acc_lo", "acc_hi", "macro_f1", "f1_lo", "f1_hi", "p_vs_best",
          "differs_from_best", "frontier"]


def parse_models(spec: str) -> list[ModelRef]:
    """--models as resolved models (fetched now, before any embedding: a bad name fails fast); two names for the
    same files (e.g. 'default' and its hub id) count once."""
    refs: dict[tuple, ModelRef] = {}
    for name in parse_names(spec, None, "model"):
        ref = resolve_model(name)
        refs.setdefault((ref.identity.weights_sha256, ref.identity.tokenizer_sha256), ref)
    return list(refs.values())


@dataclass(frozen=True)
class ModelsRecord(JsonRecord):
    """models.json: the data, the settings every model ran with, one row per model (best first, the columns of
    models.csv and more), the recommendation, and each model's full pooling x head leaderboard."""

    data: str
    rows: int
    split_counts: dict[str, int]
    device: str
    dtype: str
    speed_texts: int
    speed_repeats: int
    load_1m: float | None
    seed: int
    heads: list[str] | None
    machine: dict
    models: list[dict]
    recommendation: str
    leaderboards: dict[str, list[dict]]
    schema: int = 1

    REWRITE = "`bert-pipeline bench models` again"


@process_pool()
def models_benchmark(ds: Dataset, refs: list[ModelRef], options: EncoderOptions, embeddings: Path,
                     heads: list[str] | None = None, seed: int = 0, speed_texts: int = SPEED_TEXTS,
                     speed_repeats: int = SPEED_REPEATS, progress: bool = True,
                     log: Callable[[str], None] = print) -> ModelsRecord:
    """The models.json record: one row per model, best first, plus each model's full leaderboard."""
    sample = _speed_sample(ds, speed_texts, seed)
    config = options.resolve(refs[0])  # device, dtype and runtime picked once, for every model alike
    loaded = []
    for ref in refs:
        log(f"{ref.name}: loading")
        encoder = Encoder(replace(config, model=ref))
        loaded.append((ref, encoder, [p for p in DEFAULT_POOLINGS
                                      if encoder.has_pooler or not POOLINGS[p].needs_pooler]))
    settings = {(str(e.device), dtype_name(e.dtype)) for _, e, _ in loaded}
    log(f"timing {len(loaded)} models on {len(sample)} texts, {speed_repeats} interleaved rounds")
    speeds, load = _throughput(loaded, sample, speed_repeats)
    rows, boards, predictions = [], {}, {}
    for i, speed in enumerate(speeds):
        ref, encoder, poolings = loaded[i]
        loaded[i] = None  # the encoder is freed once its cache is done
        log(f"{ref.name}: {speed['texts_per_s']:.1f} texts/s, {speed['tokens_per_s']:.0f} tokens/s "
            f"({encoder.device}, {dtype_name(encoder.dtype)}); embedding {len(ds)} rows (cache reused when there)")
        result = embed_dataset(ds, encoder, poolings, embeddings, progress=progress)
        params = sum(p.numel() for p in encoder.model.parameters())
        dim = encoder.hidden_size
        del encoder
        gc.collect()
        log(f"{ref.name}: pooling x head leaderboard on {result.path.name}")
        board = leaderboard(result.path, heads, seed, progress)
        best = board[0]
        predictions[ref.spec] = _predictions(result.path, best["pooling"], best["head"], seed)
        if abs(float((predictions[ref.spec][2] == predictions[ref.spec][1]).mean()) - best["accuracy"]) > 1e-9:
            log(f"{ref.name}: note: refitting {best['pooling']} + {best['head']} for the paired test gave another "
                "accuracy than the leaderboard (a head that is not deterministic here)")
        boards[ref.spec] = board
        rows.append({"model": ref.spec, "name": ref.name, "source": ref.identity.source, "params": params,
                     "dim": dim, **speed, "cache_mb": _folder_bytes(result.path) / 1e6,
                     "cache_poolings": list(result.manifest.poolings), "cache": str(result.path),
                     **{k: best[k] for k in ("pooling", "head", "accuracy", "acc_lo", "acc_hi", "macro_f1", "f1_lo",
                                             "f1_hi")}})
    device, dtype = settings.pop() if len(settings) == 1 else ("mixed", "mixed")
    rows = _compare(rows, predictions, seed)
    return ModelsRecord(ds.name, len(ds), ds.split_counts(), device, dtype, len(sample), speed_repeats, load, seed,
                        heads, {"processor": platform.processor() or platform.machine(),
                                "threads": torch.get_num_threads()},
                        rows, recommendation(rows), boards)


def _speed_sample(ds: Dataset, n: int, seed: int) -> list[str]:
    """The same seeded sample of the data's texts for every model (all of them when there are fewer than n)."""
    if n < 1:
        raise PipelineError(f"--speed-texts {n}: give at least 1")
    rows = np.sort(np.random.default_rng(seed).choice(len(ds), size=min(n, len(ds)), replace=False))
    return [ds.texts[i] for i in rows]


def _throughput(loaded: list[tuple[ModelRef, Encoder, list[str]]], texts: list[str],
                repeats: int) -> tuple[list[dict], float | None]:
    """Per model: tokenise, forward and pool `texts` in memory (its poolings), after a short warm-up; `repeats`
    rounds, each timing every model once in turn, and the fastest pass counts (other work only ever slows a pass
    down). Also the 1-minute load average right after."""
    if repeats < 1:
        raise PipelineError(f"--speed-repeats {repeats}: give at least 1")
    for _, encoder, poolings in loaded:
        embed_texts(encoder, texts[:WARMUP_TEXTS], poolings)
    passes: list[list[float]] = [[] for _ in loaded]
    for _ in range(repeats):
        for i, (_, encoder, poolings) in enumerate(loaded):
            started = time.perf_counter()
            embed_texts(encoder, texts, poolings)
            passes[i].append(time.perf_counter() - started)
    speeds = []
    for (_, encoder, _), times in zip(loaded, passes, strict=True):
        seconds, tokens = min(times), int(encoder.tokenize(texts).lengths.sum())
        speeds.append({"texts_per_s": len(texts) / seconds, "tokens_per_s": tokens / seconds,
                       "s_per_1k": 1000 * seconds / len(texts), "speed_tokens": tokens, "speed_passes_s": times})
    return speeds, (os.getloadavg()[0] if hasattr(os, "getloadavg") else None)


def _predictions(cache: Path, pooling: str, head: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(test ids, test labels, predicted labels) of the best row, refitted with the same seed."""
    emb = load_embeddings(cache, pooling)
    fitted = fit_one(emb, pooling, head, seed)
    return np.asarray(emb.ids)[emb.splits == "test"], fitted.y_test, fitted.proba.argmax(axis=1)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def _compare(rows: list[dict], predictions: dict, seed: int) -> list[dict]:
    """Rank by test accuracy, then speed; paired test of each best row against the overall best; mark the frontier
    (no other model both faster and at least as accurate)."""
    rows = sorted(rows, key=lambda r: (-r["accuracy"], r["s_per_1k"]))  # a tie goes to the faster model
    ids, y, best = predictions[rows[0]["model"]]
    for position, row in enumerate(rows, start=1):
        their_ids, their_y, pred = predictions[row["model"]]
        if not (np.array_equal(their_ids, ids) and np.array_equal(their_y, y)):
            raise PipelineError(f"the test rows of {row['name']} differ from those of {rows[0]['name']}: the caches "
                                "were made from different data; run the benchmark again")
        p_value = 1.0 if position == 1 else paired_bootstrap_p(y, best, pred, seed)
        row.update(rank=position, p_vs_best=p_value, differs_from_best=position > 1 and p_value < 0.05,
                   frontier=not any(o["s_per_1k"] < row["s_per_1k"] and o["accuracy"] >= row["accuracy"]
                                    for o in rows if o is not row))
    return rows


def short(row: dict) -> str:
    return row["name"].split("/")[-1]


def recommendation(rows: list[dict]) -> str:
    """Which model to use when speed matters and when accuracy does, from the numbers."""
    best, fastest = rows[0], min(rows, key=lambda r: r["s_per_1k"])
    if len(rows) == 1:
        return f"Only {short(best)} was measured: add models with --models to compare."
    if fastest is best:
        return f"Use {short(best)}: it is both the fastest and the most accurate of the {len(rows)} models here."
    ratio = best["s_per_1k"] / fastest["s_per_1k"]
    gain = 100 * (best["accuracy"] - fastest["accuracy"])
    if not fastest["differs_from_best"]:
        return (f"Use {short(fastest)} either way: {short(best)} is {gain:.1f} points more accurate, but not "
                f"significantly (p = {fastest['p_vs_best']:.3f}), and {ratio:.1f}x slower to embed.")
    return (f"When speed matters, use {short(fastest)} ({fastest['s_per_1k']:.1f} s per 1k texts, "
            f"{100 * fastest['accuracy']:.1f}% test accuracy); when accuracy does, use {short(best)} "
            f"({100 * best['accuracy']:.1f}%, +{gain:.1f} points, p = {fastest['p_vs_best']:.3f}) at {ratio:.1f}x "
            "the embed time.")


def write_models(folder: Path, record: ModelsRecord) -> list[Path]:
    """models.csv, models.md, models.json and models.png under `folder`."""
    folder = Path(folder)
    paths = [folder / f"models.{ext}" for ext in ("csv", "md", "json", "png")]
    write_csv(paths[0], [{k: r[k] for k in FIELDS} for r in record.models], FIELDS)
    atomic_write_bytes(paths[1], models_markdown(record).encode())
    atomic_write_json(paths[2], record.to_json())
    _frontier_plot(paths[3], record)
    return paths


def models_markdown(record: ModelsRecord) -> str:
    lines = [f"## Which encoder: {record.data} ({record.rows} rows: "
             f"{', '.join(f'{k} {v}' for k, v in record.split_counts.items())})", "",
             "| # | model | params | dim | texts/s | tokens/s | s / 1k texts | cache MB | best pooling + head | "
             "accuracy (95% CI) | macro-F1 (95% CI) | p vs best |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in record.models:
        p = "—" if r["rank"] == 1 else f"{r['p_vs_best']:.3f}" + ("" if r["differs_from_best"] else " (tie)")
        lines.append(f"| {r['rank']} | {short(r)} | {r['params'] / 1e6:.1f}M | {r['dim']} | {r['texts_per_s']:.1f} | "
                     f"{r['tokens_per_s']:.0f} | {r['s_per_1k']:.1f} | {r['cache_mb']:.0f} | {r['pooling']} + "
                     f"{r['head']} | {r['accuracy']:.4f} ({r['acc_lo']:.3f}–{r['acc_hi']:.3f}) | {r['macro_f1']:.4f} "
                     f"({r['f1_lo']:.3f}–{r['f1_hi']:.3f}) | {p} |")
    load = record.load_1m
    lines += ["", f"Embed speed: the same {record.speed_texts} texts of the data for every model, all poolings, "
              f"tokenising included; {record.speed_repeats} rounds timing each model in turn, its fastest pass "
              f"counted; on {record.device} in {record.dtype} ({record.machine['processor']}, "
              f"{record.machine['threads']} threads), measured in this run"
              + (f" (1-minute load average after timing: {load:.1f})" if load is not None else "") +
              ". Best row: the top of the model's "
              "pooling x head leaderboard (test split). p vs best: one-sided paired bootstrap (1000 resamples of the "
              "test set) that the overall best row is not more accurate; '(tie)': not significantly worse.", "",
              f"**{record.recommendation}**", ""]
    return "\n".join(lines)


def _frontier_plot(path: Path, record: ModelsRecord) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    rows = sorted(record.models, key=lambda r: r["s_per_1k"])
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for r in rows:
        err = [[r["accuracy"] - r["acc_lo"]], [r["acc_hi"] - r["accuracy"]]]
        ax.errorbar([r["s_per_1k"]], [r["accuracy"]], yerr=err, fmt="o", capsize=4,
                    color="tab:blue" if r["frontier"] else "tab:gray")
        ax.annotate(f"{short(r)}\n{r['pooling']} + {r['head']}", (r["s_per_1k"], r["accuracy"]),
                    textcoords="offset points", xytext=(8, -4), fontsize=7)
    front = [r for r in rows if r["frontier"]]
    ax.plot([r["s_per_1k"] for r in front], [r["accuracy"] for r in front], color="tab:blue", alpha=0.4)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    xs = [r["s_per_1k"] for r in rows]
    ax.set_xlim(min(xs) / 2, max(xs) * 4)
    ax.set_xlabel(f"embed cost: seconds per 1k texts ({record.device}, {record.dtype}; log scale)")
    ax.set_ylabel("test accuracy, best pooling + head (95% CI)")
    ax.set_title(f"Accuracy against embed cost: {record.data}", fontsize=9)
    save_figure(fig, path)
