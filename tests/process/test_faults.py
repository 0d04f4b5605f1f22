"""Faults survived: kill -9 at several points, damaged shards and manifests, two writers, a full disk, stale keys.

Kills run the real CLI in a child process that SIGKILLs itself at a chosen point (no hooks in the product code);
the rerun must give a complete cache, every id once, the same vectors as an uninterrupted run, and recompute at most
the unfinished shard.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.cache import load_embeddings
from pipeline.errors import PipelineError
from pipeline.paths import safe_name

from conftest import sentiment_rows, write_csv

KILLER = """
import os, signal, sys
from pipeline import cache
from pipeline.embed import encoder
from pipeline.embed.runtimes import openvino_graph
target, when = sys.argv.pop(1), int(sys.argv.pop(1))
calls = {"n": 0}
def after(owner, name, kill_before=False, half_write=False):
    original = getattr(owner, name)
    def patched(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == when and kill_before:
            if half_write:  # leave a half-written temp file behind, as a kill during a write would
                (self.path / ".manifest.tmp").write_text('{"half": ')
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, *args, **kwargs)
    setattr(owner, name, patched)
if target == "shard":
    after(cache.EmbeddingCache, "write_shard", kill_before=True)
elif target == "batch":  # padding a batch: the step before its forward pass, on either runtime
    for module in (encoder, openvino_graph):
        original = module.pad_ids
        def pad_ids(*args, original=original):
            calls["n"] += 1
            if calls["n"] == when:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args)
        module.pad_ids = pad_ids
elif target == "manifest":
    after(cache.EmbeddingCache, "write_manifest", kill_before=True, half_write=True)
