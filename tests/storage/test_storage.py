"""Object storage through the local engine, against a real S3-compatible server on 127.0.0.1 (moto, server mode):
data read from s3://, the cache written there and equal to a local one, resumed there, trained and predicted from."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cache import EmbeddingCache, load_embeddings
from pipeline.data import load_dataset, read_table
from pipeline.errors import PipelineError
from pipeline.storage import location
from pipeline.storage.lease import LEASE_FILE

from support import s3_server
from support.s3_server import BUCKET, embed_args, one_line_error, upload

server, s3, data = s3_server.server, s3_server.s3, s3_server.data


def test_embed_to_s3_writes_the_same_cache_as_local_and_nothing_local(run_cli, data, tiny_bert, tmp_path, s3):
    local_data, remote_data = data
    remote_root = f"s3://{BUCKET}/{tmp_path.name}/cache"
    code, out, err = run_cli(*embed_args(tiny_bert, remote_data, remote_root))
    assert code == 0, err
    assert not (tmp_path / "artifacts").exists()  # the default local cache root was never touched
    remote_cache = out.strip().splitlines()[-1].removeprefix("cache: ")
    assert remote_cache.startswith(remote_root + "/")
    assert run_cli(*embed_args(tiny_bert, str(local_data), str(tmp_path / "local")))[0] == 0
    [local_cache] = [p for p in (tmp_path / "local").iterdir() if p.is_dir()]

    remote_manifest, local_manifest = EmbeddingCache(remote_cache).manifest(), EmbeddingCache(local_cache).manifest()
    assert remote_manifest.key == local_manifest.key and remote_manifest.name == local_manifest.name
    assert [s.sha256 for s in remote_manifest.shards] == [s.sha256 for s in local_manifest.shards]
    assert len(remote_manifest.shards) == 3
    for pooling in ("mean", "cls"):
        np.testing.assert_array_equal(load_embeddings(remote_cache, pooling).X, load_embeddings(local_cache, pooling).X)
    names = s3.objects(BUCKET)
    assert not [n for n in names if n.endswith(".tmp") or LEASE_FILE in n or "write-probe" in n]


def test_a_second_embed_on_s3_reuses_every_shard(run_cli, data, tiny_bert, tmp_path):
    _, remote_data = data
    root = f"s3://{BUCKET}/{tmp_path.name}/cache"
    assert run_cli(*embed_args(tiny_bert, remote_data, root))[0] == 0
    code, out, err = run_cli(*embed_args(tiny_bert, remote_data, root))
    assert code == 0, err
    assert "(0 computed, 90 reused)" in out


def test_an_interrupted_embed_to_s3_resumes_from_its_published_shards(run_cli, data, tiny_bert, tmp_path, s3,
                                                                      monkeypatch):
    from pipeline.embed import shards as embed_module

    _, remote_data = data
    root = f"s3://{BUCKET}/{tmp_path.name}/cache"
    original = embed_module.write_shard

    def dying(store, index, *args):
        if index == 1:
            raise KeyboardInterrupt
        original(store, index, *args)

    monkeypatch.setattr(embed_module, "write_shard", dying)
    assert run_cli(*embed_args(tiny_bert, remote_data, root))[0] == 130
    left = [name.rsplit("/", 1)[-1] for name in s3.objects(BUCKET) if f"{tmp_path.name}/cache/" in name]
    assert sorted(left) == ["_key.json", "shard-00000.parquet"]  # no manifest, no lease, no temporary object
    monkeypatch.setattr(embed_module, "write_shard", original)
    code, out, err = run_cli(*embed_args(tiny_bert, remote_data, root))
    assert code == 0, err
    assert "(50 computed, 40 reused)" in out


def test_train_from_an_s3_cache_gives_the_local_metrics(run_cli, data, tiny_bert, tmp_path):
    local_data, remote_data = data
    root = f"s3://{BUCKET}/{tmp_path.name}/cache"
    remote_cache = run_cli(*embed_args(tiny_bert, remote_data, root))[1].strip().splitlines()[-1].split()[-1]
    assert run_cli(*embed_args(tiny_bert, str(local_data), str(tmp_path / "local")))[0] == 0
    [local_cache] = [p for p in (tmp_path / "local").iterdir() if p.is_dir()]
    common = ["--model", str(tiny_bert), "--pooling", "mean", "--no-progress"]
    assert run_cli("train", "--cache", str(local_cache), "--out", "runs-local", *common)[0] == 0
    code, _, err = run_cli("train", "--cache", remote_cache, "--out", "runs-cache", *common)
    assert code == 0, err
    # --embeddings: the cache is found on the server by its data and model, as it is found in a local folder
    code, _, err = run_cli("train", "--data", remote_data, "--embeddings", root, "--out", "runs-found", *common)
    assert code == 0, err
    local = json.loads(next(Path("runs-local").rglob("metrics.json")).read_text())["metrics"]
    for runs in ("runs-cache", "runs-found"):
        assert json.loads(next(Path(runs).rglob("metrics.json")).read_text())["metrics"] == local
    assert local["accuracy"] > 0


def test_predict_reads_and_writes_object_storage_like_local_files(run_cli, data, tiny_bert, tmp_path, s3):
    local_data, remote_data = data
    assert run_cli(*embed_args(tiny_bert, str(local_data), "local"))[0] == 0
    [cache] = [p for p in Path("local").iterdir() if p.is_dir()]
    assert run_cli("train", "--cache", str(cache), "--out", "runs", "--model", str(tiny_bert), "--no-progress")[0] == 0
    [run] = Path("runs").glob("*/mean/logreg")
    prefix = f"s3://{BUCKET}/{tmp_path.name}"
    code, out, err = run_cli("predict", "--run", str(run), "--input", remote_data, "--output", f"{prefix}/out.csv",
                             "--embeddings", f"{prefix}/emb", "--no-progress")
    assert code == 0, err
    assert f"wrote 90 predictions to {prefix}/out.csv" in out
    assert run_cli("predict", "--run", str(run), "--input", str(local_data), "--output", "out.csv",
                   "--embeddings", "emb", "--no-progress")[0] == 0
    assert location(f"{prefix}/out.csv").read_bytes() == Path("out.csv").read_bytes()
    assert not Path("artifacts").exists()
    err, _ = one_line_error(run_cli, "predict", "--run", str(run), "--input", remote_data, "--label-col", "label",
                            "--output", f"{prefix}/scored.csv", "--embeddings", f"{prefix}/emb", "--no-progress")
    assert "--output of a labelled predict (its report is written beside it) cannot be on object storage" in err
    local = tmp_path / "typed.parquet"
    pq.write_table(pa.table({"text": ["good fun", "awful plot"], "n": pa.array([1, 2], pa.uint8())}), local)
    typed = upload(s3, local, f"{tmp_path.name}/typed.parquet")
    code, _, err = run_cli("predict", "--run", str(run), "--input", typed, "--output", f"{prefix}/typed.jsonl",
                           "--embeddings", f"{prefix}/emb", "--no-progress")
    assert code == 0, err  # the suffix picks the format, on object storage too
    assert json.loads(location(f"{prefix}/typed.jsonl").read_text().splitlines()[0])["n"] == 1
    assert run_cli("predict", "--run", str(run), "--input", typed, "--output", f"{prefix}/typed-out.parquet",
                   "--embeddings", f"{prefix}/emb", "--no-progress")[0] == 0
    written = pq.read_table(pa.BufferReader(location(f"{prefix}/typed-out.parquet").read_bytes()))
    assert written.schema.field("n").type == pa.uint8()  # a Parquet input's own types, read from the bucket
    err, _ = one_line_error(run_cli, "predict", "--run", str(run), "--input", typed, "--output", typed,
                            "--embeddings", f"{prefix}/emb", "--no-progress")
    assert "is the input file" in err


def test_plain_paths_and_file_uris_stay_local_paths_and_odd_uris_are_one_line(tmp_path):
    assert location("artifacts/embeddings") == Path("artifacts/embeddings")
    assert location(f"file://{tmp_path}/cache") == tmp_path / "cache"
    with pytest.raises(PipelineError, match="unknown storage scheme in ftp://host/x"):
        location("ftp://host/x")
    with pytest.raises(PipelineError, match="names no bucket"):
        location("s3:///key")


def test_embed_to_a_file_uri_is_the_local_embed(run_cli, data, tiny_bert, tmp_path):
    local_data, _ = data
    code, out, err = run_cli(*embed_args(tiny_bert, f"file://{local_data}", f"file://{tmp_path}/viauri"))
    assert code == 0, err
    assert f"cache: {tmp_path}/viauri/toy__" in out


def test_a_parquet_file_on_s3_reads_as_the_local_file_and_its_errors_name_the_uri(s3, tmp_path):
    local = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"text": ["good fun", "awful plot"], "label": [1, 0]}), local)
    assert read_table(location(upload(s3, local, f"{tmp_path.name}/rows.parquet"))) == read_table(local)
    pq.write_table(pa.table({"text": [1, 2], "label": [1, 0]}), local)
    uri = upload(s3, local, f"{tmp_path.name}/numbers.parquet")
    with pytest.raises(PipelineError, match=f"text column 'text' of {uri} holds Arrow type int64"):
        load_dataset(location(uri))
