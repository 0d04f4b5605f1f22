"""Token ids, batched: tokenised rows, the token-budget batcher every runtime and the fine-tuning loop use, padding,
and the sink that puts each batch's vectors back in input order. Long texts read in windows (windows.py) are batched
the same way, with a sink that folds a text's windows into its row (aggregate.py)."""

from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain

import numpy as np


@dataclass(frozen=True)
class Tokenized:
    input_ids: list[list[int]]
    truncated: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self.input_ids))


def token_batches(lengths: np.ndarray, budget: int, rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """Row indices grouped longest-first so that rows x longest length stays within the token budget (padding stays
    small, and a batch's memory is bounded whatever the texts). With `rng` (training), rows of equal length are
    shuffled before grouping and the batch order is shuffled: each epoch sees other batches, while the number of
    batches (and so the schedule) stays the same."""
    ties = rng.permutation(len(lengths)) if rng is not None else np.arange(len(lengths))
    order = ties[np.argsort(-lengths[ties], kind="stable")]
    groups, start = [], 0
    while start < len(order):
        size = max(1, budget // max(1, int(lengths[order[start]])))
        groups.append(order[start:start + size])
        start += size
    if rng is not None:
        groups = [groups[i] for i in rng.permutation(len(groups))]
    return groups


def pad_ids(input_ids: list[list[int]], pad_id: int) -> dict[str, np.ndarray]:
    """Right-padded ids and mask, built in numpy without a loop over rows (a GPU eats batches faster than a Python
    loop over thousands of rows fills them)."""
    lengths = np.fromiter(map(len, input_ids), dtype=np.int64, count=len(input_ids))
    mask = np.arange(int(lengths.max())) < lengths[:, None]
    ids = np.full(mask.shape, pad_id, dtype=np.int64)
    ids[mask] = np.fromiter(chain.from_iterable(input_ids), dtype=np.int64, count=int(lengths.sum()))
    return {"input_ids": ids, "attention_mask": mask.astype(np.int64)}


class InOrder:
    """Where a runtime puts each batch's vectors: one float32 array per pooling, rows back in input order, and
    `done(n)` after each batch of n rows (a progress bar)."""

    def __init__(self, rows: int, done: Callable[[int], object] = lambda n: None) -> None:
        self.rows, self.done, self.out = rows, done, {}

    def put(self, rows: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
        for name, array in arrays.items():
            if name not in self.out:
                self.out[name] = np.empty((self.rows, *array.shape[1:]), dtype=np.float32)
            self.out[name][rows] = array
        self.done(len(rows))

    def result(self) -> dict[str, np.ndarray]:
        return self.out
