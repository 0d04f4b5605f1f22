"""Predict's output, made batch by batch: the input read a batch of rows at a time (data.batches), each batch given
its predictions from the scored cache, appended to one output stream published atomically at the end.

Why: the driver of a large predict (above all `--engine ray`, whose rows are read and embedded on the cluster)
must not hold the input or the output whole. What it holds per row is its probabilities (one float per label);
the texts a labelled report quotes are read back from the cache's shards, a few rows each.
"""

import bisect
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from pipeline.cache import TEXT, EmbeddingCache
from pipeline.data.batches import table_batches
from pipeline.errors import PipelineError
from pipeline.predict.output import table_writer
from pipeline.storage import Location

PREDICTED, CONFIDENCE, PROBA_PREFIX = "predicted_label", "confidence", "p_"


def prediction_columns(label_names: list[str]) -> list[str]:
    """The columns predict adds: the label, its probability, and one probability per class."""
    return [PREDICTED, CONFIDENCE, *[PROBA_PREFIX + name for name in label_names]]


def with_predictions(table: pa.Table, label_names: list[str], proba: np.ndarray) -> pa.Table:
    """`table`'s columns as they are (schema metadata included), then the prediction columns of its rows."""
    arrays = dict(zip(table.column_names, table.columns, strict=True))
    arrays[PREDICTED] = pa.array([label_names[i] for i in proba.argmax(axis=1)], pa.string())
    arrays[CONFIDENCE] = pa.array(proba.max(axis=1), pa.float64())
    for i, name in enumerate(label_names):
        arrays[PROBA_PREFIX + name] = pa.array(proba[:, i], pa.float64())
    return pa.table(arrays).replace_schema_metadata(table.schema.metadata)


def prediction_batches(input_path: Location, schema: pa.Schema, label_names: list[str],
                       proba: np.ndarray) -> Iterator[pa.Table]:
    """The input's rows in order, batch by batch, with their predictions; the input must have exactly the rows
    that were scored (else the file changed since it was embedded: refused before the output is published)."""
    start = 0
    for batch in table_batches(input_path, schema):
        if start + batch.num_rows > len(proba):
            raise _changed(input_path, len(proba))
        yield with_predictions(batch, label_names, proba[start:start + batch.num_rows])
        start += batch.num_rows
    if start != len(proba):
        raise _changed(input_path, len(proba))


def _changed(input_path: Location, rows: int) -> PipelineError:
    return PipelineError(f"{input_path} no longer has the {rows} rows that were embedded (it changed during the "
                         "run): run the same command again")


def write_predictions(output: Location, input_path: Location, schema: pa.Schema, label_names: list[str],
                      proba: np.ndarray) -> None:
    """The whole output, written as it is made; nothing is published if any batch fails."""
    out_schema = with_predictions(schema.empty_table(), label_names, proba[:0]).schema
    with table_writer(output, out_schema) as write:
        for table in prediction_batches(input_path, schema, label_names, proba):
            write(table)


class CachedTexts:
    """The texts of a finished cache by row number, read from the shard that holds each when asked (a report
    quotes a few): None for a cache made before shards kept their texts."""

    def __init__(self, cache: Location) -> None:
        self.store = EmbeddingCache(cache)
        rows = [shard.rows for shard in self.store.manifest().shards]
        self.starts = np.concatenate([[0], np.cumsum(rows)]).astype(int).tolist()

    def __getitem__(self, row: int) -> str | None:
        index = bisect.bisect_right(self.starts, int(row)) - 1
        try:
            part = self.store.read_columns(index, [TEXT])
        except (KeyError, pa.ArrowInvalid):  # no text column in this shard
            return None
        return part.column(TEXT)[int(row) - self.starts[index]].as_py()
