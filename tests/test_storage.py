"""Object storage through the local engine, against a real S3-compatible server on 127.0.0.1 (moto, server mode):
data read from s3://, the cache written there and equal to a local one, training from it, and one-line errors."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from pipeline.cache import EmbeddingCache, load_embeddings
from pipeline.data import load_dataset, read_table
from pipeline.errors import PipelineError
from pipeline.storage import location
from pipeline.storage.filesystems import s3_filesystem
from pipeline.storage.lease import LEASE_FILE, Lease

from conftest import sentiment_rows, write_csv
from s3_server import KEY, SECRET, s3_server

BUCKET = "bucket"


@pytest.fixture(scope="module")
def server():
    with s3_server() as started:
        started.admin().create_dir(BUCKET)
        yield started


@pytest.fixture
def s3(server, monkeypatch, tmp_path, tiny_bert):
    """The AWS variables pointing at the server, a fresh prefix per test, and the working folder in tmp_path (so
    the default local cache folder, artifacts/embeddings, would appear there)."""
    for name, value in {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": "us-east-1",
                        "AWS_ENDPOINT_URL": server.url, "HF_HUB_OFFLINE": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    s3_filesystem.cache_clear()
    yield server
    s3_filesystem.cache_clear()


def upload(server, local: Path, key: str) -> str:
    with server.admin().open_output_stream(f"{BUCKET}/{key}") as out:
        out.write(local.read_bytes())
    return f"s3://{BUCKET}/{key}"


@pytest.fixture
def data(s3, tmp_path):
    """The same toy table locally and on the server."""
    (tmp_path / "input").mkdir()
    local = write_csv(tmp_path / "input" / "toy.csv", sentiment_rows(90))
    return local, upload(s3, local, f"{tmp_path.name}/data/toy.csv")


def embed_args(model: Path, data: str, out: str) -> list[str]:
    return ["embed", "--data", data, "--model", str(model), "--out", out, "--pooling", "mean,cls",
            "--shard-rows", "40", "--max-length", "16", "--no-progress"]


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
    from pipeline.embed import stage as embed_module

    _, remote_data = data
    root = f"s3://{BUCKET}/{tmp_path.name}/cache"
    original = embed_module._write_shard

    def dying(store, index, *args):
        if index == 1:
            raise KeyboardInterrupt
        original(store, index, *args)

    monkeypatch.setattr(embed_module, "_write_shard", dying)
    assert run_cli(*embed_args(tiny_bert, remote_data, root))[0] == 130
    left = [name.rsplit("/", 1)[-1] for name in s3.objects(BUCKET) if f"{tmp_path.name}/cache/" in name]
    assert sorted(left) == ["_key.json", "shard-00000.parquet"]  # no manifest, no lease, no temporary object
    monkeypatch.setattr(embed_module, "_write_shard", original)
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


def test_train_refuses_to_write_runs_to_object_storage(run_cli, data, tiny_bert, tmp_path):
    code, _, err = run_cli("train", "--cache", f"s3://{BUCKET}/x", "--out", f"s3://{BUCKET}/runs",
                           "--model", str(tiny_bert), "--no-progress")
    assert code == 2 and err.count("\n") == 1 and "--out of train (the runs folder) cannot be on object" in err


def test_embed_stops_in_one_line_while_another_run_holds_the_cache(run_cli, data, tiny_bert, tmp_path):
    _, remote_data = data
    root = f"s3://{BUCKET}/{tmp_path.name}/cache"
    cache = location(run_cli(*embed_args(tiny_bert, remote_data, root))[1].strip().splitlines()[-1].split()[-1])
    before = EmbeddingCache(cache).manifest()
    with Lease.take(cache) as held:
        err, _ = one_line_error(run_cli, *embed_args(tiny_bert, remote_data, root), "--pooling", "max")
    assert f"another run ({held.holder}) is writing {cache}" in err
    assert EmbeddingCache(cache).manifest() == before  # untouched: no shard rewritten, the manifest kept


def test_a_live_lease_of_another_writer_refuses_and_an_expired_one_is_taken_over(s3, tmp_path):
    folder = location(f"s3://{BUCKET}/{tmp_path.name}/locked")
    with Lease.take(folder) as held:
        with pytest.raises(PipelineError, match="another run .* is writing"):
            Lease.take(folder)
        assert json.loads((folder / LEASE_FILE).read_bytes())["holder"] == held.holder
    assert not (folder / LEASE_FILE).exists()  # released
    (folder / LEASE_FILE).write_bytes(json.dumps({"holder": "dead-host:1:x", "expires": time.time() - 1}).encode())
    with Lease.take(folder) as taken:
        assert json.loads((folder / LEASE_FILE).read_bytes())["holder"] == taken.holder


def test_the_lease_of_a_run_killed_on_this_machine_is_taken_over(s3, tmp_path):
    folder = location(f"s3://{BUCKET}/{tmp_path.name}/killed")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    holder = f"{socket.gethostname()}:{gone.stdout.strip()}:x"
    (folder / LEASE_FILE).write_bytes(json.dumps({"holder": holder, "expires": time.time() + 600}).encode())
    with Lease.take(folder) as taken:
        assert taken.holder != holder
    live = f"{socket.gethostname()}:{os.getpid()}:y"
    (folder / LEASE_FILE).write_bytes(json.dumps({"holder": live, "expires": time.time() + 600}).encode())
    with pytest.raises(PipelineError, match=live):
        Lease.take(folder)


def test_a_writer_that_lost_its_lease_does_not_publish_the_manifest(s3, tmp_path):
    folder = location(f"s3://{BUCKET}/{tmp_path.name}/lost")
    store = EmbeddingCache(folder)
    with store.acquire():
        (folder / LEASE_FILE).write_bytes(json.dumps({"holder": "other:2:y", "expires": time.time() + 60}).encode())
        with pytest.raises(PipelineError, match="other:2:y"):
            store.write_manifest(None)
    assert not store.manifest_path.exists()


def one_line_error(run_cli, *args) -> tuple[str, float]:
    started = time.perf_counter()
    code, _, err = run_cli(*args)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err, time.perf_counter() - started


def test_an_unreachable_endpoint_fails_fast_in_one_line(run_cli, data, tiny_bert, tmp_path, monkeypatch):
    local_data, remote_data = data
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed}")
    s3_filesystem.cache_clear()
    for source in (remote_data, str(local_data)):  # failing on the data, or on --out
        err, seconds = one_line_error(run_cli, *embed_args(tiny_bert, source, f"s3://{BUCKET}/c"))
        assert "cannot reach the object store" in err and f"127.0.0.1:{closed}" in err
        assert seconds < 15


def test_missing_credentials_are_one_line(run_cli, data, tiny_bert, monkeypatch):
    _, remote_data = data
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    s3_filesystem.cache_clear()
    err, _ = one_line_error(run_cli, *embed_args(tiny_bert, remote_data, f"s3://{BUCKET}/c"))
    assert "no S3 credentials" in err and "AWS_ACCESS_KEY_ID" in err


def test_a_bucket_that_does_not_exist_is_one_line(run_cli, data, tiny_bert, s3):
    _, remote_data = data
    err, _ = one_line_error(run_cli, *embed_args(tiny_bert, remote_data, "s3://no-such-bucket/cache"))
    assert "s3://no-such-bucket/cache" in err and "does not exist" in err
    assert s3.admin().get_file_info("no-such-bucket").type == pafs.FileType.NotFound  # not created on the way
    err, _ = one_line_error(run_cli, *embed_args(tiny_bert, "s3://no-such-bucket/toy.csv", f"s3://{BUCKET}/c"))
    assert "data file not found: s3://no-such-bucket/toy.csv" in err


def test_no_write_permission_is_one_line_and_writes_nothing(run_cli, data, tiny_bert, tmp_path, s3, monkeypatch):
    _, remote_data = data
    key, secret = s3.read_only_user(BUCKET)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    s3_filesystem.cache_clear()
    before = s3.objects(BUCKET)
    s3.require_auth(True)
    try:
        err, _ = one_line_error(run_cli, *embed_args(tiny_bert, remote_data, f"s3://{BUCKET}/{tmp_path.name}/ro"))
    finally:
        s3.require_auth(False)
    assert "is denied: these credentials may not write it" in err and f"s3://{BUCKET}/{tmp_path.name}/ro" in err
    assert s3.objects(BUCKET) == before


def test_rejected_credentials_are_one_line(run_cli, data, tiny_bert, s3, monkeypatch):
    _, remote_data = data
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    s3_filesystem.cache_clear()
    s3.require_auth(True)
    try:
        err, _ = one_line_error(run_cli, *embed_args(tiny_bert, remote_data, f"s3://{BUCKET}/c"))
    finally:
        s3.require_auth(False)
    assert "denied" in err and "the key or secret is wrong" in err and "AWS_SECRET_ACCESS_KEY" in err


def test_the_ray_engine_refuses_an_object_store_cache_for_now(run_cli, data, tiny_bert, s3):
    _, remote_data = data
    err, _ = one_line_error(run_cli, *embed_args(tiny_bert, remote_data, f"s3://{BUCKET}/ray"), "--engine", "ray")
    assert "--out of --engine ray cannot be on object storage yet" in err
    assert not [name for name in s3.objects(BUCKET) if "/ray/" in name]


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
