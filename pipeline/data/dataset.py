"""A labelled text data set as the pipeline sees it: ids, texts, integer labels with names, and a split per row."""

import hashlib
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.data.sniff import separator_hint
from pipeline.data.tables import Columns, is_missing, read_table, stored_type
from pipeline.errors import PipelineError, capped

SPLIT_ALIASES = {"train": "train", "training": "train", "dev": "dev", "val": "dev", "valid": "dev",
                 "validation": "dev", "test": "test", "testing": "test"}


@dataclass(frozen=True)
class Dataset:
    """Rows in input order. `labels[i]` indexes `label_names`; `splits[i]` is 'train', 'dev' or 'test'."""

    name: str
    ids: list[str]
    texts: list[str]
    labels: np.ndarray
    label_names: list[str]
    splits: np.ndarray
    split_origin: str
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fingerprint", _fingerprint(self))

    def __len__(self) -> int:
        return len(self.texts)

    def split_counts(self) -> dict[str, int]:
        names, counts = np.unique(self.splits, return_counts=True)
        return {str(n): int(c) for n, c in zip(names, counts, strict=True)}


@dataclass(frozen=True)
class ColumnSpec:
    """Which columns of the file hold what (text and label are required; id and split are optional)."""

    text: str = "text"
    label: str = "label"
    id: str | None = None
    split: str | None = None


RANGE_ROWS = 131_072  # rows per hashed range: data up to this size keeps the one-range fingerprint it always had


def _fingerprint(ds: Dataset) -> str:
    """A hash of everything about the rows that changes the cached vectors or their meaning."""
    rows = zip(ds.ids, ds.texts, ds.labels.tolist(), ds.splits.tolist(), strict=True)
    return combine_ranges([range_digest(ds.label_names, chunk) for chunk in _ranges(rows, len(ds))])


