"""The speed bench's parts that need no timing to check: the profile accounts for the whole wall time, and the
command reads a texts-only file."""

import pytest

from pipeline.bench.profile import profile_embed
from pipeline.data import load_dataset
from pipeline.embed.encoder import load_encoder
from pipeline.embed.runtimes import openvino_graph
from pipeline.embed.settings import EncoderOptions
from pipeline.embed.sources import resolve_model

from conftest import sentiment_rows, write_csv


@pytest.mark.parametrize("runtime", ["torch", "openvino"])
def test_profile_times_every_step_of_the_stage(tiny_bert, tmp_path, runtime):
    ds = load_dataset(write_csv(tmp_path / "t.csv", sentiment_rows(200)))
    encoder = load_encoder(str(tiny_bert), EncoderOptions(max_length=32, device="cpu", dtype="fp32", runtime=runtime))
    profile = profile_embed(ds, encoder, ["mean", "last4_mean"])
    seconds = profile["step_seconds"]
    steps = ["tokenise", openvino_graph.STEP] if runtime == "openvino" else [
        "tokenise", "pad + copy to device", "forward (model)", "pooling", "copy to host (fp32 numpy)"]
    assert list(seconds) == [*steps, "Parquet write", "sha256 of the shards"]
    assert all(s > 0 for s in seconds.values()) and profile["wall_seconds"] > 0
    if runtime == "torch":
        assert seconds["forward (model)"] > seconds["pad + copy to device"]


def test_bench_speed_needs_no_label_column(tmp_path, run_cli):
    from pipeline.data import ColumnSpec, DataSpec, load_texts

    path = write_csv(tmp_path / "texts.csv", [(t,) for t, _ in sentiment_rows(10)], ("body",))
    ds = load_texts(DataSpec(str(path), ColumnSpec(text="body")))
    assert len(ds) == 10 and ds.label_names == ["unlabelled"]
    code, _, err = run_cli("bench", "speed", "--data", path, "--text-col", "nope")
    assert code == 2 and "no text column 'nope'" in err and "label" not in err


def test_scaling_runs_embed_and_predict_in_fresh_processes(tiny_bert, tmp_path, run_cli):
    from pipeline.bench.scaling import embed_command, predict_command, scaling_benchmark

    ds = load_dataset(write_csv(tmp_path / "t.csv", sentiment_rows(60)))
    rows = scaling_benchmark(ds, [20, 60], embed_command(str(tiny_bert), ["--dtype", "fp32"]), log=lambda _: None)
    assert [r["texts"] for r in rows] == [20, 60] and all(r["peak_rss_mb"] > 0 for r in rows)
    data = write_csv(tmp_path / "train.csv", sentiment_rows(60))
    common = ["--data", data, "--model", tiny_bert, "--no-progress"]
    assert run_cli("embed", *common, "--pooling", "mean", "--out", tmp_path / "emb")[0] == 0
    assert run_cli("train", *common, "--embeddings", tmp_path / "emb", "--out", tmp_path / "runs")[0] == 0
    run = next((tmp_path / "runs").glob("*/mean/logreg"))
    rows = scaling_benchmark(ds, [30], predict_command(run), log=lambda _: None)
    assert rows[0]["texts"] == 30 and rows[0]["seconds"] > 0


def test_a_random_encoder_of_a_named_shape_loads_in_both_stacks(tiny_bert, tmp_path):
    """bench speed --shape: the folder is a complete model that our stage and sentence-transformers read alike."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from pipeline.bench.shapes import random_model
    from pipeline.embed.stage import embed_texts

    folder = random_model(tiny_bert, "minilm-l6", tmp_path / "minilm-l6-random")
    encoder = load_encoder(str(folder), EncoderOptions(device="cpu", dtype="fp32"))
    assert (encoder.num_layers, encoder.hidden_size, encoder.ref.name) == (6, 384, "minilm-l6-random")
    texts = ["a good film", "a dull, bad film"]
    ours = embed_texts(encoder, texts, ["mean"])["mean"]
    theirs = SentenceTransformer(str(folder), device="cpu").encode(texts)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    again = random_model(tiny_bert, "minilm-l6", tmp_path / "again")
    assert resolve_model(str(again)).identity.weights_sha256 == encoder.ref.identity.weights_sha256, "seeded"


def test_onnx_runtime_peer_gives_the_stage_vectors_in_fp32(tiny_bert):
    import numpy as np

    from pipeline.bench.onnx_peer import ort_candidates
    from pipeline.embed.stage import embed_texts

    encoder = load_encoder(str(tiny_bert), EncoderOptions(device="cpu", dtype="fp32"))
    texts = ["a good film", "a dull, bad and very slow film", "fine"]
    want = embed_texts(encoder, texts, ["mean"])["mean"]
    peers = ort_candidates(encoder)
    assert set(peers) == {"ort_fp32", "ort_int8_dynamic"}
    np.testing.assert_allclose(peers["ort_fp32"](texts), want, atol=1e-4)
    assert peers["ort_int8_dynamic"](texts).shape == want.shape
