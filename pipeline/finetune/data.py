"""The rows a fine-tune sees: which rows train, which select (dev, else a seeded slice of train), per-class draws,
token-budget batches and capped sentence pairs. All of it seeded, none of it touching the test rows."""

from dataclasses import dataclass

import numpy as np

from pipeline.data import Dataset
from pipeline.errors import PipelineError
from pipeline.train.stage import check_split_labels


@dataclass(frozen=True)
class Rows:
    """Row indices into the data set: train (what the model learns from), select (dev, or the held-out slice of
    train when there is no dev), test (scored once, at the end). `select_origin` says which it is."""

    train: np.ndarray
    select: np.ndarray
    test: np.ndarray
    select_origin: str


def split_rows(ds: Dataset, shots: int | None, seed: int, hold_out: bool = True, slice_share: float = 0.1) -> Rows:
    """Check the data (as the train stage does), draw `shots` per class from train if asked, and find the rows to
    select on: dev when the data has one, else (if `hold_out`) a seeded, stratified slice of train."""
    train = np.flatnonzero(ds.splits == "train")
    dev, test = np.flatnonzero(ds.splits == "dev"), np.flatnonzero(ds.splits == "test")
    check_rows(ds, train, test)
    if shots:
        train = draw_per_class(ds.labels, train, shots, seed)
    if len(dev):
        return Rows(train, dev, test, f"the dev split ({len(dev)} rows)")
    if not hold_out:
        return Rows(train, dev, test, "nothing (no dev split)")
    select = held_out_slice(ds.labels, train, slice_share, seed)
    return Rows(np.setdiff1d(train, select), select, test,
                f"a seeded, stratified {len(select)}-row slice of train (the data has no dev split)")


def check_rows(ds: Dataset, train: np.ndarray, test: np.ndarray) -> None:
    """The same refusals as the train stage: empty splits, one class, test labels unseen in train."""
    check_split_labels(ds.labels[train], ds.labels[test], ds.label_names)


def draw_per_class(labels: np.ndarray, rows: np.ndarray, k: int, seed: int) -> np.ndarray:
    """`k` rows of every class present in `rows`, drawn without replacement (seeded); sorted row indices. A class
    with fewer than `k` rows is refused with its count: the draw would not be stratified."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels[rows], return_counts=True)
    if counts.min() < k:
        raise PipelineError(f"--shots {k} is more than the smallest class has in train ({int(counts.min())} rows): "
                            f"use --shots {int(counts.min())} or less")
    picked = [rng.choice(rows[labels[rows] == c], size=k, replace=False) for c in classes]
    return np.sort(np.concatenate(picked))


def held_out_slice(labels: np.ndarray, rows: np.ndarray, share: float, seed: int) -> np.ndarray:
    """A seeded, stratified share of `rows` (at least one row of each class that has two or more)."""
    rng = np.random.default_rng(seed + 1)
    picked = []
    for c in np.unique(labels[rows]):
        members = rows[labels[rows] == c]
        if len(members) >= 2:
            picked.append(rng.choice(members, size=max(1, round(share * len(members))), replace=False))
    if not picked:
        raise PipelineError("every class has a single train row: nothing can be held out to stop on; add rows or "
                            "give a dev split")
    return np.sort(np.concatenate(picked))


def sample_pairs(labels: np.ndarray, n_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """SetFit's pairs without its O(n^2) list: half positive (same label), half negative (different labels), drawn
    directly by index in O(n_pairs) memory. Returns (pairs (n, 2) of positions into `labels`, targets 1.0 / 0.0)."""
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    sizes = np.array([len(m) for m in by_class], dtype=float)
    half = n_pairs // 2
    pos_classes = [i for i, m in enumerate(by_class) if len(m) >= 2]
    pairs, targets = [], []
    if pos_classes:
        weights = sizes[pos_classes] / sizes[pos_classes].sum()
        for c in rng.choice(pos_classes, size=half, p=weights):
            a, b = rng.choice(by_class[c], size=2, replace=False)
            pairs.append((a, b))
            targets.append(1.0)
    weights = sizes / sizes.sum()
    for _ in range(n_pairs - len(pairs)):
        c1, c2 = rng.choice(len(by_class), size=2, replace=False, p=weights)
        pairs.append((rng.choice(by_class[c1]), rng.choice(by_class[c2])))
        targets.append(0.0)
    order = rng.permutation(len(pairs))
    return np.asarray(pairs, dtype=np.int64)[order], np.asarray(targets, dtype=np.float32)[order]
