"""Window aggregations as pooling names (mean@head_tail): cached beside the poolings from the same forward passes,
ranked by `make bench` (embed --pooling all,windows), trained on and predicted with like any pooling; for data whose
every text fits they change nothing, so only the plain pooling is cached."""

import json

import numpy as np
import pytest

from pipeline.cache import load_embeddings
from pipeline.data import load_dataset
from pipeline.embed.aggregate import AGGREGATIONS, parse_pooling_names
from pipeline.embed.encoder import load_encoder
from pipeline.embed.pooling import POOLINGS
from pipeline.embed.settings import EncoderOptions
from pipeline.embed.stage import embed_aggregations, embed_dataset
from pipeline.errors import PipelineError

from conftest import sentiment_rows, write_csv

FOLDED = ["mean@mean", "mean@max", "mean@first", "mean@head_tail"]


def long_rows(n: int) -> list[tuple[str, str]]:
    words = "the movie was very long and the plot is a story of an actor".split()
    return [(" ".join(words[(i + j) % len(words)] for j in range(60)) + (" good fun" if i % 2 else " bad dull"),
             ["negative", "positive"][i % 2]) for i in range(n)]


def test_names_parse_with_their_aggregation():
    assert parse_pooling_names("all,windows") == [*POOLINGS, *FOLDED]
    assert parse_pooling_names("mean@head_tail,cls") == ["cls", "mean@head_tail"]
    for bad in ("mean@median", "nope@max", "layers@max"):
        with pytest.raises(PipelineError, match="aggregation|pooling"):
            parse_pooling_names(bad)


def test_each_aggregation_is_cached_from_the_same_passes(tiny_bert, tmp_path):
    ds = load_dataset(write_csv(tmp_path / "long.csv", long_rows(20)))
    encoder = load_encoder(str(tiny_bert), EncoderOptions(32, "cpu", "fp32", runtime="torch"))
    result = embed_dataset(ds, encoder, parse_pooling_names("mean,windows"), tmp_path / "e", progress=False)
    assert list(result.manifest.poolings) == ["mean", *FOLDED]
    assert "head_tail" not in result.manifest.poolings["mean"].description
    assert "first and the last window" in result.manifest.poolings["mean@head_tail"].description
    expected = embed_aggregations(encoder, ds.texts, "mean", list(AGGREGATIONS))
    for name in ["mean", *FOLDED]:
        cached = load_embeddings(result.path, name)
        row = {text_id: i for i, text_id in enumerate(ds.ids)}
        order = [row[text_id] for text_id in cached.ids]
        aggregation = name.partition("@")[2] or "token_mean"
        np.testing.assert_allclose(cached.X, expected[aggregation][order], rtol=0, atol=1e-5)


def test_short_data_caches_only_the_plain_pooling(tiny_bert, tmp_path):
    ds = load_dataset(write_csv(tmp_path / "toy.csv", sentiment_rows(20)))
    encoder = load_encoder(str(tiny_bert), EncoderOptions(32, "cpu", "fp32", runtime="torch"))
    result = embed_dataset(ds, encoder, parse_pooling_names("mean,windows"), tmp_path / "e", progress=False)
    assert list(result.manifest.poolings) == ["mean"]


def test_make_bench_ranks_the_aggregations_and_a_run_predicts_with_one(run_cli, tiny_bert, tmp_path, monkeypatch):
    from pipeline.predict import load_classifier

    monkeypatch.chdir(tmp_path)
    data = write_csv(tmp_path / "long.csv", long_rows(40))
    common = ["--data", data, "--model", tiny_bert, "--no-progress"]
    assert run_cli("embed", *common, "--pooling", "mean,windows", "--max-length", "32")[0] == 0
    code, out, err = run_cli("bench", "heads", "--data", data, "--model", tiny_bert, "--head", "logreg")
    assert code == 0, err
    ranked = {line.split(" | ")[1] for line in out.splitlines() if line.endswith(("|", "(tie) |", "—  |")) and
              " | logreg | " in line}
    assert {"mean", *FOLDED} <= ranked, out
    assert run_cli("train", *common, "--pooling", "mean@head_tail", "--head", "logreg")[0] == 0
    run = next(p for p in (tmp_path / "artifacts" / "runs").rglob("run.json")
               if json.loads(p.read_text())["pooling"] == "mean@head_tail").parent
    clf = load_classifier(run)
    cached = load_embeddings(next((tmp_path / "artifacts" / "embeddings").glob("long__*")), "mean@head_tail")
    ds = load_dataset(data)
    text = dict(zip(ds.ids, ds.texts, strict=True))[cached.ids[0]]
    np.testing.assert_allclose(clf.embed([text])[0], cached.X[0], rtol=0, atol=1e-5)
