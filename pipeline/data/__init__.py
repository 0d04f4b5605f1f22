"""Data in: read a user's table (or the built-in demo set) into a validated `Dataset` with a fixed split."""

from collections.abc import Callable
from pathlib import Path

from pipeline.data.benchmarks import load_task
from pipeline.data.dataset import ColumnSpec, Dataset, load_dataset
from pipeline.data.demo import NAME as DEMO_NAME
from pipeline.data.demo import demo_csv
from pipeline.data.tables import Columns, read_table

__all__ = ["ColumnSpec", "Dataset", "load_dataset", "read_table", "resolve_data", "DEMO_NAME"]


def resolve_data(data: str, cols: ColumnSpec = ColumnSpec(), test_size: float = 0.2, seed: int = 0,
                 data_root: Path = Path("artifacts/data"), reader: Callable[[Path], Columns] = read_table) -> Dataset:
    """Load `data`: the built-in set's name, a benchmark folder (e.g. ../shared/data/sst2), or a table file."""
    if data == DEMO_NAME:
        return load_dataset(demo_csv(data_root), ColumnSpec(), test_size, seed, name=DEMO_NAME)
    if Path(data).is_dir():
        return load_task(Path(data))
    return load_dataset(Path(data), cols, test_size, seed, reader=reader)
