"""Stage two on cached vectors: heads, honest selection, metrics, run artifacts, predict, and their errors."""

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.cache import load_embeddings
from pipeline.data import load_dataset
from pipeline.embed.encoder import load_encoder
from pipeline.embed.settings import EncoderOptions
from pipeline.embed.stage import embed_dataset
from pipeline.errors import PipelineError
from pipeline.predict import load_encoder_for, predict_texts
from pipeline.train.heads import HEADS, fit_head, parse_heads
from pipeline.train.metrics import Metrics, classification_metrics, expected_calibration_error
from pipeline.train.runs import load_run
from pipeline.train.stage import train_cache

from conftest import sentiment_rows, write_csv


@pytest.fixture(scope="module")
def cache(tiny_bert, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    ds = load_dataset(write_csv(tmp / "toy.csv", sentiment_rows(160)))
    enc = load_encoder(str(tiny_bert), EncoderOptions(max_length=16, device="cpu", dtype="fp32"))
    return embed_dataset(ds, enc, ["mean", "cls", "layers"], tmp / "emb", progress=False).path


def blobs(n=300, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    return rng.normal(size=(n, 8)) + 3 * np.eye(k, 8)[y], y


@pytest.mark.parametrize("head", list(HEADS))
def test_every_head_is_a_fitted_sklearn_estimator_that_learns(head):
    X, y = blobs()
    model = fit_head(head, X[:240], y[:240], seed=0)
    assert (model.predict(X[240:]) == y[240:]).mean() > 0.9
    assert model.predict_proba(X[240:]).shape == (60, 3)


@pytest.mark.parametrize("head", ["logreg", "knn"])
def test_selection_uses_dev_when_given_and_never_sees_test(head):
    X, y = blobs()
    model = fit_head(head, X[:200], y[:200], X[200:250], y[200:250])
    search = model[-1] if head == "logreg" else model
    assert list(search.cv.test_fold).count(0) == 50 and len(search.cv.test_fold) == 250


def test_seeded_heads_give_the_same_numbers_twice():
    X, y = blobs()
    a = fit_head("mlp", X[:240], y[:240], seed=1).predict_proba(X[240:])
    b = fit_head("mlp", X[:240], y[:240], seed=1).predict_proba(X[240:])
    np.testing.assert_array_equal(a, b)


def test_metrics_on_a_known_case():
    y = np.array([0, 0, 1, 1, 2, 2])
    proba = np.eye(3)[[0, 1, 1, 1, 2, 0]] * 0.8 + 0.2 / 3
    m = classification_metrics(y, proba, ["neg", "neu", "pos"], y_train=np.array([1, 1, 0]))
    assert m.accuracy == pytest.approx(4 / 6)
    assert m.confusion == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m.majority_baseline.label == "neu" and m.majority_baseline.accuracy == pytest.approx(1 / 3)
    assert m.majority_baseline.macro_f1 == pytest.approx((0 + 0.5 + 0) / 3)
    lo, hi = m.accuracy_ci95
    assert lo < m.accuracy < hi
    assert m.per_class["neu"].recall == 1.0
    assert 0.5 <= m.roc_auc <= 1.0
    assert Metrics.from_json(json.loads(json.dumps(m.to_json())), Path("metrics.json")) == m
    assert m.to_json()["schema"] == Metrics.version() == 1


def test_ece_is_zero_when_confidence_equals_accuracy():
    y = np.array([0, 1, 0, 1])
    assert expected_calibration_error(y, np.array([[0.5, 0.5]] * 4)) == pytest.approx(0.0)
    assert expected_calibration_error(np.array([1, 1]), np.array([[0.9, 0.1]] * 2)) == pytest.approx(0.9)


def test_train_writes_runs_reports_and_a_summary(cache, tmp_path):
    rows = train_cache(cache, "all", ["logreg", "knn"], tmp_path / "runs", progress=False)
    assert {(r["pooling"], r["head"]) for r in rows} == {(p, h) for p in ("mean", "cls") for h in ("logreg", "knn")}
    run = tmp_path / "runs" / cache.name / "mean" / "logreg"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["metrics"]["accuracy"] > 0.9
    assert metrics["selection"] == "5-fold CV on train"
    assert (run / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert "| accuracy |" in (run / "report.md").read_text()
    assert (tmp_path / "runs" / cache.name / "runs.csv").read_text().count("\n") == 5
    rows = train_cache(cache, "layer1", ["logreg"], tmp_path / "runs", progress=False)
    assert len(rows) == 5


def test_a_tampered_head_file_is_refused(cache, tmp_path):
    train_cache(cache, "mean", ["logreg"], tmp_path / "runs", progress=False)
    run = tmp_path / "runs" / cache.name / "mean" / "logreg"
    assert load_run(run).model is not None
    with (run / "head.skops").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(PipelineError, match="does not match its recorded sha256"):
        load_run(run)


def test_predict_uses_the_runs_model_settings_and_pooling(cache, tmp_path):
    train_cache(cache, "cls", ["logreg"], tmp_path / "runs", progress=False)
    run = load_run(tmp_path / "runs" / cache.name / "cls" / "logreg")
    encoder = load_encoder_for(run, "cpu")
    assert encoder.max_length == 16
    labels, proba = predict_texts(run, encoder, ["good great fun", "awful boring dull"])
    assert labels == ["positive", "negative"]
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    emb = load_embeddings(cache, "cls", "test")
    assert (run.model.predict(emb.X) == emb.y).mean() > 0.9


def test_one_class_train_empty_test_and_unseen_labels_are_refused(tiny_bert, tmp_path):
    enc = load_encoder(str(tiny_bert), EncoderOptions(max_length=16, device="cpu", dtype="fp32"))
    cases = {
        "only one class": [(f"good {i}", "pos", "train") for i in range(6)] + [("bad", "neg", "test")],
        "test split is empty": [(f"good {i}", ["pos", "neg"][i % 2], "train") for i in range(6)],
        "never occur in train": [(f"good {i}", ["pos", "neg"][i % 2], "train") for i in range(6)] +
                                [("meh", "neutral", "test")],
    }
    for message, rows in cases.items():
        ds = load_dataset(write_csv(tmp_path / "c.csv", rows, ("text", "label", "split")),
                          __import__("pipeline.data", fromlist=["ColumnSpec"]).ColumnSpec(split="split"))
        path = embed_dataset(ds, enc, ["mean"], tmp_path / "emb", progress=False).path
        with pytest.raises(PipelineError, match=message):
            train_cache(path, "mean", ["logreg"], tmp_path / "runs", progress=False)


def test_unknown_head_and_missing_pooling_name_the_choices(cache, tmp_path):
    with pytest.raises(PipelineError, match="unknown head 'svm'.*logreg"):
        parse_heads("svm")
    with pytest.raises(PipelineError, match="not in the cache.*it has: cls, layers, mean"):
        train_cache(cache, "max", ["logreg"], tmp_path / "runs", progress=False)


@pytest.mark.parametrize("head", list(HEADS))
def test_every_head_saves_without_pickle_and_loads_with_the_allowlist(head, tmp_path):
    from pipeline.train.runs import HEAD_FILE, _load_head

    X, y = blobs()
    for X_dev, y_dev in ((None, None), (X[200:250], y[200:250])):
        model = fit_head(head, X[:200], y[:200], X_dev, y_dev)
        loaded = _load_head(tmp_path / HEAD_FILE, __import__("skops.io").io.dumps(model))
        np.testing.assert_array_equal(loaded.predict_proba(X[250:]), model.predict_proba(X[250:]))


def test_a_head_file_with_foreign_types_is_refused_and_old_pickled_runs_still_load(cache, tmp_path):
    import hashlib
    import io
    import os

    import joblib
    import skops.io

    from pipeline.train.runs import HEAD_FILE, LEGACY_HEAD_FILE, record_digest

    train_cache(cache, "mean", ["logreg"], tmp_path / "runs", progress=False)
    run = tmp_path / "runs" / cache.name / "mean" / "logreg"
    record = json.loads((run / "run.json").read_text())

    def plant(name: str, payload: bytes) -> None:
        for old in (HEAD_FILE, LEGACY_HEAD_FILE):
            for suffix in ("", ".sha256"):
                (run / f"{old}{suffix}").unlink(missing_ok=True)
        digest = hashlib.sha256(payload).hexdigest()
        (run / name).write_bytes(payload)
        (run / f"{name}.sha256").write_text(f"{digest}  {name}\n")
        planted = {**record, "head_sha256": digest}  # the whole record rewritten, its own sha256 too
        (run / "run.json").write_text(json.dumps({**planted, "record_sha256": record_digest(planted)}))

    from sklearn.preprocessing import FunctionTransformer

    plant(HEAD_FILE, skops.io.dumps(FunctionTransformer(func=os.system)))  # a crafted head that would run code
    with pytest.raises(PipelineError, match="holds types no head of bert-pipeline is made of"):
        load_run(run).model  # noqa: B018 - loaded on first use (predicting goes through head.onnx)
    buffer = io.BytesIO()
    joblib.dump({"model": fit_head("logreg", *blobs()), "label_names": []}, buffer)
    plant(LEGACY_HEAD_FILE, buffer.getvalue())
    assert load_run(run).model.predict(blobs()[0][:5]).shape == (5,)


@pytest.mark.parametrize("name", [name for name, head in HEADS.items() if head.onnx])
def test_every_head_its_entry_says_exports_converts_to_onnx(name):
    from pipeline.train.head_graph import head_graph

    X = np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32)
    assert head_graph(fit_head(name, X, np.arange(60) % 2), X) is not None
