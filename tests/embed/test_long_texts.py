"""Long texts through the product: embed says how it read them and keys the cache on it, predict reads them as its
run did and says so, export refuses a windowed run, and every runtime and engine gives the same windowed vectors."""

import random
from pathlib import Path

import numpy as np
import pytest

from pipeline.cache import load_embeddings
from pipeline.data import load_dataset
from pipeline.embed.aggregate import AGGREGATIONS
from pipeline.embed.encoder import load_encoder
from pipeline.embed.settings import EncoderOptions
from pipeline.embed.stage import embed_dataset, embed_texts
from pipeline.embed.windows import Reading

from conftest import sentiment_rows, train_once, write_csv

FILLER = "the movie was very long and the plot is a story of an actor".split()


def long_review(label: str, seed: int) -> str:
    """About 200 neutral words, the verdict only at the end: a cut at 32 tokens never reads it."""
    rng = random.Random(seed)
    verdict = "good great fun witty" if label == "positive" else "bad awful dull boring"
    return " ".join(rng.choice(FILLER) for _ in range(200)) + f" but in the end it was {verdict}"


def long_rows(n: int) -> list[tuple[str, str]]:
    return [(long_review(label, i), label) for i, label in enumerate(["positive", "negative"] * (n // 2))]


@pytest.fixture
def long_csv(tmp_path) -> Path:
    return write_csv(tmp_path / "long.csv", long_rows(40))


def cache_of(out: str) -> Path:
    return Path(out.strip().splitlines()[-1].removeprefix("cache: "))


def test_truncate_warns_naming_the_option_and_keys_differ_only_for_long_data(run_cli, tiny_bert, long_csv, toy_csv,
                                                                              tmp_path):
    args = ["--model", tiny_bert, "--pooling", "mean", "--max-length", "32", "--out", tmp_path / "e", "--no-progress"]
    code, window_out, err = run_cli("embed", "--data", long_csv, *args)
    assert code == 0 and "warning" not in err
    assert "40 of 40 texts over 32 tokens" in window_out and "read whole in" in window_out
    code, cut_out, err = run_cli("embed", "--data", long_csv, *args, "--long-texts", "truncate")
    assert code == 0 and "cut at 32" in cut_out
    assert err.strip() == ("warning: 100% of the texts (40 of 40) were cut at 32 tokens and their ends never read: "
                           "--long-texts window reads them whole")
    assert cache_of(window_out) != cache_of(cut_out)
    short = {cache_of(run_cli("embed", "--data", toy_csv, *args, "--long-texts", mode)[1]) for mode in MODES}
    assert len(short) == 1, "short texts: one cache whichever mode"


MODES = ("window", "truncate")


def test_windows_read_the_end_that_a_cut_never_sees(tiny_bert, long_csv, tmp_path):
    """Two reviews with the same 200 words of filler and opposite verdicts at the end: cut at 32 tokens they are one
    vector, read in windows they are two. The manifest records the mode."""
    twins = [long_review("positive", 7), long_review("negative", 7)]
    for mode, same in (("truncate", True), ("window", False)):
        encoder = load_encoder(str(tiny_bert), EncoderOptions(32, "cpu", "fp32", long_texts=mode))
        mean = embed_texts(encoder, twins, ["mean"])["mean"]
        assert np.array_equal(mean[0], mean[1]) == same
        result = embed_dataset(load_dataset(long_csv), encoder, ["mean"], tmp_path / mode, progress=False)
        assert result.manifest.long_texts.mode == mode and result.manifest.long_texts.over == 40
        assert load_embeddings(result.path, "mean").X.shape == (40, 32)


def test_the_openvino_runtime_folds_windows_like_torch(tiny_bert):
    pytest.importorskip("openvino")
    texts = [long_review("positive", 1), "fine", long_review("negative", 2)]
    got = {runtime: embed_texts(load_encoder(str(tiny_bert), EncoderOptions(32, "cpu", "fp32", runtime=runtime)),
                                texts, ["mean", "max", "cls"])
           for runtime in ("torch", "openvino")}
    for name in ("mean", "max", "cls"):
        np.testing.assert_allclose(got["openvino"][name], got["torch"][name], atol=1e-4)


def test_the_ray_engine_writes_the_local_engines_windowed_cache(tiny_bert, long_csv, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'bert-pipeline[distributed]'")
    from pipeline.embed.ray_engine import ray_session, run_actors

    ds = load_dataset(long_csv)
    encoder = load_encoder(str(tiny_bert), EncoderOptions(32, "cpu", "fp32", runtime="torch"))
    local = embed_dataset(ds, encoder, ["mean"], tmp_path / "local", shard_rows=20, progress=False)
    ray.init(num_cpus=2, object_store_memory=100 * 1024 * 1024, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    try:
        with ray_session(tmp_path / "ray"):
            distributed = embed_dataset(ds, encoder, ["mean"], tmp_path / "ray", shard_rows=20, progress=False,
                                        runner=run_actors)
    finally:
        ray.shutdown()
    assert distributed.path.name == local.path.name
    np.testing.assert_allclose(load_embeddings(distributed.path, "mean").X, load_embeddings(local.path, "mean").X,
                               atol=1e-6)


@pytest.fixture
def short_run(tmp_path, run_cli, monkeypatch, tiny_bert) -> Path:
    """A run trained on short sentences only, in a workspace."""
    write_csv(tmp_path / "short.csv", sentiment_rows(80))
    train_once(tmp_path, run_cli, monkeypatch, tiny_bert, "short.csv", ("--pooling", "mean", "--max-length", "32"))
    return next(Path("artifacts/runs").glob("*/mean/logreg"))


def test_a_run_of_short_texts_reads_long_ones_in_windows_and_says_so(short_run, run_cli, tmp_path):
    from pipeline.predict import load_classifier

    clf = load_classifier(short_run, "cpu")
    assert clf.reading == Reading() and "long texts: window" in repr(clf)
    texts = [long_review("positive", 3), "great fun"]
    assert clf.describe_reading(texts).startswith("1 of 2 texts over 32 tokens")
    code, out, err = run_cli("predict", "--run", short_run, "--text", texts[0], "--text", texts[1])
    assert code == 0 and len(out.strip().splitlines()) == 2
    assert err.startswith("read: 1 of 2 texts over 32 tokens") and "read whole in" in err
    write_csv(tmp_path / "in.csv", [(t, "positive") for t in texts])
    code, out, err = run_cli("predict", "--run", short_run, "--input", "in.csv", "--output", "out.csv",
                             "--no-progress")
    assert code == 0 and "read: 1 of 2 texts over 32 tokens" in err


def test_export_refuses_a_windowed_run_in_one_line_that_says_how_to_serve_it(tmp_path, run_cli, monkeypatch,
                                                                              tiny_bert):
    write_csv(tmp_path / "long.csv", long_rows(40))
    train_once(tmp_path, run_cli, monkeypatch, tiny_bert, "long.csv", ("--pooling", "mean", "--max-length", "32"))
    run = next(Path("artifacts/runs").glob("*/mean/logreg"))
    code, out, err = run_cli("export", "--run", run, "--out", "model.onnx")
    assert code == 2 and not Path("model.onnx").exists()
    assert err.strip() == (f"error: this run read its texts over 32 tokens in windows, which one ONNX graph cannot: "
                           f"serve it with the Python API (pipeline.load_classifier('{run}').predict(texts)), or "
                           "embed with --long-texts truncate and train again to export")


def test_a_run_made_with_truncate_on_long_texts_predicts_with_truncate(tmp_path, run_cli, monkeypatch, tiny_bert):
    from pipeline.predict import load_classifier

    write_csv(tmp_path / "long.csv", long_rows(40))
    train_once(tmp_path, run_cli, monkeypatch, tiny_bert, "long.csv",
               ("--pooling", "mean", "--max-length", "32", "--long-texts", "truncate"))
    clf = load_classifier(next(Path("artifacts/runs").glob("*/mean/logreg")), "cpu")
    assert clf.reading.mode == "truncate"
    assert clf.describe_reading([long_review("negative", 5)]).endswith(": cut at 32")


def test_bench_long_texts_ranks_each_reading_with_its_cost(run_cli, tiny_bert, tmp_path):
    write_csv(tmp_path / "long.csv", long_rows(60))
    code, out, err = run_cli("bench", "long-texts", "--data", tmp_path / "long.csv", "--model", tiny_bert,
                             "--head", "mlp", "--device", "cpu", "--out", tmp_path / "bench")  # mlp: no CV search
    assert code == 0, err
    table = [line for line in out.splitlines() if line.startswith("| ") and "accuracy" not in line]
    readings = [line.split(" | ")[0].lstrip("| ") for line in table]
    assert readings == ["cut at 128 tokens", *[f"windows of 128, {a}" for a in AGGREGATIONS]]
    assert "60 of 60 texts over 128 tokens" in out
    assert (tmp_path / "bench" / "long-texts" / "long" / "long_texts.json").exists()


def test_the_long_text_benchmark_is_fetched_once_as_a_csv(tmp_path):
    import csv

    from pipeline.data.long_docs import fetch_bbc_news
    from pipeline.errors import PipelineError

    try:
        path = fetch_bbc_news(tmp_path)
    except PipelineError as exc:
        pytest.skip(str(exc))
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    assert len(rows) == 2225 and sorted({r["label"] for r in rows}) == ["business", "entertainment", "politics",
                                                                         "sports", "tech"]
    assert np.median([len(r["text"].split()) for r in rows]) > 300
    assert fetch_bbc_news(tmp_path) == path and [p.name for p in tmp_path.iterdir()] == [path.name]
