"""Using a trained run: predict keeps the user's rows and columns, refuses clashes and unknown labels, scores a
labelled file with the train stage's report, resumes a killed large predict, explains its mistakes, works from
Python, and exports one ONNX graph whose probabilities equal predict's."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import pipeline
from pipeline.cache import EmbeddingCache, load_embeddings, shard_table
from pipeline.embed.windows import Reading
from pipeline.errors import PipelineError
from pipeline.predict import load_classifier
from pipeline.train.metrics import classification_metrics
from pipeline.train.report import Scored, error_analysis_lines
from pipeline.train.stage import train_cache

from conftest import sentiment_rows, train_once, write_csv

ADDED = ["predicted_label", "confidence", "p_negative", "p_positive"]


def three_class_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """sentiment_rows plus a neutral class whose texts use neither kind of word."""
    import random

    rng = random.Random(seed)
    rows = sentiment_rows(n - n // 3, seed)
    neutral = [" ".join(rng.sample(["the", "movie", "film", "plot", "story", "actor", "it", "this"], 4)) + f" n{i}"
               for i in range(n // 3)]
    return rows + [(text, "neutral") for text in neutral]


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_bert):
    """A folder with a trained fp32 run (logreg on mean) made through the CLI, and a new file to predict."""
    root = tmp_path_factory.mktemp("predict")
    write_csv(root / "train.csv", sentiment_rows(120))
    new = [(f"r{i}", text, label, i % 5, i * 0.5) for i, (text, label) in enumerate(sentiment_rows(50, seed=7))]
    write_csv(root / "new.csv", new, ("id", "review", "label", "stars", "score"))
    return root


@pytest.fixture
def ws(project, tiny_bert, run_cli, monkeypatch):
    embed_args = ("--pooling", "mean,max,layers", "--dtype", "fp32")
    train_once(project, run_cli, monkeypatch, tiny_bert, "train.csv", embed_args)
    return project


def run_folder(head: str = "logreg", pooling: str = "mean") -> Path:
    return next(Path("artifacts/runs").glob(f"*/{pooling}/{head}"))


def read(path: Path):
    import pandas as pd

    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


# --- predict keeps the user's data ------------------------------------------------------------------------------

@pytest.mark.parametrize("source, suffix", [("new.csv", ".csv"), ("new.csv", ".parquet"),
                                            ("new.parquet", ".parquet"), ("new.parquet", ".csv")])
def test_every_input_column_and_row_order_is_kept_and_predictions_added(ws, run_cli, source, suffix):
    """CSV cells stay the text they were (no guessing: an id '007' stays '007'); Parquet keeps its types."""
    import pandas as pd

    if not Path("new.parquet").exists():
        typed = read(Path("new.csv")).assign(when=pd.Timestamp("2024-01-02"))
        pq.write_table(__import__("pyarrow").Table.from_pandas(typed, preserve_index=False), "new.parquet")
    code, out, err = run_cli("predict", "--input", source, "--text-col", "review", "--output", f"out/s{suffix}",
                             "--no-progress")
    assert code == 0, err
    assert "wrote 50 predictions to out/s" in out
    given = read(Path(source))
    got = read(Path(f"out/s{suffix}"))
    assert list(got.columns) == [*given.columns, *ADDED]
    kept = got[list(given.columns)]
    if source.endswith(".parquet") and suffix == ".parquet":
        assert kept.equals(given) and list(kept.dtypes) == list(given.dtypes), "values and types unchanged"
    else:
        plain = [c for c in given.columns if c != "when"]
        assert kept[plain].astype(str).equals(given[plain].astype(str)), "input columns and row order unchanged"
        if "when" in given:  # a CSV holds a timestamp as text
            assert (pd.to_datetime(kept["when"]) == given["when"]).all()
    clf = load_classifier(run_folder(), "cpu")
    proba = clf.predict_proba(given["review"].tolist())
    np.testing.assert_allclose(got[["p_negative", "p_positive"]].to_numpy(), proba, atol=1e-6)
    assert got["predicted_label"].tolist() == clf.predict(given["review"].tolist())
    np.testing.assert_allclose(got["confidence"], proba.max(axis=1), atol=1e-6)
    assert (got["predicted_label"] == got["label"]).mean() > 0.8


def test_a_column_named_like_a_prediction_is_refused_and_nothing_is_written(ws, run_cli):
    write_csv(Path("clash.csv"), [(t, lab, 0.5) for t, lab in sentiment_rows(6)], ("text", "label", "confidence"))
    before = sorted(p for p in Path(".").rglob("*") if p.is_file())
    code, out, err = run_cli("predict", "--input", "clash.csv", "--output", "out/clash.csv")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "already has column(s) 'confidence', which predict adds" in err and "never overwrites" in err
    assert sorted(p for p in Path(".").rglob("*") if p.is_file()) == before


def test_a_second_predict_of_the_same_file_reuses_its_cache(ws, run_cli):
    run_cli("predict", "--input", "new.csv", "--text-col", "review", "--output", "out/a.csv", "--no-progress")
    code, out, err = run_cli("predict", "--input", "new.csv", "--text-col", "review", "--output", "out/b.csv",
                             "--no-progress")
    assert code == 0 and "(0 texts embedded, 50 reused" in out, out + err
    assert Path("out/a.csv").read_bytes() == Path("out/b.csv").read_bytes()


# --- labelled scoring -------------------------------------------------------------------------------------------

def test_a_labelled_file_gets_the_train_report_beside_the_output(ws, run_cli):
    code, out, err = run_cli("predict", "--input", "new.csv", "--text-col", "review", "--label-col", "label",
                             "--output", "out/scored.csv", "--no-progress")
    assert code == 0, err
    assert "accuracy" in out and "on 50 labelled rows" in out
    report, metrics_file, png = (Path("out") / f"scored{s}" for s in (".report.md", ".metrics.json", ".confusion.png"))
    assert png.read_bytes().startswith(b"\x89PNG")
    saved = json.loads(metrics_file.read_text())
    got = read(Path("out/scored.csv"))
    names = ["negative", "positive"]
    y = np.array([names.index(v) for v in got["label"]])
    proba = got[["p_negative", "p_positive"]].to_numpy()
    train_majority = json.loads((run_folder() / "metrics.json").read_text())["metrics"]["majority_baseline"]["label"]
    want = classification_metrics(y, proba, names, np.array([names.index(train_majority)]), seed=0)
    assert saved["metrics"]["accuracy"] == pytest.approx(want.accuracy)
    assert saved["metrics"]["confusion"] == want.confusion
    assert saved["metrics"]["macro_f1_ci95"] == pytest.approx(want.macro_f1_ci95)
    assert saved["scored_on"] == "new.csv" and saved["head"] == "logreg"
    text = report.read_text()
    assert text.startswith("# logreg on mean — scored on new.csv")
    for part in ("| accuracy |", "95% CI", "majority baseline", "| negative |", "Confusion matrix", "ECE",
                 "## Error analysis", "Least confident correct predictions"):
        assert part in text, part


def test_labels_the_run_never_saw_are_refused_by_name(ws, run_cli):
    rows = [(t, lab if i % 7 else "neutral", "x") for i, (t, lab) in enumerate(sentiment_rows(20))]
    rows[3] = (rows[3][0], "mixed", "x")
    write_csv(Path("unseen.csv"), rows, ("text", "label", "other"))
    code, out, err = run_cli("predict", "--input", "unseen.csv", "--label-col", "label", "--output", "out/u.csv")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "label(s) 'mixed', 'neutral' in column 'label' of unseen.csv never occur in the run's labels " \
           "(negative, positive)" in err
    assert not Path("out/u.csv").exists()


# --- a large predict streams and resumes ------------------------------------------------------------------------

KILLER = """
import os, signal, sys
from pipeline import cache
calls = {"n": 0}
original = cache.EmbeddingCache.write_shard
def write_shard(self, index, table):
    calls["n"] += 1
    if calls["n"] == 2:  # the first shard is whole on disk; die before the second
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, index, table)
cache.EmbeddingCache.write_shard = write_shard
from pipeline.cli import main
main()
"""


def test_a_killed_large_predict_resumes_from_its_finished_shards(ws, tiny_bert):
    rows = sentiment_rows(230, seed=11)
    write_csv(Path("big.csv"), [(f"id{i}", t, i) for i, (t, _) in enumerate(rows)], ("key", "text", "n"))
    args = ["predict", "--run", str(run_folder()), "--input", "big.csv", "--output", "out/big.parquet",
            "--shard-rows", "50", "--embeddings", "emb-big", "--no-progress"]
    cwd = {"cwd": Path.cwd(), "capture_output": True, "text": True}
    killed = subprocess.run([sys.executable, "-c", KILLER, *args], **cwd)
    assert killed.returncode == -9, killed.stderr
    [cache] = [p for p in Path("emb-big").iterdir() if p.is_dir()]
    assert not Path("out/big.parquet").exists() and not (cache / "_manifest.json").exists()
    assert len(list(cache.glob("shard-*.parquet"))) == 1
    rerun = subprocess.run([sys.executable, "-m", "pipeline", *args], **cwd)
    assert rerun.returncode == 0, rerun.stderr
    assert "180 texts embedded, 50 reused" in rerun.stdout
    manifest = json.loads((cache / "_manifest.json").read_text())
    assert manifest["last_run"]["computed_shards"] == [1, 2, 3, 4], "only the unfinished shards were embedded"
    got = pq.read_table("out/big.parquet").to_pandas()
    assert got["key"].tolist() == [f"id{i}" for i in range(230)] and got["n"].tolist() == [str(i) for i in range(230)]
    proba = load_classifier(run_folder(), "cpu").predict_proba([t for t, _ in rows])
    np.testing.assert_allclose(got[["p_negative", "p_positive"]].to_numpy(), proba, atol=1e-6)
    assert load_embeddings(cache, "mean").texts.tolist() == [t for t, _ in rows], "the cache keeps the texts"


def test_the_ray_engine_gives_the_local_predictions(ws, run_cli):
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'bert-pipeline[distributed]'")
    write_csv(Path("ray.csv"), sentiment_rows(60, seed=5))
    common = ["predict", "--input", "ray.csv", "--shard-rows", "30", "--no-progress"]
    code, _, err = run_cli(*common, "--output", "out/local.csv", "--embeddings", "emb-local")
    assert code == 0, err
    code, _, err = run_cli(*common, "--output", "out/ray.csv", "--embeddings", "emb-ray", "--engine", "ray")
    assert code == 0, err
    local, distributed = read(Path("out/local.csv")), read(Path("out/ray.csv"))
    assert local["predicted_label"].tolist() == distributed["predicted_label"].tolist()
    np.testing.assert_allclose(local["p_positive"], distributed["p_positive"], atol=1e-5)


# --- error analysis ---------------------------------------------------------------------------------------------

def test_error_analysis_lists_the_most_confident_mistakes_and_least_confident_right_rows():
    n = 30
    y = np.array([i % 2 for i in range(n)])
    confidence = np.linspace(0.51, 0.99, n)
    predicted = np.where(np.arange(n) % 3 == 0, 1 - y, y)  # every third row wrong
    proba = np.zeros((n, 2))
    proba[np.arange(n), predicted] = confidence
    proba[np.arange(n), 1 - predicted] = 1 - confidence
    texts = np.array([f"text {i} | with a pipe " + "long " * 40 for i in range(n)], dtype=object)
    lines = error_analysis_lines(Scored(np.arange(n).astype(str), texts, y, proba), ["neg", "pos"])
    text = "\n".join(lines)
    mistakes = [row for row in range(n) if row % 3 == 0][::-1]
    right = [row for row in range(n) if row % 3][:10]
    table = lambda title: [line.split(" | ")[0][2:] for line in  # noqa: E731
                           text.split(title)[1].split("\n\n")[1].splitlines()[2:]]
    assert table("Most confident mistakes (10 of 10 wrong rows)") == [str(r) for r in mistakes]
    assert table("Least confident correct predictions (10 of 20 right rows)") == [str(r) for r in right]
    assert "text 27 \\| with a pipe long" in text and "…" in text and "long " * 40 not in text
    assert "| 27 | text 27 " in text and f"| pos | neg | {confidence[27]:.3f} |" in text
    old = "\n".join(error_analysis_lines(Scored(np.arange(n).astype(str), None, y, proba), ["neg", "pos"]))
    assert "(not in cache)" in old and "made before caches kept each row's text" in old


def test_train_reports_quote_texts_and_caches_without_texts_still_load(tiny_bert, tmp_path):
    from pipeline.data import load_dataset
    from pipeline.embed.encoder import load_encoder
    from pipeline.embed.settings import EncoderOptions
    from pipeline.embed.stage import embed_dataset

    ds = load_dataset(write_csv(tmp_path / "toy.csv", sentiment_rows(80)))
    encoder = load_encoder(str(tiny_bert), EncoderOptions(max_length=16, device="cpu", dtype="fp32"))
    first = embed_dataset(ds, encoder, ["mean"], tmp_path / "emb", shard_rows=30, progress=False)
    emb = load_embeddings(first.path, "mean")
    assert emb.texts.tolist() == ds.texts
    train_cache(first.path, "mean", ["logreg"], tmp_path / "runs", progress=False)
    report = (tmp_path / "runs" / first.path.name / "mean" / "logreg" / "report.md").read_text()
    test_texts = {t for t, s in zip(ds.texts, ds.splits, strict=True) if s == "test"}
    quoted = [line.split(" | ")[1] for line in report.split("## Error analysis")[1].splitlines()
              if line.startswith("| ") and not line.startswith(("| row", "|---"))]
    assert quoted and set(quoted) <= test_texts

    # A cache written before the text column: same key, loads, reports show ids.
    store = EmbeddingCache(first.path)
    manifest = json.loads(store.manifest_path.read_text())
    for i, shard in enumerate(manifest["shards"]):
        pq.write_table(pq.read_table(store.shard_path(i)).drop_columns(["text"]), store.shard_path(i))
        shard.update(bytes=store.shard_path(i).stat().st_size, sha256=store.shard_record(i, shard["rows"]).sha256)
    store.manifest_path.write_text(json.dumps(manifest))
    assert load_embeddings(first.path, "mean").texts is None
    again = embed_dataset(ds, encoder, ["mean"], tmp_path / "emb", shard_rows=30, progress=False)
    assert again.path == first.path and again.computed_rows == 0, "the text column is not part of the key"
    train_cache(first.path, "mean", ["logreg"], tmp_path / "runs", progress=False)
    report = (tmp_path / "runs" / first.path.name / "mean" / "logreg" / "report.md").read_text()
    assert "(not in cache)" in report


def test_shard_tables_take_texts_optionally():
    args = (["0", "1"], ["train", "test"], np.array([0, 1]), np.array([3, 4]), np.array([False, False]),
            {"mean": np.zeros((2, 3))})
    assert "text" not in shard_table(*args).column_names
    assert shard_table(*args, ["a", "b"]).column("text").to_pylist() == ["a", "b"]


# --- the Python API ---------------------------------------------------------------------------------------------

def test_the_python_api_is_the_object_the_cli_uses(ws, run_cli):
    clf = pipeline.load_classifier(run_folder(), device="cpu")
    assert list(clf.classes_) == ["negative", "positive"] and "logreg on mean" in repr(clf)
    texts = ["good great fun", "awful boring dull", "witty and fine"]
    proba = clf.predict_proba(texts)
    assert proba.shape == (3, 2) and np.allclose(proba.sum(axis=1), 1)
    assert clf.predict(texts) == ["positive", "negative", "positive"]
    code, out, err = run_cli("predict", "--run", run_folder(), "--text", texts[0], "--text", texts[1])
    assert code == 0, err
    first = out.splitlines()[0].split("\t")
    assert first[0] == "positive" and first[1] == f"negative={proba[0, 0]:.3f}, positive={proba[0, 1]:.3f}"
    newest = pipeline.load_classifier(runs=Path("artifacts/runs"), device="cpu")
    assert newest.path == run_folder()
    with pytest.raises(PipelineError, match="not one string"):
        clf.predict("good")
    with pytest.raises(PipelineError, match="1 empty or whitespace-only text"):
        clf.predict(["good", " "])


def test_a_layer_pooling_run_predicts_from_its_layer(ws):
    cache = next(Path("artifacts/embeddings").glob("train__*"))
    train_cache(cache, "layer1", ["logreg"], Path("artifacts/runs"), progress=False)
    clf = load_classifier(run_folder("logreg", "layer1"), "cpu")
    emb = load_embeddings(cache, "layer1", "test")
    np.testing.assert_allclose(clf.proba_of(load_embeddings(cache, "layers", "test").X),
                               clf.run.model.predict_proba(emb.X), atol=1e-6)


# --- the head's graph -------------------------------------------------------------------------------------------

START_UP = """
import sys
from pipeline.predict import load_classifier
print(*load_classifier(sys.argv[1], "cpu").predict(["good great fun", "awful"]))
print(*[m for m in ("torch", "transformers", "sklearn", "skops", "matplotlib") if m in sys.modules])
"""


def test_predicting_with_a_kept_graph_and_a_head_graph_loads_no_torch_and_no_scikit_learn(ws):
    """The start-up of `predict --text`: the encoder's kept graph and the head's graph stand in for 3 s of imports."""
    want = load_classifier(run_folder(), "cpu").predict(["good great fun", "awful"])  # also keeps the graph
    out = subprocess.run([sys.executable, "-c", START_UP, str(run_folder())], capture_output=True, text=True,
                         check=True)
    assert out.stdout.splitlines() == [" ".join(want), ""]


@pytest.mark.parametrize("pooling, head", [("mean", "logreg"), ("layer1", "linear-svm"), ("max", "mlp"),
                                           ("mean", "rbf-svm")])
def test_heads_predict_through_their_graph_with_the_fitted_heads_probabilities(three_class_runs, pooling, head):
    from pipeline.train.head_graph import GraphHead

    clf = load_classifier(three_class_runs / pooling / head, "cpu")
    assert isinstance(clf.run.head, GraphHead) and (clf.path / "head.onnx").is_file()
    cache = clf.path.parents[3] / "emb" / clf.run.record.cache
    vectors, X = (load_embeddings(cache, name, "test").X for name in (clf.source[0], pooling))
    np.testing.assert_allclose(clf.proba_of(vectors), clf.run.model.predict_proba(X), atol=1e-5)


def test_a_head_without_a_graph_predicts_through_its_fitted_object(ws, monkeypatch):
    from pipeline.train import runs

    cache = next(Path("artifacts/embeddings").glob("train__*"))
    monkeypatch.setattr(runs, "head_graph", lambda model, X: None)  # a head skl2onnx cannot convert
    train_cache(cache, "max", ["logreg"], Path("artifacts/runs"), progress=False)
    clf = load_classifier(run_folder("logreg", "max"), "cpu")
    assert clf.run.graph_bytes is None and not (clf.path / "head.onnx").exists()
    emb = load_embeddings(cache, "max", "test")
    np.testing.assert_array_equal(clf.proba_of(emb.X), clf.run.model.predict_proba(emb.X))


def test_a_changed_head_graph_is_refused_in_one_line(three_class_runs, tmp_path, run_cli):
    import shutil

    run = shutil.copytree(three_class_runs / "mean" / "logreg", tmp_path / "run")
    graph = run / "head.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")
    code, out, err = run_cli("predict", "--run", run, "--text", "fine")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "head.onnx is missing or does not match its recorded sha256" in err


# --- export -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def three_class_runs(tmp_path_factory, tiny_bert):
    """fp32 runs of every head that converts to ONNX, on a 3-class set, on several poolings."""
    from pipeline.data import load_dataset
    from pipeline.embed.encoder import load_encoder
    from pipeline.embed.settings import EncoderOptions
    from pipeline.embed.stage import embed_dataset

    tmp = tmp_path_factory.mktemp("export")
    ds = load_dataset(write_csv(tmp / "three.csv", three_class_rows(150)))
    encoder = load_encoder(str(tiny_bert), EncoderOptions(max_length=32, device="cpu", dtype="fp32"))
    cache = embed_dataset(ds, encoder, ["mean", "max", "layers"], tmp / "emb", progress=False).path
    for pooling, head in (("mean", "logreg"), ("layer1", "linear-svm"), ("max", "mlp"), ("mean", "rbf-svm")):
        train_cache(cache, pooling, [head], tmp / "runs", progress=False)
    return tmp / "runs" / cache.name


SERVE = """
import json, numpy as np, onnxruntime as ort, tokenizers
labels, tok = json.load(open("model.json"))["labels"], tokenizers.Tokenizer.from_file("model.tokenizer/tokenizer.json")
batch = tok.encode_batch(texts)
feed = {"input_ids": np.array([e.ids for e in batch]), "attention_mask": np.array([e.attention_mask for e in batch])}
probs = ort.InferenceSession("model.onnx").run(None, feed)[0]
"""


@pytest.mark.parametrize("pooling, head", [("mean", "logreg"), ("layer1", "linear-svm"), ("max", "mlp"),
                                           ("mean", "rbf-svm")])
def test_the_exported_graph_equals_predict(three_class_runs, run_cli, tmp_path, monkeypatch, pooling, head):
    pytest.importorskip("onnxruntime", reason="export needs pip install 'bert-pipeline[serve]'")
    monkeypatch.chdir(tmp_path)
    run = three_class_runs / pooling / head
    code, out, err = run_cli("export", "--run", run, "--out", "model.onnx")
    assert code == 0, err
    assert "wrote model.onnx" in out and f"{head} on {pooling}" in out
    meta = json.loads(Path("model.json").read_text())
    assert meta["labels"] == ["negative", "neutral", "positive"] and meta["inputs"] == ["input_ids", "attention_mask"]
    assert meta["pooling"] == pooling and meta["head"] == head and meta["check"]["max_abs_diff"] <= 1e-4
    texts = ["good great fun", "the plot and the actor", "awful boring dull and slow, a very bad film " * 5,
             "fine", "it is this movie", "witty but slow"]
    scope = {"texts": texts}
    exec(SERVE, scope)  # the README's serving code, as a user runs it
    assert meta["long_texts"].startswith("cut at max_length")  # the third text is over 32 tokens: cut, not windowed
    want = load_classifier(run, "cpu").reading_as(Reading("truncate")).predict_proba(texts)
    assert scope["probs"].shape == (len(texts), 3)
    np.testing.assert_allclose(scope["probs"], want, atol=1e-4)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained("model.tokenizer")("fine")["input_ids"] == \
        scope["tok"].encode("fine").ids


def test_a_run_whose_head_does_not_convert_is_refused_in_one_line_with_the_way_out(three_class_runs, run_cli,
                                                                                   tmp_path, monkeypatch):
    """A run without head.onnx gets its head converted at export; a head skl2onnx cannot convert is refused."""
    import shutil

    import pipeline.predict.export as export

    run = shutil.copytree(three_class_runs / "mean" / "logreg", tmp_path / "run")
    record = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**record, "head_graph_sha256": None, "record_sha256": None}))
    (run / "head.onnx").unlink()
    monkeypatch.setattr(export, "convert", lambda model, dim: None)
    code, out, err = run_cli("export", "--run", run, "--out", tmp_path / "m.onnx")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "head logreg of this run does not convert to ONNX" in err and "export that run" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_run_trained_before_head_graphs_still_exports(three_class_runs, run_cli, tmp_path):
    """Its head is converted at export, and the export's own check holds it to predict's probabilities."""
    import shutil

    run = shutil.copytree(three_class_runs / "layer1" / "linear-svm", tmp_path / "run")
    record = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**record, "head_graph_sha256": None, "head_classes": None,
                                                      "record_sha256": None}))
    (run / "head.onnx").unlink()
    code, out, err = run_cli("export", "--run", run, "--out", tmp_path / "m.onnx")
    assert code == 0, err
    assert json.loads((tmp_path / "m.json").read_text())["check"]["max_abs_diff"] <= 1e-4
