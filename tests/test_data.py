"""Reading and validating user data: formats, labels, splits, and one-line errors for bad files."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import SHARED, sentiment_rows, write_csv
from pipeline.data import ColumnSpec, load_dataset, resolve_data
from pipeline.data.benchmarks import load_task
from pipeline.errors import PipelineError


def test_csv_tsv_jsonl_parquet_give_the_same_dataset(tmp_path):
    rows = sentiment_rows(40)
    csv_ds = load_dataset(write_csv(tmp_path / "d.csv", rows))
    (tmp_path / "d.tsv").write_text("text\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in rows))
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows))
    pq.write_table(pa.table({"text": [t for t, _ in rows], "label": [lab for _, lab in rows]}), tmp_path / "d.parquet")
    for suffix in ("tsv", "jsonl", "parquet"):
        other = load_dataset(tmp_path / f"d.{suffix}")
        assert other.texts == csv_ds.texts
        assert other.fingerprint == csv_ds.fingerprint


def test_bom_crlf_and_quoted_newlines_are_read_correctly(tmp_path):
    path = tmp_path / "odd.csv"
    path.write_bytes(b'\xef\xbb\xbftext,label\r\n"line one\r\nline two",pos\r\nplain,neg\r\nthird one,pos\r\n'
                     b'fourth,neg\r\nfifth,pos\r\n')
    ds = load_dataset(path)
    assert ds.texts[0] == "line one\r\nline two"
    assert len(ds) == 5 and ds.label_names == ["neg", "pos"]


def test_integer_labels_sort_numerically_and_string_labels_alphabetically(tmp_path):
    ints = load_dataset(write_csv(tmp_path / "i.csv", [(f"t{i}", str([10, 2, -1][i % 3])) for i in range(9)]))
    assert ints.label_names == ["-1", "2", "10"]
    words = load_dataset(write_csv(tmp_path / "w.csv", [(f"t{i}", ["positive", "negative", "neutral"][i % 3])
                                                        for i in range(9)]))
    assert words.label_names == ["negative", "neutral", "positive"]
    assert words.labels.tolist()[:3] == [2, 0, 1]


def test_auto_split_is_seeded_stratified_and_keeps_duplicates_together(tmp_path):
    rows = sentiment_rows(200) + [("the same text", "positive")] * 10
    a = load_dataset(write_csv(tmp_path / "a.csv", rows), seed=3)
    b = load_dataset(write_csv(tmp_path / "b.csv", rows), seed=3)
    assert (a.splits == b.splits).all()
    assert len(set(a.splits[[i for i, t in enumerate(a.texts) if t == "the same text"]])) == 1
    test = a.labels[a.splits == "test"]
    assert abs((test == 0).mean() - 0.5) < 0.1
    assert 0.15 < (a.splits == "test").mean() < 0.3
    c = load_dataset(write_csv(tmp_path / "c.csv", rows), seed=4)
    assert (a.splits != c.splits).any() and a.fingerprint != c.fingerprint


def test_split_column_and_ids_are_used(tmp_path):
    rows = [(f"id{i}", f"text {i}", "pos" if i % 2 else "neg", ["train", "validation", "test"][i % 3])
            for i in range(12)]
    ds = load_dataset(write_csv(tmp_path / "s.csv", rows, ("id", "text", "label", "split")),
                      ColumnSpec(id="id", split="split"))
    assert ds.ids[0] == "id0" and ds.split_counts() == {"dev": 4, "test": 4, "train": 4}


@pytest.mark.parametrize("content, message", [
    (b"text,label\nfine,1\n,0\n", "empty or whitespace-only"),
    (b"text,label\nfine,1\n   ,0\n", "empty or whitespace-only"),
    (b"text,label\nfine,1\nok,\n", "missing label"),
    (b"text,label\nfine,1\nok,NaN\n", "missing label"),
    (b"text,label\nfine,1\nok,positive\n", "mixes numbers and words"),
    (b"text,label\ncaf\xe9,1\n", "not valid UTF-8"),
    (b"review,stars\nfine,1\n", "no text column 'text'"),
    (b"text\tlabel\nfine\t1\n", "tab-separated"),
    (b"great movie,1\nbad movie,0\n", "no header row"),
    (b"", "empty"),
    (b"text,label\n", "no rows"),
    (b"text,label\nonly one,1\n", "too few distinct texts"),
])
def test_bad_files_raise_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(PipelineError, match=message):
        load_dataset(path)


def test_duplicate_ids_unknown_split_values_and_formats_are_refused(tmp_path):
    path = write_csv(tmp_path / "d.csv", [("1", "a", "x", "train"), ("1", "b", "y", "holdout")],
                     ("id", "text", "label", "split"))
    with pytest.raises(PipelineError, match="duplicate id '1'"):
        load_dataset(path, ColumnSpec(id="id"))
    with pytest.raises(PipelineError, match="unknown value.*'holdout'"):
        load_dataset(path, ColumnSpec(split="split"))
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(PipelineError, match="unknown file format"):
        load_dataset(tmp_path / "d.xlsx")
    with pytest.raises(PipelineError, match="not found"):
        load_dataset(tmp_path / "missing.csv")


def test_jsonl_mixed_label_types_are_refused(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": "pos"}\n')
    with pytest.raises(PipelineError, match="mixes numbers and words"):
        load_dataset(path)


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data not present")
def test_benchmark_folders_are_read_with_their_splits_and_encodings():
    sst2 = resolve_data(str(SHARED / "sst2"))
    assert sst2.split_counts() == {"train": 6920, "dev": 872, "test": 1821}
    assert sst2.label_names == ["negative", "positive"]
    mr = load_task(SHARED / "mr")
    assert len(mr) == 10662 and np.bincount(mr.labels).tolist() == [5331, 5331]
    trec = load_task(SHARED / "trec")
    assert trec.label_names == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"] and trec.split_counts()["test"] == 500
    tweets = load_task(SHARED / "tweet_eval_sentiment")
    assert tweets.label_names == ["negative", "neutral", "positive"] and len(tweets) == 14284


@pytest.mark.skipif(not (SHARED / "sst2-glue").exists(), reason="../shared/data not present")
def test_glue_tsv_with_carriage_returns_keeps_every_row():
    ds = load_dataset(SHARED / "sst2-glue" / "train.tsv", ColumnSpec(text="sentence"))
    assert len(ds) == 67349
