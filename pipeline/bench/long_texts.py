"""How to read long texts, measured on one labelled set: cut at 128 and at 512 tokens (the model's limit), and
128-token windows under each aggregation, each with its embed time, then the same head on each set of vectors.

Why one command: which reading wins depends on where a text says what matters (a verdict at the end of a review, a
topic in a news story's first lines), and that is a property of the user's data; so is the price, which grows with
the tokens read. The windows are embedded once: every aggregation folds the same forward passes (stage's
embed_aggregations), so their times are one and the same.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pipeline.data import Dataset
from pipeline.embed.aggregate import AGGREGATIONS
from pipeline.embed.encoder import Encoder
from pipeline.embed.settings import EncoderOptions
from pipeline.embed.stage import cache_settings, embed_aggregations, embed_texts
from pipeline.embed.windows import Reading, describe, long_texts, specials
from pipeline.paths import write_record
from pipeline.records import JsonRecord
from pipeline.train.heads import fit_head

WINDOW_LENGTH = 128
LONGEST_CUT = 512  # BERT-family models' usual position limit; a model with fewer positions is cut at its own
WARMUP_TEXTS = 8


@dataclass(frozen=True)
class LongTextsRecord(JsonRecord):
    """long_texts.json: the data, the settings, how long its texts are, and one row per way of reading them."""

    data: str
    rows: int
    split: dict[str, int]
    model: str
    pooling: str
    head: str
    device: str
    dtype: str
    runtime: str
    reading: str
    contenders: list[dict]  # reading, max_length, embed_seconds, accuracy
    schema: int = 1

    REWRITE = "`bert-pipeline bench long-texts` again"


def long_text_benchmark(ds: Dataset, model: str, pooling: str = "mean", head: str = "logreg", device: str = "auto",
                        overlap: int | None = None, seed: int = 0,
                        log: Callable[[str], None] = print) -> LongTextsRecord:
    """Every contender's test accuracy and embed time on `ds`, and how long its texts are."""
    config = EncoderOptions(WINDOW_LENGTH, device, long_texts="truncate").resolve(model)  # device etc. picked once
    rows, encoder = [], Encoder(config)
    for length in sorted({WINDOW_LENGTH, min(LONGEST_CUT, encoder.spec.position_limit)}):
        if length != encoder.config.max_length:  # the same choices; the token budget follows the length
            encoder = Encoder(replace(config, max_length=length).variant())
        seconds, vectors = _timed(encoder, lambda e: {"cut": embed_texts(e, ds.texts, [pooling])[pooling]}, ds)
        rows.append(_row(f"cut at {length} tokens", length, seconds, _accuracy(ds, vectors["cut"], head, seed)))
        log(_line(rows[-1]))
    encoder = Encoder(replace(config, reading=Reading(overlap=overlap)))
    seconds, vectors = _timed(encoder, lambda e: embed_aggregations(e, ds.texts, pooling, list(AGGREGATIONS)), ds)
    for name, X in vectors.items():
        rows.append(_row(f"windows of {WINDOW_LENGTH}, {name}", WINDOW_LENGTH, seconds, _accuracy(ds, X, head, seed)))
        log(_line(rows[-1]))
    _, lengths = cache_settings(encoder, ds.texts)
    info = long_texts(lengths, WINDOW_LENGTH, encoder.reading, sum(specials(encoder.fast_tokenizer)))
    return LongTextsRecord(ds.name, len(ds), ds.split_counts(), encoder.ref.name, pooling, head, encoder.device_name,
                           encoder.dtype_name, encoder.config.runtime, describe(info, WINDOW_LENGTH), rows)


def _timed(encoder, embed: Callable, ds: Dataset) -> tuple[float, dict[str, np.ndarray]]:
    """Embed all texts after a warm-up on a few (graph compile, first-call allocations), timed."""
    embed_texts(encoder, ds.texts[:WARMUP_TEXTS], ["mean"])
    start = time.perf_counter()
    vectors = embed(encoder)
    return time.perf_counter() - start, vectors


def _accuracy(ds: Dataset, X: np.ndarray, head: str, seed: int) -> float:
    """Test accuracy of `head` trained on the train rows (dev rows, if any, choose its hyperparameters)."""
    train, dev, test = (ds.splits == name for name in ("train", "dev", "test"))
    dev_X, dev_y = (X[dev], ds.labels[dev]) if dev.any() else (None, None)
    model = fit_head(head, X[train], ds.labels[train], dev_X, dev_y, seed)
    return float((model.predict(X[test]) == ds.labels[test]).mean())


def _row(name: str, max_length: int, seconds: float, accuracy: float) -> dict:
    return {"reading": name, "max_length": max_length, "embed_seconds": round(seconds, 1),
            "accuracy": round(accuracy, 4)}


def _line(row: dict) -> str:
    return f"{row['reading']:<34} accuracy {row['accuracy']:.3f}   embed {row['embed_seconds']:.0f} s"


def long_texts_markdown(record: LongTextsRecord) -> str:
    """The table for docs/long-texts.md: one row per contender, best accuracy in bold."""
    best = max(row["accuracy"] for row in record.contenders)
    lines = [f"{record.rows} texts of {record.data} ({record.reading}); {record.model}, "
             f"{record.pooling} + {record.head}, {record.device} {record.dtype} ({record.runtime}); "
             f"split {record.split}.", "", "| how the text is read | test accuracy | embed time |", "|---|---|---|"]
    for row in record.contenders:
        accuracy = f"{row['accuracy']:.3f}"
        lines.append(f"| {row['reading']} | {f'**{accuracy}**' if row['accuracy'] == best else accuracy} | "
                     f"{row['embed_seconds']:.0f} s |")
    return "\n".join(lines) + "\n"


def write_long_texts(folder: Path, record: LongTextsRecord) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return write_record(folder, "long_texts", record.to_json(), long_texts_markdown(record))
