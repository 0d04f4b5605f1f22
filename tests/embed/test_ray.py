"""The Ray engine writes the local engine's cache: same ids, labels and vectors (fp32 on CPU), same resume."""

import numpy as np
import pytest

from pipeline.cache import load_embeddings
from pipeline.data import load_dataset
from pipeline.embed.encoder import load_encoder
from pipeline.embed.settings import EncoderOptions
from pipeline.embed.stage import embed_dataset

from conftest import sentiment_rows, write_csv

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'bert-pipeline[distributed]'")


@pytest.fixture(scope="session")
def local_ray():
    ray.init(num_cpus=2, object_store_memory=100 * 1024 * 1024, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def setup(tiny_bert, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ray")
    ds = load_dataset(write_csv(tmp / "toy.csv", sentiment_rows(300)))
    encoder = load_encoder(str(tiny_bert), EncoderOptions(max_length=32, device="cpu", dtype="fp32"))
    return ds, encoder, tmp


def embed_with_ray(ds, encoder, poolings, out, **options):
    """The embed stage with its unfinished shards computed by Ray actors (the `--engine ray` path)."""
    from pipeline.embed.ray_engine import ray_session, run_actors

    with ray_session(out):
        return embed_dataset(ds, encoder, poolings, out, runner=run_actors, **options)


def test_ray_cache_equals_the_local_cache(local_ray, setup):
    ds, encoder, tmp = setup
    local = embed_dataset(ds, encoder, ["mean", "cls"], tmp / "local", shard_rows=100, progress=False)
    distributed = embed_with_ray(ds, encoder, ["mean", "cls"], tmp / "ray", shard_rows=100, progress=False)
    assert distributed.path.name == local.path.name, "same key, same folder name"
    for pooling in ("mean", "cls"):
        a, b = load_embeddings(local.path, pooling), load_embeddings(distributed.path, pooling)
        assert a.ids.tolist() == b.ids.tolist() == ds.ids
        assert (a.y == b.y).all()
        np.testing.assert_allclose(a.X, b.X, atol=1e-5)


def test_ray_resume_recomputes_only_the_missing_shard(local_ray, setup):
    ds, encoder, tmp = setup
    first = embed_with_ray(ds, encoder, ["mean"], tmp / "resume", shard_rows=100, progress=False)
    before = load_embeddings(first.path, "mean").X
    (first.path / "shard-00001.parquet").unlink()
    again = embed_with_ray(ds, encoder, ["mean"], tmp / "resume", shard_rows=100, progress=False)
    assert again.computed_shards == [1]
    np.testing.assert_array_equal(load_embeddings(again.path, "mean").X, before)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_ray_tasks_read_files_into_the_local_rows(local_ray, tiny_bert, tmp_path, fmt):
    """Labelled (embed) and without labels (predict's input: data.unlabelled's rows), the rows the read tasks make
    are the local reader's: texts, labels, splits and the fingerprint that keys the cache."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.data import ColumnSpec, unlabelled
    from pipeline.embed.ray_rows import cluster_rows, texts_of

    rows = sentiment_rows(50) + [('quoted, "with" comma', "positive")]
    path = tmp_path / f"d.{fmt}"
    if fmt == "csv":
        write_csv(path, rows)
    elif fmt == "tsv":
        path.write_text("text\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in rows))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows))
    else:
        pq.write_table(pa.table({"text": [t for t, _ in rows], "label": [lab for _, lab in rows]}), path)
    local = load_dataset(path)
    for cols, want in ((ColumnSpec(), local), (ColumnSpec(label=""), unlabelled(local.name, local.texts))):
        got, lengths = cluster_rows(path, cols, 0.2, 0, str(tiny_bert), {})
        texts = texts_of(got.blocks, ray.get([b.ref for b in got.blocks]), "text", 0, len(got))
        assert texts == want.texts and got.fingerprint == want.fingerprint and len(lengths) == len(want)
        assert (got.labels == want.labels).all() and (got.splits == want.splits).all()
        assert got.label_names == want.label_names and got.split_origin == want.split_origin


def test_cli_ray_engine_end_to_end(local_ray, tiny_bert, tmp_path, run_cli):
    data = write_csv(tmp_path / "toy.csv", sentiment_rows(80))
    code, out, err = run_cli("embed", "--data", data, "--model", tiny_bert, "--engine", "ray", "--pooling", "mean",
                             "--out", tmp_path / "emb", "--no-progress")
    assert code == 0, err
    assert "embedded 80 rows (80 computed" in out
