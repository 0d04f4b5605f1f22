"""The SentEval-style protocol on small slices: fold counts, and selection never sees the reporting rows."""

import json

import numpy as np
import pytest

from pipeline.bench import senteval as evaluation
from pipeline.cache import Embeddings

from conftest import SHARED


def toy_embeddings(n=200, with_dev=False):
    rng = np.random.default_rng(0)
    y = np.arange(n) % 2
    X = np.c_[np.arange(n), rng.normal(size=(n, 4)) + y[:, None]].astype(np.float32)  # column 0: the row index
    splits = np.array(["train"] * n, dtype=object)
    if with_dev:
        splits[: n // 5], splits[n // 5: 2 * n // 5] = "test", "dev"
    return Embeddings(X, y, np.arange(n).astype(str).astype(object), splits, ["neg", "pos"])


@pytest.fixture
def seen_rows(monkeypatch):
    """Row indices of every matrix handed to fitting and hyperparameter selection."""
    from pipeline.train import heads

    seen = []
    original = heads._selection

    def recording(X_train, y_train, X_dev, y_dev, seed, folds):
        X, y, selection = original(X_train, y_train, X_dev, y_dev, seed, folds)
        seen.append(set(X[:, 0].astype(int)))
        return X, y, selection

    monkeypatch.setattr(heads, "_selection", recording)
    return seen


def test_cv_protocol_has_ten_folds_and_never_selects_on_the_reporting_fold(seen_rows):
    emb = toy_embeddings()
    folds = evaluation.cv_scores(emb, seed=0)
    assert len(folds) == 10 and sum(f["n"] for f in folds) == 200
    assert len(seen_rows) == 10
    for rows in seen_rows:
        assert len(rows) == 180, "each selection sees exactly the nine training folds"
    assert set().union(*[set(range(200)) - rows for rows in seen_rows]) == set(range(200))
    assert all(f["C"] is not None for f in folds)


def test_split_protocol_selects_on_train_and_dev_only(seen_rows):
    emb = toy_embeddings(with_dev=True)
    [score] = evaluation.split_scores(emb, seed=0)
    assert score["n"] == 40
    assert seen_rows == [set(range(40, 200))], "test rows (0..39) never reach selection"


def test_markdown_puts_published_figures_beside_ours():
    fold = {"accuracy": 0.8, "macro_recall": 0.79, "n": 10, "C": 0.1}
    pools = {p: evaluation.fold_summary([fold] * 10, 1.0) for p in ("cls", "mean", "max")}
    record = evaluation.EvalRecord({"name": "m"}, {}, 0, {"mr": {"protocol": "10-fold CV", "poolings": pools}}, {})
    table = evaluation.results_markdown(record)
    assert "| mr | 10-fold CV | 80.00 ± 0.00 | 80.00 ± 0.00 | 80.00 ± 0.00 (max) | 78.68 | 78.66 |" in table


@pytest.mark.skipif(not (SHARED / "trec").exists(), reason="../shared/data not present")
def test_eval_runs_end_to_end_on_a_small_task(tiny_bert, tmp_path):
    from pipeline.embed.encoder import load_encoder
    from pipeline.embed.settings import EncoderOptions

    encoder = load_encoder(str(tiny_bert), EncoderOptions(max_length=32, device="cpu", dtype="fp32"))
    record = evaluation.evaluate(SHARED, encoder, ["mean"], tmp_path / "emb", ["trec"], progress=False)
    trec = record.tasks["trec"]
    assert trec["classes"] == 6 and trec["rows"] == 5952
    assert len(trec["poolings"]["mean"]["folds"]) == 1 and trec["poolings"]["mean"]["folds"][0]["n"] == 500
    json_path, md_path = evaluation.write_results(tmp_path / "eval", record)
    assert json.loads(json_path.read_text())["model"]["weights_sha256"] == encoder.ref.identity.weights_sha256
    assert f"Model `{encoder.ref.identity.name}`" in md_path.read_text() and "| trec |" in md_path.read_text()


@pytest.mark.skipif(not (SHARED / "trec").exists(), reason="../shared/data not present")
def test_eval_keeps_each_task_s_scores_and_a_rerun_resumes_from_them(tiny_bert, tmp_path, monkeypatch):
    from pipeline.embed.encoder import load_encoder
    from pipeline.embed.settings import EncoderOptions

    encoder = load_encoder(str(tiny_bert), EncoderOptions(max_length=32, device="cpu", dtype="fp32"))
    run = lambda seed: evaluation.evaluate(SHARED, encoder, ["mean"], tmp_path / "emb", ["trec"], seed,  # noqa: E731
                                           progress=False, scores=tmp_path / "scores")
    first = run(0)
    assert json.loads((tmp_path / "scores" / "trec.json").read_text())["poolings"]["mean"]["folds"]
    fitted = []
    original = evaluation.split_scores
    monkeypatch.setattr(evaluation, "split_scores", lambda emb, seed: fitted.append(seed) or original(emb, seed))
    assert run(0).tasks == first.tasks and fitted == [], "same cache and seed: nothing is fitted again"
    run(1)
    assert fitted == [1], "another seed is scored afresh"
    monkeypatch.setattr(evaluation, "SCORES_PROTOCOL", evaluation.SCORES_PROTOCOL + 1)
    run(1)
    assert fitted == [1, 1], "scores kept under an older protocol are not reused"
