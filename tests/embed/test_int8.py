"""--dtype int8 on the tiny model: a seeded, train-only calibration sample, a graph keyed by its calibration, the guard
that refuses bent vectors and writes nothing, and an int8 cache that resumes, predicts as it embedded and does not
export."""

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nncf")
pytest.importorskip("openvino")

from pipeline.cache import load_embeddings  # noqa: E402
from pipeline.embed import calibration  # noqa: E402
from pipeline.embed.runtimes import int8, pick_runtime  # noqa: E402
from pipeline.errors import PipelineError  # noqa: E402

from conftest import sentiment_rows, write_csv  # noqa: E402

INT8 = ("--dtype", "int8", "--device", "cpu", "--pooling", "mean", "--shard-rows", "100", "--no-progress")


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory, tiny_bert):
    """One int8 embed (the mean pooling, which the tiny model keeps close) and one trained run, made once."""
    folder = tmp_path_factory.mktemp("int8")
    write_csv(folder / "toy.csv", sentiment_rows(300))
    return folder


def _cli(run_cli, monkeypatch, folder: Path, *args: str) -> tuple[int, str, str]:
    monkeypatch.chdir(folder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder / "xdg"))
    return run_cli(*args)


def _embedded(run_cli, monkeypatch, folder: Path, tiny_bert: Path) -> Path:
    code, out, err = _cli(run_cli, monkeypatch, folder, "embed", "--data", "toy.csv", "--model", tiny_bert, *INT8)
    assert code == 0, err
    return folder / out.split("cache: ")[1].strip()


def test_calibration_sample_is_seeded_train_only_and_disjoint_from_the_guards():
    splits = np.array(["train", "test", "dev"] * 40)
    calibrate, held_out = calibration.samples(splits, 300, seed=0)
    assert set(splits[calibrate]) == {"train"} and set(splits[held_out]) == {"train"}
    assert not set(calibrate) & set(held_out)
    assert len(calibrate) == 20 and len(held_out) == 20  # at most half of the 40 train rows calibrate
    again, _ = calibration.samples(splits, 300, seed=0)
    other, _ = calibration.samples(splits, 300, seed=1)
    assert list(again) == list(calibrate) and list(other) != list(calibrate)
    with pytest.raises(PipelineError, match="train rows"):
        calibration.samples(np.array(["test"] * 10), 300, seed=0)


def test_graph_key_changes_with_the_calibration_data():
    ids = [[2, 10, 11, 3], [2, 12, 3]]
    assert int8._key("fp32key", ids, 128) == int8._key("fp32key", [list(i) for i in ids], 128)
    assert int8._key("fp32key", ids, 128) != int8._key("fp32key", [[2, 10, 13, 3], [2, 12, 3]], 128)
    assert int8._key("fp32key", ids, 128) != int8._key("other", ids, 128)


def test_auto_never_picks_int8_and_only_the_int8_runtime_runs_it():
    assert pick_runtime("auto", "cpu", "int8") == "openvino-int8"
    assert pick_runtime("auto", "cpu", "fp32") != "openvino-int8"
    with pytest.raises(PipelineError, match="--runtime torch"):
        pick_runtime("torch", "cpu", "int8")


def test_guard_refuses_a_bent_quantization_and_writes_nothing(int8_run, tiny_bert, run_cli, monkeypatch):
    """The tiny random model's pooler bends in int8 (cosine ~0.98); calibrated on 2 texts, the guard refuses it."""
    code, out, err = _cli(run_cli, monkeypatch, int8_run, "embed", "--data", "toy.csv", "--model", tiny_bert,
                          "--dtype", "int8", "--pooling", "mean,pooler", "--calibration-size", "2", "--no-progress",
                          "--out", "bent")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "nothing was written" in err and "1st percentile" in err and "calibrated on 2" in err
    assert not (int8_run / "bent").exists() or not any((int8_run / "bent").rglob("*.parquet"))


def test_int8_cache_resumes_with_the_same_graph(int8_run, tiny_bert, run_cli, monkeypatch):
    cache = _embedded(run_cli, monkeypatch, int8_run, tiny_bert)
    manifest = json.loads((cache / "_manifest.json").read_text())
    assert manifest["encoder"]["dtype"] == "int8" and manifest["encoder"]["int8_graph"]
    assert manifest["int8"]["p1"] >= 0.99 and manifest["int8"]["texts"] == manifest["int8"]["calibration_texts"]
    before = load_embeddings(cache, "mean").X
    (cache / "shard-00001.parquet").unlink()
    code, out, _ = _cli(run_cli, monkeypatch, int8_run, "embed", "--data", "toy.csv", "--model", tiny_bert, *INT8)
    assert code == 0 and "100 computed, 200 reused" in out and "guard: int8 cosine" in out
    assert np.array_equal(load_embeddings(cache, "mean").X, before)


def test_predict_equals_embed_and_export_refuses(int8_run, tiny_bert, run_cli, monkeypatch):
    import pipeline

    cache = _embedded(run_cli, monkeypatch, int8_run, tiny_bert)
    code, _, err = _cli(run_cli, monkeypatch, int8_run, "train", "--data", "toy.csv", "--model", tiny_bert,
                        "--pooling", "mean", "--head", "logreg", "--no-progress")
    assert code == 0, err
    run = next(int8_run.glob("artifacts/runs/*/mean/logreg"))
    assert "int8 cosine to fp32" in (run / "report.md").read_text()
    clf = pipeline.load_classifier(run)
    stored = load_embeddings(cache, "mean")
    texts = [line.split(",")[0] for line in (int8_run / "toy.csv").read_text().splitlines()[1:40]]
    from pipeline.embed.stage import embed_texts

    again = embed_texts(clf.encoder, texts, ["mean"])["mean"]
    rows = [list(stored.texts).index(t) for t in texts]
    assert np.array_equal(again, stored.X[rows])
    code, _, err = _cli(run_cli, monkeypatch, int8_run, "export", "--run", run, "--out", int8_run / "x.onnx")
    assert code == 2 and "int8" in err and "serve" in err and not (int8_run / "x.onnx").exists()


def test_the_encoder_config_carries_the_graph_to_ray_actors(tiny_bert):
    """Ray actors rebuild the driver's EncoderConfig from JSON: the calibrated graph's key must survive the trip."""
    from dataclasses import replace

    from pipeline.embed.settings import EncoderConfig, EncoderOptions

    config = EncoderOptions(device="cpu", dtype="int8").resolve(str(tiny_bert))
    config = replace(config, calibration=replace(config.calibration, graph="abc123"))
    back = EncoderConfig.from_json(json.loads(json.dumps(config.to_json())))
    assert back == config and back.settings().int8_graph == "abc123"
    assert EncoderOptions(device="cpu", dtype="fp32").resolve(str(tiny_bert)).calibration is None
