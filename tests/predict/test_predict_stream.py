"""Predict's output written batch by batch equals the whole-table output it replaced, for CSV, JSON Lines and Parquet
inputs with odd columns, with batches of 3 rows so that every type question crosses batches; a changed input is
refused before anything is published."""

import datetime
import decimal
import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from pipeline.data import batches, read_table
from pipeline.data.batches import table_schema
from pipeline.errors import PipelineError
from pipeline.predict.stage import output_table
from pipeline.predict.stream import with_predictions, write_predictions

NAMES = ["negative", "positive"]


@pytest.fixture(autouse=True)
def small_batches(monkeypatch):
    monkeypatch.setattr(batches, "BATCH_ROWS", 3)


def proba_of(rows: int) -> np.ndarray:
    p = np.linspace(0.05, 0.95, rows)
    return np.column_stack([1 - p, p])


def whole_csv(table: pa.Table, delimiter: str = ",") -> bytes:
    """The old writer: the whole table at once (dictionary columns as their values)."""
    sink = pa.BufferOutputStream()
    pacsv.write_csv(table, sink, pacsv.WriteOptions(delimiter=delimiter))
    return sink.getvalue().to_pybytes()


def whole_jsonl(table: pa.Table) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in table.to_pylist()).encode()


def streamed(tmp_path, source, suffix: str, rows: int) -> bytes:
    out = tmp_path / f"out{suffix}"
    write_predictions(out, source, table_schema(source), NAMES, proba_of(rows))
    return out.read_bytes()


def test_csv_cells_stay_the_text_they_were_across_batches(tmp_path):
    source = tmp_path / "in.csv"
    source.write_bytes("\ufeff id ,text,n,empty\n007,\"quoted, with comma\",1,\n\n,,,\n008,\"two\nlines\",2.50,\n"
                       "009,ünïcode ✓,-3,\n010,plain,1e3,\n011,\"say \"\"hi\"\"\",x,\n012,last,,\n".encode())
    old = output_table(read_table(source), NAMES, proba_of(6))
    assert streamed(tmp_path, source, ".csv", 6) == whole_csv(old)
    assert streamed(tmp_path, source, ".jsonl", 6) == whole_jsonl(old)
    assert old.column("id").to_pylist()[0] == "007" and old.schema.names[:2] == ["id", "text"]
    tsv = tmp_path / "in.tsv"
    tsv.write_text("text\tn\n" + "".join(f"row {i}\t{i:03d}\n" for i in range(8)))
    assert streamed(tmp_path, tsv, ".tsv", 8) == whole_csv(output_table(read_table(tsv), NAMES, proba_of(8)), "\t")


def test_json_lines_columns_get_the_type_of_the_whole_column(tmp_path):
    records = [{"text": "a", "n": 1, "mixed": 1, "late": None, "nest": {"a": 1}, "flag": True},
               {"text": "b", "n": 2, "mixed": 2, "nest": {"a": 2}, "flag": False},
               {"text": "c", "n": 3, "mixed": "three", "tags": [1, 2], "flag": None},
               {"text": "d", "n": 4.5, "late": "now", "nest": {"b": "x"}, "big": 2**70},
               {"text": "e", "n": None, "mixed": [1], "tags": [2.5], "big": 1},
               {"text": "f", "n": 6, "mixed": None, "late": "then", "flag": True, "emoji": "✓"},
               {"text": "g", "n": 7}]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records) + "\n")
    old = output_table(read_table(source), NAMES, proba_of(7))
    assert list(table_schema(source)) == list(old.schema)[:-4]  # all but the prediction columns
    assert old.schema.field("n").type == pa.float64() and old.schema.field("mixed").type == pa.string()
    out = tmp_path / "out.parquet"
    write_predictions(out, source, table_schema(source), NAMES, proba_of(7))
    assert pq.read_table(out).equals(old)
    assert streamed(tmp_path, source, ".jsonl", 7) == whole_jsonl(old)


def test_parquet_columns_keep_their_exact_types_and_metadata(tmp_path):
    n = 8
    table = pa.table({
        "text": [f"text {i}" for i in range(n)],
        "u8": pa.array(range(n), pa.uint8()),
        "when": pa.array([1_700_000_000_000_000_000 + i for i in range(n)], pa.timestamp("ns", tz="Europe/Paris")),
        "day": pa.array([datetime.date(2024, 1, i + 1) for i in range(n)], pa.date32()),
        "price": pa.array([decimal.Decimal(f"{i}.25") for i in range(n)], pa.decimal128(9, 2)),
        "label": pa.array(["pos", "neg"] * (n // 2)).dictionary_encode(),
        "tags": pa.array([[i] if i % 3 else None for i in range(n)], pa.list_(pa.int32())),
    }).replace_schema_metadata({"origin": "test"})
    source = tmp_path / "in.parquet"
    pq.write_table(table, source, row_group_size=5)
    old = with_predictions(pq.read_table(source), NAMES, proba_of(n))
    out = tmp_path / "out.parquet"
    write_predictions(out, source, table_schema(source), NAMES, proba_of(n))
    got = pq.read_table(out)
    assert got.equals(old) and got.schema.metadata[b"origin"] == b"test"
    flat = old.drop_columns(["tags"])
    pq.write_table(table.drop_columns(["tags"]), source)
    plain = flat.set_column(flat.schema.get_field_index("label"), "label", flat.column("label").cast(pa.string()))
    assert streamed(tmp_path, source, ".csv", n) == whole_csv(plain)
    assert streamed(tmp_path, source, ".jsonl", n) == whole_jsonl(flat)


def test_an_input_that_no_longer_has_the_scored_rows_publishes_nothing(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("text\n" + "".join(f"row {i}\n" for i in range(5)))
    out = tmp_path / "out.csv"
    for rows in (4, 6):
        with pytest.raises(PipelineError, match="no longer has the"):
            write_predictions(out, source, table_schema(source), NAMES, proba_of(rows))
        assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["in.csv"]
