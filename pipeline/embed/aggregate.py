"""Windows' vectors folded into their text's vector, batch by batch, so memory does not grow with a text's length.

The stage's rule (DEFAULT): a token-weighted mean of the windows for every pooling that averages or reads one token
(the mean-like ones, `cls`, `pooler`): the long text's vector is then close to the one the model would give if it
could read it at once; `max` takes the max over windows, which is what max over all its tokens is. The other
aggregations are there to be compared (docs/long-texts.md): plain mean, max, the first window (a cut at max length),
and head+tail (the first and last windows averaged, after Sun et al. 2019's head+tail truncation).

A text that is one row is copied as it is, never divided by its weight: its vector is bitwise what it was before
windows existed. Sums are kept in float64 and the result is float32, like every cached vector.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.embed.pooling import POOLINGS, parse_poolings
from pipeline.embed.windows import Chunk, WindowPlan
from pipeline.errors import PipelineError
from pipeline.registry import parse_names


@dataclass(frozen=True)
class Aggregation:
    name: str
    description: str


AGGREGATIONS = {a.name: a for a in [
    Aggregation("token_mean", "mean of the windows' vectors weighted by their text tokens"),
    Aggregation("mean", "plain mean of the windows' vectors"),
    Aggregation("max", "element-wise max over the windows' vectors"),
    Aggregation("first", "the first window's vector (the same text a cut at max length reads)"),
    Aggregation("head_tail", "mean of the first and the last window's vectors"),
]}


WINDOWS = "windows"  # in --pooling: `mean` under every aggregation but its default, for `make bench` to rank


def default_aggregation(pooling: str) -> str:
    """The stage's aggregation for a pooling: max for `max`, the token-weighted mean for every other."""
    return "max" if pooling == "max" else "token_mean"


def parse_aggregations(spec: str) -> list[str]:
    return parse_names(spec, AGGREGATIONS, "aggregation")


def split_name(name: str) -> tuple[str, str | None]:
    """'mean@head_tail' -> ('mean', 'head_tail'): a pooling whose long texts' windows are folded by another
    aggregation than the default; a plain name -> (name, None)."""
    base, _, aggregation = name.partition("@")
    return base, aggregation or None


def aggregation_of(name: str) -> str:
    """How the windows of a cached column's long texts are folded: its own `@aggregation`, else the default."""
    base, aggregation = split_name(name)
    return aggregation or default_aggregation(base)


def parse_pooling_names(spec: str) -> list[str]:
    """--pooling: registry names or 'all', `P@A` (pooling P, long texts' windows folded by aggregation A, e.g.
    mean@head_tail), and `windows` (mean@A for every other aggregation A). Each part is checked; unknown ones are
    refused with the known names."""
    if not any(part.strip() for part in spec.split(",")):
        parse_poolings(spec)  # nothing named: refused with the known names
    names = parse_names(spec, None, "pooling")
    plain = [n for n in names if "@" not in n and n != WINDOWS]
    found = parse_poolings(plain) if plain else []
    for name in names:
        if name == WINDOWS:
            found += [f"mean@{a}" for a in AGGREGATIONS if a != default_aggregation("mean")]
        elif "@" in name:
            base, aggregation = split_name(name)
            parse_poolings([base]), parse_aggregations(aggregation or "")
            if POOLINGS[base].per_layer:
                raise PipelineError(f"--pooling {name}: a per-layer pooling has no window aggregations")
            found.append(name)
    return list(dict.fromkeys(found))


