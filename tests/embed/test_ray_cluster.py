"""The embed stage on a real two-node Ray cluster (ray.cluster_utils.Cluster on 127.0.0.1, 1 CPU per node) with the
data and the cache on a real S3-compatible server (moto, server mode): the cache equals the local engine's, both
nodes wrote shards, nothing lands in the local cache folder, an actor killed mid-run changes nothing, predict reads
its input from the server and writes its output there as the local engine does, and a cluster without the CPUs for
one actor is refused in one line, and so is bad storage input on the Ray side (an unreachable endpoint, no
credentials, a bucket that does not exist, no write permission), each by the console script joined to the cluster:
exit 2, one line, nothing written."""

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cache import EmbeddingCache, load_embeddings
from pipeline.storage import location

from conftest import sentiment_rows, write_csv
from support import s3_server
from support.s3_server import BUCKET, embed_args, upload

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'bert-pipeline[distributed]'")
pytestmark = pytest.mark.cluster
server, s3 = s3_server.server, s3_server.s3
NODE = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "object_store_memory": 80 * 1024**2}
CURRENT = Path("/tmp/ray/ray_current_cluster")  # where a plain ray.init() looks for a cluster to join


@pytest.fixture(scope="module")
def cluster():
    """Head and one worker, 1 CPU each; this process is the driver. Shut down whole, so that the next Ray test's
    ray.init(num_cpus=...) starts its own Ray instead of joining this one."""
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    # Ray turns a 127.0.0.1 address into this machine's outward IP, where nothing of this cluster listens: keep the
    # driver on the loopback, as the nodes are
    loopback, ray_constants.ENABLE_RAY_CLUSTER = ray_constants.ENABLE_RAY_CLUSTER, False
    started = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    started.add_node(**NODE)
    started.wait_for_nodes()
    ray.init(address=started.address, log_to_driver=False, logging_level="ERROR")
    try:
        yield started
    finally:
        ray.shutdown()
        started.shutdown()
        ray_constants.ENABLE_RAY_CLUSTER = loopback
        if CURRENT.exists() and CURRENT.read_text().strip() == started.address:
            CURRENT.unlink()


@pytest.fixture
def files(s3, tmp_path, cluster):
    """300 rows locally and on the server, and where their caches go."""
    (tmp_path / "input").mkdir()
    local = write_csv(tmp_path / "input" / "rows.csv", sentiment_rows(300))
    return local, upload(s3, local, f"{tmp_path.name}/data/rows.csv"), f"s3://{BUCKET}/{tmp_path.name}/cache"


def args(model, data, out, *more):
    return ["embed", "--data", data, "--model", str(model), "--out", out, "--pooling", "mean,cls", "--max-length",
            "16", "--dtype", "fp32", "--no-progress", *more]


def local_cache(run_cli, tiny_bert, data: Path, shard_rows: str) -> Path:
    assert run_cli(*args(tiny_bert, str(data), "local", "--shard-rows", shard_rows))[0] == 0
    [cache] = [p for p in Path("local").iterdir() if p.is_dir()]
    return cache


def assert_same_cache(remote: str, local: Path) -> None:
    ray_manifest, local_manifest = EmbeddingCache(remote).manifest(), EmbeddingCache(local).manifest()
    assert ray_manifest.key == local_manifest.key and ray_manifest.name == local_manifest.name
    assert ray_manifest.data == local_manifest.data and ray_manifest.rows == local_manifest.rows
    for pooling in ("mean", "cls"):
        a, b = load_embeddings(remote, pooling), load_embeddings(local, pooling)
        assert a.ids.tolist() == b.ids.tolist() and (a.y == b.y).all() and (a.splits == b.splits).all()
        np.testing.assert_array_equal(a.X, b.X)


def test_two_nodes_write_the_local_engines_cache_to_s3(run_cli, files, tiny_bert, tmp_path, s3):
    local, remote_data, root = files
    code, out, err = run_cli(*args(tiny_bert, remote_data, root, "--engine", "ray", "--ray-actors", "2",
                                   "--shard-rows", "50"))
    assert code == 0, err
    assert "by 2 actors on 2 nodes" in out
    assert not (tmp_path / "artifacts").exists()  # the default local cache root was never touched
    remote = out.strip().splitlines()[-1].removeprefix("cache: ")
    assert remote.startswith(root + "/")
    assert len({shard.node for shard in EmbeddingCache(remote).manifest().shards}) == 2, "both nodes wrote shards"
    assert_same_cache(remote, local_cache(run_cli, tiny_bert, local, "50"))
    assert not [name for name in s3.objects(BUCKET) if name.endswith(".tmp")]


def test_an_actor_killed_mid_run_still_gives_the_whole_equal_cache(run_cli, files, tiny_bert, tmp_path, s3):
    local, remote_data, root = files
    killed = []
    threading.Thread(target=kill_an_actor_after_a_shard, args=(s3, f"{tmp_path.name}/cache/", killed),
                     daemon=True).start()
    code, out, err = run_cli(*args(tiny_bert, remote_data, root, "--engine", "ray", "--ray-actors", "2",
                                   "--shard-rows", "5"))
    assert code == 0, err
    assert killed and killed[0] < 60, f"no actor was killed mid-run: {killed}"
    remote = out.strip().splitlines()[-1].removeprefix("cache: ")
    assert len(EmbeddingCache(remote).manifest().shards) == 60
    assert_same_cache(remote, local_cache(run_cli, tiny_bert, local, "5"))


