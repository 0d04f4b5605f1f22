"""The learning curve: its draws are seeded, stratified and never touch dev or test rows; a small curve runs end
to end on the tiny BERT, its frozen logreg point at k = all is `train`'s figure, and a rerun skips finished points."""

import csv

import numpy as np
import pytest

from pipeline.bench import curve as curve_module
from pipeline.bench.curve import ALL, CurvePlan, capped, draw, learning_curve, parse_ks
from pipeline.bench.curve_report import summarise, winners
from pipeline.data import ColumnSpec, DataSpec
from pipeline.embed.settings import EncoderOptions
from pipeline.embed.stage import embed
from pipeline.errors import PipelineError
from pipeline.finetune.settings import FinetuneSettings
from pipeline.train.stage import train_cache

from conftest import sentiment_rows, write_csv


def test_draws_are_seeded_stratified_and_only_from_train():
    labels = np.array([0, 1, 2] * 40)
    splits = np.array((["train"] * 3 + ["dev", "test"]) * 24, dtype=object)
    a, b, other = draw(labels, splits, 5, seed=3), draw(labels, splits, 5, seed=3), draw(labels, splits, 5, seed=4)
    assert (a == b).all() and not np.array_equal(a, other), "seeded: same seed same rows, another seed others"
    assert np.bincount(labels[a]).tolist() == [5, 5, 5], "stratified: k rows of every class"
    assert set(splits[a]) == {"train"} and len(set(a)) == len(a), "only train rows, no row twice"
    assert set(draw(labels, splits, ALL, 0)) == set(np.flatnonzero(splits == "train"))
    with pytest.raises(PipelineError, match="--shots 100 is more than the smallest class has in train"):
        draw(labels, splits, 100, 0)


def test_ks_parse_and_are_capped_by_the_data():
    assert parse_ks("64, 8,all,16") == [8, 16, 64, ALL]
    assert capped([8, 16, 64, ALL], 20) == [8, 16, ALL]
    for bad in ("8,x", "0", ","):
        with pytest.raises(PipelineError, match="give e.g."):
            parse_ks(bad)


def test_the_sentence_names_the_winner_by_k():
    points = [{"method": m, "k": k, "accuracy": a} for m, k, a in [
        ("frozen logreg", "8", 0.7), ("setfit", "8", 0.8), ("frozen logreg", "64", 0.8), ("setfit", "64", 0.78),
        ("full", "64", 0.82), ("frozen logreg", ALL, 0.84), ("full", ALL, 0.9)]]
    sentence = winners(summarise(points))
    assert "setfit at k = 8; full at k = 64–all" in sentence
    assert "full beats the best frozen head from k = 64 on" in sentence
    assert "setfit beats the best frozen head only at k = 8 (measured at k = 8, 64)" in sentence


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rows = [(t, lab, ["train", "train", "train", "dev", "test"][i % 5])
            for i, (t, lab) in enumerate(sentiment_rows(100))]
    path = write_csv(tmp_path_factory.mktemp("curve") / "toy.csv", rows, ("text", "label", "split"))
    return DataSpec(str(path), ColumnSpec(split="split"))


def test_a_small_curve_end_to_end_and_its_k_all_logreg_point_is_train_s(data, tiny_bert, tmp_path, monkeypatch):
    cache = embed(data, str(tiny_bert), ["mean"], tmp_path / "emb", EncoderOptions(max_length=32, dtype="fp32"),
                  progress=False).path
    tuned = FinetuneSettings(lr=1e-3, epochs=1, max_length=32, dtype="fp32")
    plan = CurvePlan(ks=[4, 8, ALL], seeds=2, heads=["logreg", "knn"], setfit_ks=[4], full_ks=[8, ALL],
                     tuned_seeds=1, finetune=tuned, small_k_steps=3)
    out = tmp_path / "bench"
    points = learning_curve(data, str(tiny_bert), cache, "mean", plan, out, tmp_path / "models", tmp_path / "runs",
                            "cpu", progress=False)
    got = {(p["method"], p["k"], int(p["seed"])) for p in points}
    assert {("frozen logreg", "4", 0), ("frozen logreg", "4", 1), ("frozen knn", "8", 1), ("frozen logreg", ALL, 0),
            ("setfit", "4", 0), ("full", "8", 0), ("full", ALL, 0)} <= got
    assert all(0.0 <= float(p["accuracy"]) <= 1.0 for p in points)
    assert {"curve.csv", "curve.md", "curve.png"} <= {p.name for p in out.iterdir()}
    markdown = (out / "curve.md").read_text()
    assert "| frozen logreg |" in markdown and "Best method by k:" in markdown
    assert "beats the best frozen head" in markdown
    frozen_all = next(float(p["accuracy"]) for p in points if p["method"] == "frozen logreg" and p["k"] == ALL)
    rows = train_cache(cache, "mean", ["logreg"], tmp_path / "train-runs", data.seed, progress=False)
    assert frozen_all == pytest.approx(float(rows[0]["accuracy"]), abs=0)
    # a rerun of the same protocol measures nothing again
    monkeypatch.setattr(curve_module, "fit_one", lambda *a, **k: pytest.fail("a finished point was refitted"))
    monkeypatch.setattr("pipeline.finetune.stage.run_method", lambda *a, **k: pytest.fail("refit"))
    again = learning_curve(data, str(tiny_bert), cache, "mean", plan, out, tmp_path / "models", tmp_path / "runs",
                           "cpu", progress=False)
    assert len(again) == len(points)
    with (out / "curve.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == len(points)


def test_bad_ks_on_the_command_line_get_one_line(run_cli, tiny_bert, data, tmp_path):
    code, _, err = run_cli("bench", "curve", "--data", data.data, "--split-col", "split", "--model", tiny_bert,
                           "--ks", "8,lots", "--out", tmp_path / "bench", "--no-progress")
    assert code == 2 and err.startswith("error: k 'lots' in '8,lots' is not a positive whole number")
    assert len(err.strip().splitlines()) == 1