class Folded:
    """The running aggregate of one pooling over the windows of a chunk's long texts (`slots`: one per long text)."""

    def __init__(self, aggregation: str, slots: int, shape: tuple[int, ...]) -> None:
        if aggregation not in AGGREGATIONS:
            raise PipelineError(f"unknown aggregation {aggregation!r}: choose from {', '.join(AGGREGATIONS)}")
        self.aggregation = aggregation
        if aggregation == "max":
            self.top = np.full((slots, *shape), -np.inf)
        else:
            self.total, self.weight = np.zeros((slots, *shape)), np.zeros((slots,) + (1,) * len(shape))

    def add(self, slot: np.ndarray, plan: WindowPlan, rows: np.ndarray, vectors: np.ndarray) -> None:
        """Fold the vectors of window rows `rows` (of texts at `slot`) in."""
        if self.aggregation == "max":
            np.maximum.at(self.top, slot, vectors)
            return
        weights = self._weights(plan, rows)
        keep = weights != 0
        expand = (-1,) + (1,) * (vectors.ndim - 1)
        np.add.at(self.total, slot[keep], vectors[keep] * weights[keep].reshape(expand))
        np.add.at(self.weight, slot[keep], weights[keep].reshape(expand))

    def _weights(self, plan: WindowPlan, rows: np.ndarray) -> np.ndarray:
        if self.aggregation == "token_mean":
            return plan.weights[rows]
        if self.aggregation == "mean":
            return np.ones(len(rows))
        ends = plan.first[rows] if self.aggregation == "first" else plan.first[rows] | plan.last[rows]
        return ends.astype(np.float64)

    def value(self) -> np.ndarray:
        if self.aggregation == "max":
            return self.top.astype(np.float32)
        return (self.total / self.weight).astype(np.float32)


class Gather:
    """Where a chunk's pooled batches go: straight into each text's row, or, for windows of long texts, folded into
    their text's aggregate. `done(n)` counts texts: a long text counts once, when its last window is done."""

    def __init__(self, chunk: Chunk, done: Callable[[int], object] = lambda n: None,
                 aggregation: Callable[[str], str] = aggregation_of) -> None:
        self.plan, self.done, self.aggregation = chunk.plan, done, aggregation
        self.n = len(chunk.truncated)
        self.out: dict[str, np.ndarray] = {}
        self.folded: dict[str, Folded] = {}
        if self.plan is not None:
            self.long = np.flatnonzero(self.plan.windows > 1)
            self.slot = np.full(self.n, -1)
            self.slot[self.long] = np.arange(len(self.long))
            self.left = self.plan.windows.copy()

    def put(self, rows: np.ndarray, vectors: dict[str, np.ndarray]) -> None:
        """One batch's vectors of each pooling, for model rows `rows`."""
        if self.plan is None:
            for name, array in vectors.items():
                self._array(name, array)[rows] = array
            self.done(len(rows))
            return
        texts = self.plan.text_of[rows]
        whole = self.plan.windows[texts] == 1
        for name, array in vectors.items():
            self._array(name, array)[texts[whole]] = array[whole]
            self._folded(name, array).add(self.slot[texts[~whole]], self.plan, rows[~whole], array[~whole])
        np.subtract.at(self.left, texts, 1)
        touched = np.unique(texts)
        self.done(int((self.left[touched] == 0).sum()))

    def _array(self, name: str, array: np.ndarray) -> np.ndarray:
        if name not in self.out:
            self.out[name] = np.empty((self.n, *array.shape[1:]), dtype=np.float32)
        return self.out[name]

    def _folded(self, name: str, array: np.ndarray) -> Folded:
        if name not in self.folded:
            self.folded[name] = Folded(self.aggregation(name), len(self.long), array.shape[1:])
        return self.folded[name]

    def result(self) -> dict[str, np.ndarray]:
        """Every pooling's vectors, one row per text, in input order."""
        for name, folded in self.folded.items():
            self.out[name][self.long] = folded.value()
        return self.out


class Fan:
    """Several gathers fed the same batches: one forward pass, every aggregation (bench long-texts)."""

    def __init__(self, gathers: dict[str, Gather]) -> None:
        self.gathers = gathers

    def put(self, rows: np.ndarray, vectors: dict[str, np.ndarray]) -> None:
        for gather in self.gathers.values():
            gather.put(rows, vectors)

    def result(self) -> dict[str, dict[str, np.ndarray]]:
        return {name: gather.result() for name, gather in self.gathers.items()}
