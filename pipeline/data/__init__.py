"""Data in: read a user's table (or the built-in demo set) into a validated `Dataset` with a fixed split."""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.data.benchmarks import load_task
from pipeline.data.dataset import ColumnSpec, Dataset, dataset_name, load_dataset
from pipeline.data.demo import NAME as DEMO_NAME
from pipeline.data.demo import demo_csv
from pipeline.data.tables import Columns, read_table
from pipeline.errors import PipelineError, capped
from pipeline.storage import location

__all__ = ["ColumnSpec", "Dataset", "DataSpec", "load_dataset", "load_texts", "read_table", "read_texts",
           "resolve_data", "subset", "unlabelled", "DEMO_NAME"]


def resolve_data(data: str, cols: ColumnSpec = ColumnSpec(), test_size: float = 0.2, seed: int = 0,
                 data_root: Path = Path("artifacts/data"), reader: Callable[[Path], Columns] = read_table) -> Dataset:
    """Load `data`: the built-in set's name, a benchmark folder (e.g. ../shared/data/sst2), or a table file."""
    if data == DEMO_NAME:
        return load_dataset(demo_csv(data_root), ColumnSpec(), test_size, seed, name=DEMO_NAME)
    path = location(data)
    if isinstance(path, Path) and path.is_dir():
        return load_task(path)
    return load_dataset(path, cols, test_size, seed, reader=reader)


@dataclass(frozen=True)
class DataSpec:
    """Which data and how to read and split it: the --data options as one value, passed to every stage."""

    data: str = DEMO_NAME
    columns: ColumnSpec = field(default_factory=ColumnSpec)
    test_size: float = 0.2
    seed: int = 0

    def load(self, reader: Callable[[Path], Columns] = read_table) -> Dataset:
        return resolve_data(self.data, self.columns, self.test_size, self.seed, reader=reader)

    def make_args(self) -> str:
        """The same data as `make` variables, for messages that suggest a command to run."""
        default, cols = DataSpec(), self.columns
        pairs = [("DATA", self.data, None), ("TEXT_COL", cols.text, default.columns.text),
                 ("LABEL_COL", cols.label, default.columns.label), ("ID_COL", cols.id, None),
                 ("SPLIT_COL", cols.split, None), ("TEST_SIZE", self.test_size, default.test_size),
                 ("SEED", self.seed, default.seed)]
        return " ".join(f"{name}={value}" for name, value, skip in pairs if value is not None and value != skip)


def read_texts(path: Path, column: str) -> list[str]:
    """One column of a table file, e.g. the texts to predict (no labels needed)."""
    table = read_table(location(path))
    if column not in table:
        raise PipelineError(f"no text column '{column}' in {path} (columns: {capped(table)}): use --text-col")
    return table[column]


def subset(ds: Dataset, rows) -> Dataset:
    """The same data set restricted to `rows` (a mask or slice), keeping names and label order."""
    index = np.arange(len(ds))[rows]
    return Dataset(ds.name, [ds.ids[i] for i in index], [ds.texts[i] for i in index], ds.labels[index],
                   ds.label_names, ds.splits[index], ds.split_origin)


def unlabelled(name: str, texts: list[str]) -> Dataset:
    """Texts without labels as a Dataset, for timing runs: one placeholder class, every row in 'test'."""
    return Dataset(name, [str(i) for i in range(len(texts))], list(texts), np.zeros(len(texts), dtype=np.int64),
                   ["unlabelled"], np.full(len(texts), "test", dtype=object), "unlabelled texts")


def load_texts(spec: DataSpec, split: str | None = None) -> Dataset:
    """The texts of `spec` (only the rows of `split`, if given). A table file needs only its text column, so a
    texts-only file works; a benchmark folder, the demo set or a split needs the full, labelled read."""
    path = location(spec.data)
    if split is None and path.suffix and not path.is_dir():
        return unlabelled(dataset_name(path), read_texts(path, spec.columns.text))
    ds = spec.load()
    rows = ds.splits == split if split else slice(None)
    if split and not rows.any():
        raise PipelineError(f"{spec.data} has no '{split}' rows (it has: {', '.join(ds.split_counts())}): "
                            "choose another --split")
    return subset(ds, rows)