def range_digest(label_names: list[str], rows) -> str:
    """sha256 of one range of rows, each (id, text, label, split), after the label names: the unit that the Ray
    engine's tasks hash on the cluster, so the driver never sees the texts."""
    digest = hashlib.sha256()
    digest.update(json.dumps(label_names).encode())
    for row in rows:
        digest.update(json.dumps(row, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def combine_ranges(digests: list[str]) -> str:
    """The data fingerprint from its ranges' digests, in order: one range is its own digest (so every cache key of
    data up to RANGE_ROWS rows is the one it had before ranges existed), more are hashed together."""
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256(("ranges\n" + "\n".join(digests)).encode()).hexdigest()


def _ranges(rows, n: int):
    """`rows` (an iterator) cut into RANGE_ROWS-row lists; one (possibly empty) range at least."""
    for _ in range(max(1, -(-n // RANGE_ROWS))):
        yield [(i, t, lab, s) for i, t, lab, s in itertools.islice(rows, RANGE_ROWS)]


def load_dataset(path: Path, cols: ColumnSpec = ColumnSpec(), test_size: float = 0.2, seed: int = 0,
                 name: str | None = None, reader: Callable[[Path], Columns] = read_table) -> Dataset:
    """Read and validate a labelled table. Every problem found becomes a PipelineError naming the fix.
    `reader` turns the file into columns (the Ray engine passes a Ray Data reader)."""
    table = reader(path)
    texts = _texts(table, cols.text, path)
    labels, label_names = encode_labels(_column(table, cols.label, path, "label"), cols.label)
    ids = _ids(table, cols.id, path, len(texts))
    if cols.split:
        splits = _splits_from_column(_column(table, cols.split, path, "split"), cols.split)
        _require_train_rows(splits, cols.split)
        origin = f"column '{cols.split}'"
    else:
        splits, origin = auto_split(texts, labels, test_size, seed), f"auto (test_size={test_size}, seed={seed})"
    return Dataset(name or dataset_name(path), ids, texts, labels, label_names, splits, origin)


def dataset_name(path: Path) -> str:
    """A readable name for a file: its stem, with the parent folder's name when the stem alone says little."""
    generic = {"train", "test", "dev", "data", "validation", "valid", "all", "dataset"}
    return f"{path.parent.name}-{path.stem}" if path.stem.lower() in generic and path.parent.name else path.stem


def _column(table: Columns, name: str, path: Path, role: str) -> list:
    if name in table:
        return table[name]
    present = capped(map(repr, table))
    separator = separator_hint(list(table))
    if separator:
        hint = separator
    elif any(_looks_like_data(c) for c in table):
        hint = f"the file seems to have no header row: add one (e.g. 'text,label') as its first line ({present})"
    else:
        hint = f"pick the {role} column with --{role}-col (columns there: {present})"
    raise PipelineError(f"no {role} column '{name}' in {path}: {hint}")


def _looks_like_data(column_name: str) -> bool:
    return " " in column_name.strip() or column_name.strip().lstrip("-").isdigit()


def _texts(table: Columns, column: str, path: Path, first_row: int = 0) -> list[str]:
    """The text column, all non-empty strings. Numbers, bytes and lists are refused, not converted: in a typed
    format they mean the wrong column was picked or the texts were stored wrongly, and str() of them would make
    the data's fingerprint depend on how a number or list happens to print. `first_row`: where the table starts in
    the file (a Ray block), for the row numbers of the messages."""
    values = _column(table, column, path, "text")
    typed = next(((i, v) for i, v in enumerate(values) if not isinstance(v, str) and not is_missing(v)), None)
    if typed:
        row, value = typed
        raise PipelineError(f"text column '{column}' of {path} holds {stored_type(path, column, value)} "
                            f"(data row {first_row + row + 1}), not strings: store the texts as strings "
                            "(decode bytes, join lists), or pick the text column with --text-col")
    bad = [i for i, v in enumerate(values) if not isinstance(v, str) or not v.strip()]
    if bad:
        rows = ", ".join(str(first_row + i + 1) for i in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise PipelineError(f"{len(bad)} empty or whitespace-only text(s) in column '{column}' of {path} "
                            f"(data rows {rows}): remove or fill them")
    return list(values)


def encode_labels(values: list, column: str = "label") -> tuple[np.ndarray, list[str]]:
    """Map raw labels (ints, int-like strings, or words) to 0..K-1 with their names in a stable order.

    Numbers sort numerically and words alphabetically; a column that mixes the two is refused, since its meaning
    ('1' vs 'positive') is ambiguous.
    """
    if values and all(is_missing(v) for v in values):
        raise PipelineError(f"label column '{column}' is empty in every row: fill in the labels, "
                            "or pick the label column with --label-col")
    nested = next((v for v in values if isinstance(v, (list, dict, bytes))), None)
    if nested is not None:
        raise PipelineError(f"label column '{column}' holds {type(nested).__name__} values (e.g. {nested!r:.40}): "
                            "give one label per row, as a word or an integer")
    missing = [i for i, v in enumerate(values) if is_missing(v)]
    if missing:
        refuse_missing_labels(missing, column)
    numeric = [_as_int(v) for v in values]
    if all(n is not None for n in numeric):
        names = [str(n) for n in sorted(set(numeric))]
        keys = [str(n) for n in numeric]
    elif any(n is not None for n in numeric):
        example = next(v for v, n in zip(values, numeric, strict=True) if n is not None)
        word = next(v for v, n in zip(values, numeric, strict=True) if n is None)
        raise PipelineError(f"label column '{column}' mixes numbers and words (e.g. {example!r} and {word!r}): "
                            "use one kind of label throughout")
    else:
        keys = [str(v).strip() for v in values]
        names = sorted(set(keys))
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[k] for k in keys], dtype=np.int64), names


def refuse_missing_labels(missing: list[int], column: str) -> None:
    """`missing`: the 0-based rows without a label, in file order."""
    rows = ", ".join(str(i + 1) for i in missing[:5]) + (" ..." if len(missing) > 5 else "")
    raise PipelineError(f"{len(missing)} missing label(s) in column '{column}' (data rows {rows}): "
                        "label every row or drop the unlabelled ones")


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def _ids(table: Columns, column: str | None, path: Path, n: int) -> list[str]:
    if not column:
        return [str(i) for i in range(n)]
    ids = [str(v) for v in _column(table, column, path, "id")]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise PipelineError(f"duplicate id {dup!r} in column '{column}' of {path}: ids must be unique "
                            "(or leave out --id-col to number the rows)")
    return ids


def _splits_from_column(values: list, column: str) -> np.ndarray:
    mapped = [SPLIT_ALIASES.get(str(v).strip().lower()) for v in values]
    unknown = sorted({str(v) for v, m in zip(values, mapped, strict=True) if m is None})
    if unknown:
        raise PipelineError(f"unknown value(s) {', '.join(map(repr, unknown[:5]))} in split column '{column}': "
                            "use train, dev (or validation) and test")
    return np.array(mapped, dtype=object)


def _require_train_rows(splits: np.ndarray, column: str) -> None:
    """A split column without train rows would embed fine and only fail at training; refuse it when loading."""
    if (splits == "train").any():
        return
    names, counts = np.unique(splits, return_counts=True)
    found = ", ".join(f"{n}={c}" for n, c in zip(names, counts, strict=True))
    raise PipelineError(f"split column '{column}' has no train rows ({found}): mark the rows to train on as 'train' "
                        "(or 'training'); dev/val/validation and test/testing hold rows out")


def auto_split(texts: list[str], labels: np.ndarray, test_size: float, seed: int) -> np.ndarray:
    """A seeded, stratified train/test split in which identical texts always share a split (no leakage).
    scikit-learn is imported here, not at the top: it is a second of start-up that predicting never needs."""
    if not 0 < test_size < 1:
        raise PipelineError(f"--test-size must be between 0 and 1, got {test_size}")
    return split_by_keys(np.asarray(texts, dtype=object), labels, test_size, seed)


def split_by_keys(keys: np.ndarray, labels: np.ndarray, test_size: float, seed: int) -> np.ndarray:
    """auto_split over any per-row key that is equal exactly when the texts are (the texts, or digests of them, as
    the Ray engine's driver holds): the split depends only on the distinct keys' first-seen order and labels.
    scikit-learn is imported here, not at the top: it is a second of start-up that predicting never needs."""
    from sklearn.model_selection import train_test_split

    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # distinct keys in the order their text first appears
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    unique_labels = labels[first[order]].tolist()
    n_test = int(np.ceil(test_size * len(order)))
    if len(order) < 2 or n_test >= len(order):
        raise PipelineError(f"too few distinct texts ({len(order)}) to hold out a test split: "
                            "add rows, or give a split column with --split-col")
    counts = np.bincount(unique_labels)
    stratify = unique_labels if counts[counts > 0].min() >= 2 and n_test >= len(set(unique_labels)) else None
    _, test_rows = train_test_split(np.arange(len(order)), test_size=test_size, random_state=seed, stratify=stratify)
    is_test = np.zeros(len(order), dtype=bool)
    is_test[test_rows] = True
    return np.where(is_test[position[inverse.ravel()]], "test", "train").astype(object)