from pipeline.cli import main
main()
"""
SHARD_ROWS = 40


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("faults") / "toy.csv", sentiment_rows(200))


def embed_cmd(data: Path, out: Path, model: Path) -> list[str]:
    return ["embed", "--data", str(data), "--model", str(model), "--pooling", "mean,cls", "--shard-rows",
            str(SHARD_ROWS), "--batch-tokens", "64", "--out", str(out), "--no-progress", "--dtype", "fp32"]


def run(args: list[str], killer: tuple[str, int] | None = None) -> subprocess.CompletedProcess:
    prefix = [sys.executable, "-c", KILLER, *map(str, killer)] if killer else [sys.executable, "-m", "pipeline"]
    return subprocess.run(prefix + args, capture_output=True, text=True, cwd=Path(__file__).parents[2])


@pytest.fixture(scope="module")
def reference(data, tiny_bert, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    assert run(embed_cmd(data, out, tiny_bert)).returncode == 0
    return next(p for p in out.iterdir() if p.is_dir())


def only_cache(out: Path) -> Path:
    [path] = [p for p in out.iterdir() if p.is_dir()]
    return path


@pytest.mark.parametrize("point, killer, finished_before", [
    ("after the first shard", ("shard", 2), 1),
    ("mid-shard (a few batches in)", ("batch", 20), None),
    ("while the manifest is written", ("manifest", 1), 5),
])
def test_kill_9_then_rerun_gives_the_uninterrupted_cache(point, killer, finished_before, data, tiny_bert, tmp_path,
                                                         reference):
    """`point` names the parametrised case in the report."""
    killed = run(embed_cmd(data, tmp_path, tiny_bert), killer)
    assert killed.returncode == -9, killed.stderr
    path = only_cache(tmp_path)
    assert not (path / "_manifest.json").exists()
    shards_left = len(list(path.glob("shard-*.parquet")))
    assert shards_left == finished_before if finished_before is not None else 0 < shards_left < 5
    rerun = run(embed_cmd(data, tmp_path, tiny_bert))
    assert rerun.returncode == 0, rerun.stderr
    manifest = json.loads((path / "_manifest.json").read_text())
    assert manifest["last_run"]["computed_shards"] == list(range(shards_left, 5)), "only unfinished shards rerun"
    for pooling in ("mean", "cls"):
        got, want = load_embeddings(path, pooling), load_embeddings(reference, pooling)
        assert sorted(got.ids.tolist(), key=int) == [str(i) for i in range(200)]
        np.testing.assert_array_equal(got.X, want.X)


def damage(path: Path, how: str) -> None:
    shard = path / "shard-00002.parquet"
    raw = bytearray(shard.read_bytes())
    if how == "truncated":
        shard.write_bytes(raw[: len(raw) // 2])
    elif how == "bytes flipped":
        middle = len(raw) // 2
        raw[middle: middle + 64] = bytes(b ^ 0xFF for b in raw[middle: middle + 64])
        shard.write_bytes(raw)
    elif how == "wrong row count":
        import pyarrow.parquet as pq

        pq.write_table(pq.read_table(shard).slice(0, 10), shard)
    elif how == "manifest mismatch":
        manifest = json.loads((path / "_manifest.json").read_text())
        manifest["shards"][2]["rows"] += 1
        (path / "_manifest.json").write_text(json.dumps(manifest))


def embed_in_process(data: Path, out: Path, model: Path):
    from pipeline.data import load_dataset
    from pipeline.embed.encoder import load_encoder
    from pipeline.embed.settings import EncoderOptions
    from pipeline.embed.stage import embed_dataset

    encoder = load_encoder(str(model), EncoderOptions(device="cpu", dtype="fp32", batch_tokens=64))
    return embed_dataset(load_dataset(data), encoder, ["mean", "cls"], out, SHARD_ROWS, progress=False)


@pytest.mark.parametrize("how", ["truncated", "bytes flipped", "wrong row count", "manifest mismatch"])
def test_damaged_cache_is_refused_on_load_and_repaired_by_embed(how, data, tiny_bert, tmp_path, reference, run_cli):
    path = embed_in_process(data, tmp_path, tiny_bert).path
    damage(path, how)
    with pytest.raises(PipelineError, match="run the same `bert-pipeline embed` command again|repair"):
        load_embeddings(path, "mean")
    code, _, err = run_cli("train", "--cache", path, "--out", tmp_path / "runs", "--no-progress")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    repaired = embed_in_process(data, tmp_path, tiny_bert)
    assert repaired.computed_shards == ([] if how == "manifest mismatch" else [2])
    np.testing.assert_array_equal(load_embeddings(path, "mean").X, load_embeddings(reference, "mean").X)


def test_a_second_embed_on_the_same_cache_stops_with_a_message(data, tiny_bert, tmp_path, run_cli):
    from filelock import FileLock

    path = embed_in_process(data, tmp_path, tiny_bert).path
    with FileLock(str(path.parent / f".{path.name}.lock")):
        code, _, err = run_cli(*embed_cmd(data, tmp_path, tiny_bert))
    assert code == 2 and "another run is writing" in err


@pytest.mark.parametrize("error", ["ENOSPC", "EROFS"])
def test_disk_full_or_read_only_mid_run_keeps_earlier_shards(error, data, tiny_bert, tmp_path, monkeypatch, reference):
    import errno

    from pipeline import cache as cache_module

    original, calls = cache_module.EmbeddingCache.write_shard, []

    def failing(self, index, table):
        calls.append(index)
        if len(calls) == 3:
            raise OSError(getattr(errno, error), "simulated")
        original(self, index, table)

    monkeypatch.setattr(cache_module.EmbeddingCache, "write_shard", failing)
    with pytest.raises(PipelineError, match="cannot write the cache.*finished shards are kept"):
        embed_in_process(data, tmp_path, tiny_bert)
    monkeypatch.setattr(cache_module.EmbeddingCache, "write_shard", original)
    result = embed_in_process(data, tmp_path, tiny_bert)
    assert result.computed_shards == [2, 3, 4]
    np.testing.assert_array_equal(load_embeddings(result.path, "mean").X, load_embeddings(reference, "mean").X)


def test_changed_data_never_reuses_an_old_cache(data, tiny_bert, tmp_path, run_cli):
    embed_in_process(data, tmp_path / "emb", tiny_bert)
    rows = sentiment_rows(200)
    rows[7] = ("a different text", rows[7][1])
    changed = write_csv(tmp_path / "toy.csv", rows)
    code, _, err = run_cli("train", "--data", changed, "--model", tiny_bert, "--embeddings", tmp_path / "emb",
                           "--out", tmp_path / "runs", "--no-progress")
    assert code == 2 and "no cache for data 'toy'" in err


@pytest.mark.parametrize("name", ["../../etc/passwd", "/abs/path", "a/../../b", "..", "we!rd\nname"])
def test_names_from_data_and_models_cannot_escape_the_output_root(name, tmp_path):
    from pipeline.cache import cache_dir

    path = cache_dir(tmp_path, name, name, "0" * 64)
    assert path.parent == tmp_path and "/" not in safe_name(name) and ".." not in safe_name(name)
