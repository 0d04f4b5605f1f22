"""Reading and validating user data: formats, labels, splits, and one-line errors for bad files."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data import ColumnSpec, load_dataset, resolve_data
from pipeline.data.benchmarks import load_task
from pipeline.errors import PipelineError

from conftest import SHARED, sentiment_rows, write_csv


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
    (b"text,label\nfine,1\nok,  \n", "missing label"),
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


def write_bytes(path, content: bytes):
    path.write_bytes(content)
    return path


UTF16 = "text,label\ngood,1\nbad,0\n"


@pytest.mark.parametrize("name, content, message", [
    # rows whose field count differs from the header's: named by physical line (a quoted newline spans two)
    ("d.csv", b'text,label\n"two\nlines",1\nfine,0\nnot, quoted,1\n', r"line 5 has 3 field\(s\) but the header has 2.*"
                                                                     r"double quotes"),
    ("d.csv", b"text,label\nfine,1\nno label\n", r"line 3 has 1 field\(s\) but the header has 2"),
    ("d.tsv", b"text\tlabel\nfine\t1\na\ttab inside\t0\n", r"line 3 has 3 field\(s\).*contains a tab"),
    ("d.csv", b'text,label\n"open quote,1\n', "has 1 field|cannot parse"),
    # wrong files named for what they are
    ("d.csv", b"text;label\ngood film;1\nbad, dull film;0\n", "semicolon-separated: re-export it with commas"),
    ("d.tsv", b"text,label\ngood,1\n", "looks comma-separated: name it .csv"),
    ("d.csv", b"sep=;\ntext;label\ngood;1\n", "Excel's separator line 'sep=;': delete that line"),
    ("d.csv", b"\xff\xfe" + UTF16.encode("utf-16-le"), r"UTF-16 text.*iconv -f utf-16 -t utf-8 d.csv"),
    ("d.csv", b"\xfe\xff" + UTF16.encode("utf-16-be"), r"UTF-16 text.*iconv -f utf-16 -t utf-8"),
    ("d.csv", UTF16.encode("utf-16-le"), "UTF-16 text without a byte-order mark"),
    ("d.csv", b"PK\x03\x04\x14\x00\x06\x00rest of a workbook", "Excel workbook.*export it as CSV"),
    ("d.csv", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1old workbook", r"Excel workbook \(.xls\).*export it as CSV"),
    ("d.jsonl", b"PAR1\x15\x04parquet bytes", "is a Parquet file: rename it to end in .parquet"),
    ("d.csv", b"\x1f\x8b\x08\x00gzip bytes", "gzip-compressed: unpack it first"),
    ("d.csv", b"text,label\ngood\x00\x01\x02,1\n", "binary data \\(a NUL byte on line 2\\)"),
    ("d.csv", b"text,label,text\ngood,1,x\n", "duplicate column name 'text'"),
    ("d.csv", "text,label\n\u201cgreat\u201d film,1\n".encode("cp1252"), "not valid UTF-8.*iconv -f windows-1252"),
    ("d.csv", b"text,label\n,\n,,\n", "no rows"),
    # JSON that is not JSON Lines, or lines that are not records
    ("d.json", b'[{"text": "good", "label": 1}, {"text": "bad", "label": 0}]', "one JSON array, not JSON Lines.*jq"),
    ("d.json", b'{\n  "text": "good",\n  "label": 1\n}\n', "one JSON object spread over several lines"),
    ("d.jsonl", b'["text", "label"]\n["good", 1]\n', "line 1 is a JSON array, not an object"),
    ("d.jsonl", b'{"text": "a", "label": 1}\n"just a string"\n', "line 2 is a JSON string, not an object"),
    ("d.jsonl", b'{"text": "a", "label": 1}\n{"text": "b", "text": "c", "label": 0}\n',
     "line 2 has the key 'text' twice"),
    ("d.jsonl", b"{}\n{}\n", "no named columns"),
    # a .parquet name on something else
    ("d.parquet", b"text,label\ngood,1\n", "is not a Parquet file.*suffix of its real format"),
    ("d.parquet", b"PK\x03\x04workbook", "Excel workbook.*export it as CSV"),
    ("d.parquet", b"", "data file is empty"),
    ("d.parquet", b"PAR1 cut short", "cannot read .* as Parquet.*complete"),
    # labels
    ("d.csv", b"text,label\ngood,\nbad,\n", "label column 'label' is empty in every row"),
    ("d.jsonl", b'{"text": "a", "label": ["x"]}\n{"text": "b", "label": ["y"]}\n', "holds list values"),
    ("d.jsonl", b'{"text": 42, "label": 1}\n{"text": "b", "label": 0}\n', r"holds a JSON number \(data row 1\)"),
])
def test_wrong_and_malformed_files_are_named_for_what_they_are(tmp_path, name, content, message):
    with pytest.raises(PipelineError, match=message) as error:
        load_dataset(write_bytes(tmp_path / name, content))
    assert "\n" not in str(error.value)


def test_odd_but_valid_files_read_the_same_as_plain_ones(tmp_path):
    plain = load_dataset(write_bytes(tmp_path / "plain.csv", b"text,label\ngood film,pos\nbad film,neg\nok,pos\n"))
    same = {
        "bom_crlf.tsv": b"\xef\xbb\xbftext\tlabel\r\ngood film\tpos\r\nbad film\tneg\r\nok\tpos\r\n",
        "bom_crlf.jsonl": b'\xef\xbb\xbf{"text": "good film", "label": "pos"}\r\n{"text": "bad film", "label": "neg"}'
                          b'\r\n\r\n{"text": "ok", "label": "pos"}\r\n',
        "blank_lines.csv": b"\n\ntext,label\n\ngood film,pos\n,\nbad film,neg\n  \nok,pos\n,,\n",
        "trailing_empty_columns.csv": b"text,label,,\ngood film,pos,,\nbad film,neg,,\nok,pos,,\n",
        "one_record.json": b'{"text": "good film", "label": "pos"}\n{"text": "bad film", "label": "neg"}\n'
                           b'{"text": "ok", "label": "pos"}',
    }
    for name, content in same.items():
        ds = load_dataset(write_bytes(tmp_path / name, content), name="plain")
        assert (ds.texts, ds.label_names, ds.fingerprint) == (plain.texts, plain.label_names, plain.fingerprint), name


def test_quoted_tabs_and_line_separators_inside_texts_are_kept(tmp_path):
    tsv = load_dataset(write_bytes(tmp_path / "q.tsv", b'text\tlabel\n"a\ttab"\tpos\nplain\tneg\nmore\tpos\n'))
    assert tsv.texts[0] == "a\ttab"
    odd = "line\u2028separator and next\x85line"
    rows = [{"text": odd, "label": "pos"}, {"text": "b", "label": "neg"}, {"text": "c", "label": "pos"}]
    path = tmp_path / "u.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert load_dataset(path).texts[0] == odd


def test_labels_named_none_or_nan_are_classes_not_missing(tmp_path):
    rows = [(f"text {i}", ["None", "positive"][i % 2]) for i in range(10)]
    ds = load_dataset(write_csv(tmp_path / "n.csv", rows))
    assert ds.label_names == ["None", "positive"] and ds.labels.tolist()[:2] == [0, 1]
    for word in ("NaN", "null", "NA"):
        assert word in load_dataset(write_csv(tmp_path / "w.csv", [(f"t{i}", [word, "x"][i % 2])
                                                                   for i in range(6)])).label_names
    path = tmp_path / "nulls.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": null}\n{"text": "c", "label": NaN}\n')
    with pytest.raises(PipelineError, match=r"2 missing label\(s\).*data rows 2, 3"):
        load_dataset(path)


def test_a_csv_text_over_the_csv_modules_default_limit_reads_like_jsonl(tmp_path):
    rows = [("long " * 40000, "pos"), ("short", "neg"), ("other", "pos")]
    from_csv = load_dataset(write_csv(tmp_path / "long.csv", rows), name="long")
    (tmp_path / "long.jsonl").write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows))
    from_jsonl = load_dataset(tmp_path / "long.jsonl", name="long")
    assert len(from_csv.texts[0]) == 200000 and from_csv.fingerprint == from_jsonl.fingerprint


def test_pipes_and_devices_are_not_called_folders(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.csv")
    for path in (tmp_path / "pipe.csv", Path("/dev/null")):
        with pytest.raises(PipelineError, match="is not a regular file \\(a pipe or device\\): save it to a file"):
            load_dataset(path)
    with pytest.raises(PipelineError, match="is a folder"):
        load_dataset(tmp_path)


@pytest.mark.parametrize("column, arrow_type", [
    (pa.array([b"good", b"bad", b"ok"], pa.binary()), "Arrow type binary"),
    (pa.array([["good"], ["bad"], ["ok"]], pa.list_(pa.string())), "Arrow type list<.*string>"),
    (pa.array([1, 2, 3], pa.int64()), "Arrow type int64"),
])
def test_parquet_text_column_that_is_not_strings_names_its_type(tmp_path, column, arrow_type):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": column, "label": ["pos", "neg", "pos"]}), path)
    with pytest.raises(PipelineError, match=f"text column 'text' of .*t.parquet holds {arrow_type}.*store the texts "
                                            "as strings"):
        load_dataset(path)


def test_parquet_duplicate_column_names_are_refused(tmp_path):
    path = tmp_path / "dup.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array(["a", "b"]), pa.array(["x", "y"]), pa.array([1, 0])],
                                        names=["text", "text", "label"]), path)
    with pytest.raises(PipelineError, match="duplicate column name 'text'"):
        load_dataset(path)


def test_a_split_column_without_train_rows_is_refused_when_loading(tmp_path):
    rows = [(f"t{i}", ["pos", "neg"][i % 2], ["test", "dev"][i % 2]) for i in range(8)]
    path = write_csv(tmp_path / "s.csv", rows, ("text", "label", "split"))
    with pytest.raises(PipelineError, match=r"split column 'split' has no train rows \(dev=4, test=4\).*'train'"):
        load_dataset(path, ColumnSpec(split="split"))


def test_train_names_an_empty_train_split(tmp_path):
    from pipeline.cache import Embeddings
    from pipeline.train.stage import check_splits

    emb = Embeddings(np.zeros((4, 2)), np.array([0, 1, 0, 1]), np.arange(4), np.array(["test"] * 4, dtype=object),
                     ["neg", "pos"])
    with pytest.raises(PipelineError, match="the train split is empty"):
        check_splits(emb)


SST = ("stsa.binary.train", "stsa.binary.dev", "stsa.binary.test")


def benchmark_folder(root, files: dict[str, bytes]):
    root.mkdir()
    for name, content in files.items():
        (root / name).write_bytes(content)
    return root


@pytest.mark.parametrize("files, message", [
    ({SST[0]: b"1 good\n0 bad\nnolabelhere\n", SST[1]: b"", SST[2]: b""},
     r"stsa.binary.train line 3 is not '<label> <sentence>' with an integer label 0..1 \(got 'nolabelhere'\)"),
    ({SST[0]: b"1 good\n\npositive great film\n", SST[1]: b"", SST[2]: b""}, "stsa.binary.train line 3 is not"),
    ({SST[0]: b"1 good\n", SST[1]: b"0 bad\n7 what\n", SST[2]: b""}, "stsa.binary.dev line 2 .*label 0..1"),
    ({SST[0]: b"1 good\n0 caf\xe9\n", SST[1]: b"", SST[2]: b""},
     r"stsa.binary.train is not valid UTF-8 \(byte 0xe9 on line 2\).*iconv"),
    ({"TREC.train": b"NUM:date When ?\nDESC what is this\n", "TREC.test": b""},
     "TREC.train line 2 is not 'COARSE:fine question'"),
    ({"val_text.txt": b"good\nbad\n", "val_labels.txt": b"1\npositive\n", "test_text.txt": b"",
      "test_labels.txt": b""}, "val_labels.txt line 2 is not an integer label"),
    ({"val_text.txt": b"good\nbad\n", "val_labels.txt": b"1\n0\n", "test_text.txt": b"", "test_labels.txt": b"",
      "mapping.txt": b"0 negative\n"}, r"mapping.txt line 1 is not '<label><TAB><name>'"),
])
def test_malformed_benchmark_files_name_file_line_and_fix(tmp_path, files, message):
    folder = benchmark_folder(tmp_path / "bench", files)
    with pytest.raises(PipelineError, match=message) as error:
        resolve_data(str(folder))
    assert "fix or delete that line" in str(error.value) or "iconv" in str(error.value)


def test_a_well_formed_benchmark_copy_still_reads(tmp_path):
    folder = benchmark_folder(tmp_path / "sst", {SST[0]: b"1 good film\r\n0 bad  film\n\n", SST[1]: b"0 dull\n",
                                                 SST[2]: b"1 fun\n"})
    ds = load_task(folder)
    assert ds.texts == ["good film", "bad  film", "dull", "fun"] and ds.labels.tolist() == [1, 0, 0, 1]
    assert ds.split_counts() == {"dev": 1, "test": 1, "train": 2}