def kill_an_actor_after_a_shard(s3, prefix: str, killed: list, timeout: float = 120) -> None:
    """Once a shard is on the server, SIGKILL one embed actor (a process this test started); record how many shards
    were written by then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shards = [n for n in s3.objects(BUCKET) if prefix in n and n.endswith(".parquet")]
        actors = [p for p in psutil.Process().children(recursive=True) if "ShardEmbedder" in " ".join(_cmdline(p))]
        if shards and actors:
            actors[0].kill()
            killed.append(len(shards))
            return
        time.sleep(0.05)


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def test_a_cluster_without_the_cpus_for_one_actor_is_one_line(run_cli, files, tiny_bert):
    _, remote_data, root = files
    code, _, err = run_cli(*args(tiny_bert, remote_data, root, "--engine", "ray", "--ray-cpus-per-actor", "2"))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "no node of the Ray cluster has 2 CPU(s) for one actor (largest node: 1 CPUs)" in err


def test_predict_reads_s3_and_writes_s3_on_the_cluster_like_the_local_engine(run_cli, files, tiny_bert, tmp_path, s3):
    local, remote_data, root = files
    cache = local_cache(run_cli, tiny_bert, local, "50")
    assert run_cli("train", "--cache", str(cache), "--out", "runs", "--model", str(tiny_bert), "--no-progress")[0] == 0
    [run] = Path("runs").glob("*/mean/logreg")
    prefix = f"s3://{BUCKET}/{tmp_path.name}"
    predict = ["predict", "--run", str(run), "--shard-rows", "50", "--no-progress"]
    for suffix in (".csv", ".parquet"):
        code, out, err = run_cli(*predict, "--input", remote_data, "--output", f"{prefix}/scored{suffix}",
                                 "--embeddings", f"{prefix}/emb", "--engine", "ray")
        assert code == 0, err
        assert f"wrote 300 predictions to {prefix}/scored{suffix}" in out
        code, _, err = run_cli(*predict, "--input", str(local), "--output", f"scored{suffix}", "--embeddings",
                               "emb-local")
        assert code == 0, err
        remote = location(f"{prefix}/scored{suffix}").read_bytes()
        if suffix == ".csv":
            assert remote == Path(f"scored{suffix}").read_bytes(), "the local engine's output, byte for byte"
        else:
            assert pq.read_table(pa.BufferReader(remote)).equals(pq.read_table(f"scored{suffix}"))
    assert not Path("artifacts").exists(), "nothing in the default local cache folder"
    assert [n for n in s3.objects(BUCKET) if f"{tmp_path.name}/emb/" in n and n.endswith("_manifest.json")]
    assert not [name for name in s3.objects(BUCKET) if name.endswith(".tmp")]


def console(cluster, *args: str, **env: str) -> str:
    """`bert-pipeline ...` in its own process, joined to the cluster (RAY_ADDRESS) with this process's storage
    settings changed by `env` (a None value unsets one); asserts a one-line refusal and returns it."""
    given = {**os.environ, "RAY_ADDRESS": cluster.address, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **env}
    done = subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in given.items() if v is not None})
    assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr and not done.stdout
    return done.stderr


@pytest.fixture
def ray_embed(files, tiny_bert, s3, tmp_path):
    """The arguments of an `embed --engine ray` of the server's data into a new prefix; checks after the test that
    nothing was written: no object under the prefix, no local cache folder."""
    _, remote_data, root = files
    before = [n for n in s3.objects(BUCKET) if f"{tmp_path.name}/cache" in n]
    yield lambda data=remote_data, out=root: [*embed_args(tiny_bert, data, out), "--engine", "ray"]
    assert [n for n in s3.objects(BUCKET) if f"{tmp_path.name}/cache" in n] == before
    assert not Path("artifacts").exists()


def test_ray_side_storage_refusals_are_one_line_and_write_nothing(cluster, ray_embed, s3):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    err = console(cluster, *ray_embed(), AWS_ENDPOINT_URL=f"http://127.0.0.1:{closed}")
    assert "cannot reach the object store" in err and f"127.0.0.1:{closed}" in err
    err = console(cluster, *ray_embed(), AWS_ACCESS_KEY_ID=None, AWS_SECRET_ACCESS_KEY=None, AWS_PROFILE=None)
    assert "no S3 credentials" in err
    err = console(cluster, *ray_embed(out="s3://no-such-bucket/cache"))
    assert "the bucket of s3://no-such-bucket/cache does not exist" in err
    err = console(cluster, *ray_embed(data="s3://no-such-bucket/rows.csv"))
    assert "data file not found: s3://no-such-bucket/rows.csv" in err
    key, secret = s3.read_only_user(BUCKET)
    s3.require_auth(True)
    try:
        err = console(cluster, *ray_embed(), AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret)
    finally:
        s3.require_auth(False)
    assert "is denied: these credentials may not write it" in err
