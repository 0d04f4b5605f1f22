"""The speed bench's parts that need no timing to check: the profile accounts for the whole wall time, and the
command reads a texts-only file."""

import pytest

from pipeline.bench.profile import STEPS, profile_embed
from pipeline.data import load_dataset
from pipeline.embed.encoder import Encoder
from pipeline.embed.models import resolve_model

from conftest import sentiment_rows, write_csv


def test_profile_shares_cover_the_wall_time_by_step(tiny_bert, tmp_path):
    ds = load_dataset(write_csv(tmp_path / "t.csv", sentiment_rows(200)))
    encoder = Encoder(resolve_model(str(tiny_bert)), "cpu", "fp32", 32)
    profile = profile_embed(ds, encoder, ["mean", "last4_mean"])
    shares = profile["shares"]
    assert set(STEPS) < set(shares) and all(0 <= v <= 1 for v in shares.values())
    assert sum(shares.values()) == pytest.approx(1.0, abs=0.02)
    assert shares["forward (model)"] > 0 and shares["Parquet write"] > 0


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
