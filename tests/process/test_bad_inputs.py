"""Table-driven bad inputs across embed, train and predict: each gives exit != 0, exactly one line on stderr naming
the problem and a fix, no traceback, and leaves every file already under the workspace untouched."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from conftest import sentiment_rows, train_once, write_csv, write_tiny_bert

GOOD = sentiment_rows(40)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_bert):
    """A project folder with a finished cache and run, made through the CLI itself."""
    root = tmp_path_factory.mktemp("ws")
    files = root / "in"
    files.mkdir()
    write_csv(files / "good.csv", GOOD)
    (files / "empty.csv").write_bytes(b"")
    write_csv(files / "blank_text.csv", GOOD[:5] + [("   ", "positive")])
    write_csv(files / "nan_label.csv", GOOD[:5] + [("some text", "")])
    (files / "latin1.csv").write_bytes("text,label\ncafé crème,positive\n".encode("latin-1"))
    write_csv(files / "dup_ids.csv", [("1", t, lab) for t, lab in GOOD[:3]], ("id", "text", "label"))
    write_csv(files / "bad_split.csv", [(t, lab, "holdout") for t, lab in GOOD[:3]], ("text", "label", "split"))
    write_csv(files / "no_header.csv", GOOD[:5], header=None)
    (files / "tabs.csv").write_text("text\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in GOOD[:5]))
    write_csv(files / "mixed.csv", [(t, "1" if i % 2 else "positive") for i, (t, _) in enumerate(GOOD[:6])])
    write_csv(files / "one_row.csv", GOOD[:1])
    write_csv(files / "one_class.csv", [(t, "positive", "train" if i % 4 else "test")
                                        for i, (t, _) in enumerate(GOOD)], ("text", "label", "split"))
    (files / "data.xlsx").write_bytes(b"PK\x03\x04")
    (files / "a_file").write_text("x")
    (files / "extra_fields.csv").write_text("text,label\ngood film,positive\ngood, if long,positive\n")
    (files / "semicolons.csv").write_text("text;label\ngood film;positive\nbad film;negative\n")
    (files / "utf16.csv").write_bytes("text,label\ngood film,positive\n".encode("utf-16"))
    (files / "workbook.csv").write_bytes(b"PK\x03\x04\x14\x00\x06\x00" + bytes(40))
    (files / "binary.csv").write_bytes(b"text,label\ngood\x00\x01film,positive\n")
    (files / "dup_header.csv").write_text("text,label,text\ngood,positive,film\n")
    (files / "array.json").write_text(json.dumps([{"text": t, "label": lab} for t, lab in GOOD[:4]]))
    write_csv(files / "no_train.csv", [(t, lab, "test") for t, lab in GOOD[:6]], ("text", "label", "split"))
    __import__("os").mkfifo(files / "pipe.csv")
    pa, pq = __import__("pyarrow"), __import__("pyarrow.parquet", fromlist=["write_table"])
    pq.write_table(pa.table({"text": pa.array([t.encode() for t, _ in GOOD[:4]], pa.binary()),
                             "label": [lab for _, lab in GOOD[:4]]}), files / "binary_text.parquet")
    (files / "bad-sst2").mkdir()
    for name, content in {"train": "1 good film\npositive great film\n", "dev": "", "test": ""}.items():
        (files / "bad-sst2" / f"stsa.binary.{name}").write_text(content)
    pickle_only = files / "pickle-model"
    shutil.copytree(tiny_bert, pickle_only)
    (pickle_only / "model.safetensors").rename(pickle_only / "pytorch_model.bin")
    write_tiny_bert(files / "no-pooler", pooler=False)
    for name, change in {"remote-code-model": {"auto_map": {"AutoModel": "modeling_x.BertX"}},
                         "unknown-type-model": {"model_type": "not-a-real-type"}}.items():
        shutil.copytree(tiny_bert, files / name)
        (files / name / "config.json").write_text(json.dumps({**json.loads((tiny_bert / "config.json").read_text()),
                                                              **change}))
    shutil.copytree(tiny_bert, files / "no-tokenizer-model", ignore=shutil.ignore_patterns("tok*", "vocab*", "spec*"))
    shutil.copytree(tiny_bert, files / "bad-config-model")
    (files / "bad-config-model" / "config.json").write_text('{"model_type": "bert",')
    shutil.copytree(tiny_bert, files / "truncated-model")
    weights = (tiny_bert / "model.safetensors").read_bytes()
    (files / "truncated-model" / "model.safetensors").write_bytes(weights[: len(weights) // 3])
    return root


@pytest.fixture
def ws(workspace, tiny_bert, run_cli, monkeypatch):
    if train_once(workspace, run_cli, monkeypatch, tiny_bert, "in/good.csv"):
        assert run_cli("embed", "--data", "in/one_class.csv", "--split-col", "split", "--model", tiny_bert,
                       "--pooling", "mean", "--no-progress")[0] == 0
        run = next(Path("artifacts/runs").glob("*/mean/logreg"))
        tampered, moved = Path("in/tampered-run"), Path("in/moved-model-run")
        shutil.copytree(run, tampered)
        with (tampered / "head.skops").open("ab") as handle:
            handle.write(b"junk")
        shutil.copytree(run, moved)
        record = json.loads((moved / "run.json").read_text())
        (moved / "run.json").write_text(json.dumps(sealed({**record, "model_ref": "/nonexistent/deleted-model"})))
        changed = Path("in/changed-model-run")
        shutil.copytree(run, changed)
        record["encoder"]["model"]["weights_sha256"] = "0" * 64
        (changed / "run.json").write_text(json.dumps(sealed(record)))
    return workspace


def sealed(record: dict) -> dict:
    """A run.json as a run made that way would hold it: with its own sha256 (an edit without it is refused)."""
    from pipeline.train.runs import record_digest

    return {**record, "record_sha256": record_digest(record)}


def snapshot(root: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


M = "{model}"
CASES = {
    "predict output is a folder": (["predict", "--input", "in/good.csv", "--output", "in"],
                                   "in is a folder: give a file name"),
    "predict one empty text": (["predict", "--input", "in/blank_text.csv"],
                               r"1 empty or whitespace-only text\(s\) among 6 to predict \(rows 6.*remove or fill"),
    "eval folder without tasks": (["eval", "--data-dir", "in", "--model", M, "--out", "in/eval"],
                                  "no benchmark task found in in: it should hold task folders named mr/"),
    "missing file": (["embed", "--data", "in/nope.csv", "--model", M], "not found"),
    "unknown format": (["embed", "--data", "in/data.xlsx", "--model", M], "unknown file format"),
    "missing text column": (["embed", "--data", "in/good.csv", "--text-col", "review", "--model", M],
                            "no text column 'review'.*columns there: 'text', 'label'"),
    "missing label column": (["embed", "--data", "in/good.csv", "--label-col", "stars", "--model", M],
                             "no label column 'stars'"),
    "empty file": (["embed", "--data", "in/empty.csv", "--model", M], "empty"),
    "whitespace-only text": (["embed", "--data", "in/blank_text.csv", "--model", M], "whitespace-only"),
    "empty label cell": (["embed", "--data", "in/nan_label.csv", "--model", M], "missing label"),
    "non-UTF-8 bytes": (["embed", "--data", "in/latin1.csv", "--model", M], "not valid UTF-8.*iconv"),
    "duplicate ids": (["embed", "--data", "in/dup_ids.csv", "--id-col", "id", "--model", M], "duplicate id"),
    "unknown split values": (["embed", "--data", "in/bad_split.csv", "--split-col", "split", "--model", M],
                             "unknown value.*'holdout'"),
    "header-less CSV": (["embed", "--data", "in/no_header.csv", "--model", M], "no header row"),
    "TSV passed as CSV": (["embed", "--data", "in/tabs.csv", "--model", M], "tab-separated"),
    "mixed label types": (["embed", "--data", "in/mixed.csv", "--model", M], "mixes numbers and words"),
    "1-row file": (["embed", "--data", "in/one_row.csv", "--model", M], "too few distinct texts"),
    "pooling typo": (["embed", "--data", "in/good.csv", "--pooling", "meen", "--model", M],
                     "unknown pooling 'meen'.*choose from"),
    "unknown device": (["embed", "--data", "in/good.csv", "--device", "tpu", "--model", M], "unknown --device"),
    "CUDA absent": (["embed", "--data", "in/good.csv", "--device", "cuda", "--model", M], "no CUDA GPU"),
    "unknown dtype": (["embed", "--data", "in/good.csv", "--dtype", "int4", "--model", M], "unknown --dtype"),
    "unknown runtime": (["embed", "--data", "in/good.csv", "--runtime", "tensorrt", "--model", M],
                        "unknown --runtime 'tensorrt': use auto, torch, openvino"),
    "openvino in fp16": (["embed", "--data", "in/good.csv", "--runtime", "openvino", "--dtype", "fp16", "--model", M],
                         "runs inference on a CPU in fp32 .*not cpu fp16: use --runtime torch"),
    "max length 0": (["embed", "--data", "in/good.csv", "--max-length", "0", "--model", M], "max-length"),
    "max length too long": (["embed", "--data", "in/good.csv", "--max-length", "4096", "--model", M],
                            "out of range: use 2..128"),
    "pickle-only model": (["embed", "--data", "in/good.csv", "--model", "in/pickle-model"], "pickle weights"),
    "model folder missing": (["embed", "--data", "in/good.csv", "--model", "./models/none"], "model folder not found"),
    "hub id offline": (["embed", "--data", "in/good.csv", "--model", "someone/not-cached-model"],
                       "cannot get model 'someone/not-cached-model'"),
    "model asks for custom code": (["embed", "--data", "in/good.csv", "--model", "in/remote-code-model"],
                                   "^error: remote-code-model needs custom code \\(trust_remote_code\\), which "
                                   "bert-pipeline never runs: use a model that transformers supports natively$"),
    "model type unknown to transformers": (["embed", "--data", "in/good.csv", "--model", "in/unknown-type-model"],
                                           "unknown-type-model needs custom code .* supports natively$"),
    "model without tokenizer files": (["embed", "--data", "in/good.csv", "--model", "in/no-tokenizer-model"],
                                      r"has no tokenizer files \(tokenizer.json, or a vocabulary such as vocab.txt\)"),
    "model config not JSON": (["embed", "--data", "in/good.csv", "--model", "in/bad-config-model"],
                              "config.json is not valid JSON .*restore the model's original config.json"),
    "truncated model weights": (["embed", "--data", "in/good.csv", "--model", "in/truncated-model"],
                                r"model.safetensors is truncated \(\d+ bytes; its header needs \d+\)"),
    "a file as the model folder": (["embed", "--data", "in/good.csv", "--model", "in/good.csv"],
                                   "--model in/good.csv is a file, not a model folder"),
    "pooler without pooler": (["embed", "--data", "in/good.csv", "--model", "in/no-pooler", "--pooling", "pooler"],
                              "no trained pooler"),
    "output folder unwritable": (["embed", "--data", "in/good.csv", "--out", "in/a_file/emb", "--model", M],
                                 "cannot write to output folder"),
    "unknown head": (["train", "--data", "in/good.csv", "--head", "xgboost", "--model", M], "unknown head 'xgboost'"),
    "pooling not in cache": (["train", "--data", "in/good.csv", "--pooling", "layers3", "--model", M],
                             "not in the cache.*it has"),
    "no cache for settings": (["train", "--data", "in/good.csv", "--test-size", "0.3", "--model", M],
                              "no cache for data 'good'.*make embed DATA=in/good.csv TEST_SIZE=0.3 MODEL="),
    "train with another seed": (["train", "--data", "in/good.csv", "--seed", "3", "--model", M],
                                "no cache for data 'good'.*make embed DATA=in/good.csv SEED=3 MODEL="),
    "one class in train": (["train", "--data", "in/one_class.csv", "--split-col", "split", "--model", M],
                           "only one class"),
    "tampered head": (["predict", "--run", "in/tampered-run", "--text", "good"], "does not match its recorded sha256"),
    "not a run folder": (["predict", "--run", "in", "--text", "good"], "not a run folder"),
    "run's model is gone": (["predict", "--run", "in/moved-model-run", "--text", "good"], "model folder not found"),
    "run's model changed": (["predict", "--run", "in/changed-model-run", "--text", "good"],
                            "is not the one run .* was trained with"),
    "predict input without column": (["predict", "--input", "in/good.csv", "--text-col", "body"],
                                     "no text column 'body'"),
    "predict nothing": (["predict"], "nothing to predict"),
    "predict labels the run never saw": (["predict", "--input", "in/bad_split.csv", "--label-col", "split",
                                          "--output", "out/s.csv"],
                                         "label.*'holdout' in column 'split' .* never occur in the run's labels"),
    "predict mixed label kinds": (["predict", "--input", "in/mixed.csv", "--label-col", "label", "--output",
                                   "out/s.csv"], "mixes numbers and words"),
    "predict labelled without output": (["predict", "--input", "in/good.csv", "--label-col", "label"],
                                        "writes its report beside the output: give --output"),
    "predict text and input": (["predict", "--text", "good", "--input", "in/good.csv"], "not both"),
    "predict unknown engine": (["predict", "--input", "in/good.csv", "--engine", "spark"], "unknown engine 'spark'"),
    "export to a non-onnx name": (["export", "--out", "in/model.txt"], "should end in .onnx"),
    "unquoted comma in a text": (["embed", "--data", "in/extra_fields.csv", "--model", M],
                                 r"line 3 has 3 field\(s\) but the header has 2: put a text .* in double quotes"),
    "semicolon-separated CSV": (["embed", "--data", "in/semicolons.csv", "--model", M], "semicolon-separated"),
    "UTF-16 CSV": (["embed", "--data", "in/utf16.csv", "--model", M], "UTF-16 text.*iconv -f utf-16 -t utf-8"),
    "Excel workbook named .csv": (["embed", "--data", "in/workbook.csv", "--model", M],
                                  "Excel workbook.*export it as CSV"),
    "binary file": (["embed", "--data", "in/binary.csv", "--model", M], r"binary data \(a NUL byte on line 2\)"),
    "duplicate header names": (["embed", "--data", "in/dup_header.csv", "--model", M],
                               "duplicate column name 'text'"),
    "JSON array as JSON Lines": (["embed", "--data", "in/array.json", "--model", M],
                                 "one JSON array, not JSON Lines.*jq"),
    "pipe as --data": (["embed", "--data", "in/pipe.csv", "--model", M],
                       r"not a regular file \(a pipe or device\): save it to a file first"),
    "split column without train rows": (["embed", "--data", "in/no_train.csv", "--split-col", "split", "--model", M],
                                        r"split column 'split' has no train rows \(test=6\)"),
    "binary text column in Parquet": (["embed", "--data", "in/binary_text.parquet", "--model", M],
                                      "text column 'text' .* holds Arrow type binary .*store the texts as strings"),
    "malformed benchmark line": (["embed", "--data", "in/bad-sst2", "--model", M],
                                 "stsa.binary.train line 2 is not '<label> <sentence>'.*fix or delete"),
    "predict input semicolon-separated": (["predict", "--input", "in/semicolons.csv"], "semicolon-separated"),
    "negative seed": (["embed", "--data", "in/good.csv", "--seed", "-1", "--model", M], "--seed.*0<=x<=4294967295"),
    "seed too large": (["train", "--data", "in/good.csv", "--seed", str(2**32), "--model", M], "--seed"),
    "pooling list of commas": (["embed", "--data", "in/good.csv", "--pooling", ",", "--model", M],
                               "no pooling given in ','.*choose from"),
    "head list of commas": (["train", "--data", "in/good.csv", "--head", ",,", "--model", M], "no head given"),
    "sizes typo": (["bench", "speed", "--data", "in/good.csv", "--sizes", "1000,4k", "--model", M],
                   "size '4k' in '1000,4k' is not a positive whole number"),
    "unknown eval task": (["eval", "--data-dir", "in", "--tasks", "sst3", "--model", M], "unknown task 'sst3'"),
    "unknown engine": (["embed", "--data", "in/good.csv", "--engine", "spark", "--model", M],
                       "unknown engine 'spark': choose from local, ray"),
    "test size out of range": (["embed", "--data", "in/good.csv", "--test-size", "1.5", "--model", M], "--test-size"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gets_one_line_and_changes_nothing(ws, run_cli, tiny_bert, name):
    args, pattern = CASES[name]
    before = snapshot(ws)
    code, out, err = run_cli(*[str(tiny_bert) if a == M else a for a in args])
    lines = err.strip().splitlines()
    assert code != 0
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    assert __import__("re").search(pattern, lines[0]), lines[0]
    assert snapshot(ws) == before


def test_predict_prints_and_writes_label_and_probabilities(ws, run_cli):
    code, out, err = run_cli("predict", "--text", "great fun", "--text", "awful and dull")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 2 and lines[0].split("\t")[0] in ("positive", "negative") and "positive=" in lines[0]
    code, out, err = run_cli("predict", "--input", "in/good.csv", "--output", "out/preds.csv")
    assert code == 0, err
    import pandas as pd

    preds = pd.read_csv(ws / "out" / "preds.csv")
    assert list(preds.columns) == ["text", "label", "predicted_label", "confidence", "p_negative", "p_positive"]
    assert preds["text"].tolist() == [text for text, _ in GOOD], "every row, in order"
    assert preds["label"].tolist() == [label for _, label in GOOD], "the user's labels are kept"
    assert (preds["predicted_label"] == preds["label"]).mean() > 0.6


def test_long_and_duplicate_texts_work_and_truncation_is_reported(ws, run_cli, tiny_bert):
    rows = GOOD + [("good " * 20000, "positive"), (GOOD[0][0], GOOD[0][1])]
    write_csv(ws / "in" / "odd.csv", rows)
    code, out, err = run_cli("embed", "--data", "in/odd.csv", "--model", tiny_bert, "--pooling", "mean",
                             "--no-progress")
    assert code == 0, err
    assert "embedded 42 rows" in out and " 1 of 42 texts over 128 tokens" in out and "read whole in 213 windows" in out
