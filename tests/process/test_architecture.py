"""The house rules the code's layout promises: registries drive the CLI, typed seams check their schema, the train
stage never loads torch, and a rerun with nothing to compute reads each shard once."""

import ast
import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

import pipeline
from pipeline.bench.driver_memory import DriverMemoryRecord
from pipeline.bench.leaderboard import LeaderboardRecord
from pipeline.bench.long_texts import LongTextsRecord
from pipeline.bench.models import ModelsRecord
from pipeline.bench.senteval import EvalRecord
from pipeline.bench.serve_load import ServeRecord
from pipeline.bench.speed import SpeedRecord
from pipeline.cache import EmbeddingCache, Manifest, load_embeddings
from pipeline.data import load_dataset
from pipeline.embed.encoder import load_encoder
from pipeline.embed.pooling import DEFAULT_POOLINGS, POOLINGS, parse_poolings
from pipeline.embed.settings import EncoderOptions
from pipeline.embed.stage import embed_dataset
from pipeline.errors import PipelineError
from pipeline.finetune.record import FinetuneRecord
from pipeline.records import SCHEMA_KEY, JsonRecord
from pipeline.registry import parse_names, parse_sizes
from pipeline.train.heads import HEADS
from pipeline.train.metrics import Metrics
from pipeline.train.runs import RunRecord, load_run
from pipeline.train.stage import train_cache

from conftest import sentiment_rows, write_csv, write_tiny_bert

# Every typed JSON record: the cache's manifest, a run, a fine-tune, metrics, and each bench's result.
RECORDS = [Manifest, RunRecord, FinetuneRecord, Metrics, SpeedRecord, ServeRecord, LongTextsRecord, EvalRecord,
           ModelsRecord, LeaderboardRecord, DriverMemoryRecord]


@pytest.fixture(scope="module")
def encoder(tiny_bert):
    return load_encoder(str(tiny_bert), EncoderOptions(max_length=16, device="cpu", dtype="fp32"))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return load_dataset(write_csv(tmp_path_factory.mktemp("arch") / "toy.csv", sentiment_rows(80)))


def test_the_train_stage_and_the_cache_never_import_torch():
    code = "import sys, pipeline.train.stage, pipeline.cache, pipeline.data, pipeline; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize("name", list(POOLINGS))
def test_every_registered_pooling_embeds_to_its_declared_shape(name, encoder, toy, tmp_path):
    result = embed_dataset(toy, encoder, [name], tmp_path, progress=False)
    shape = POOLINGS[name].shape(encoder.num_layers, encoder.hidden_size)
    assert result.manifest.poolings[name].shape == shape
    column = f"layer{encoder.num_layers}" if POOLINGS[name].per_layer else name
    assert load_embeddings(result.path, column).X.shape == (len(toy), encoder.hidden_size)
    assert (name in DEFAULT_POOLINGS) == (not POOLINGS[name].per_layer)


def test_cli_help_and_defaults_come_from_the_registries(run_cli):
    code, out, _ = run_cli("embed", "--help")
    assert code == 0 and all(name in out for name in POOLINGS)
    assert ",".join(DEFAULT_POOLINGS) in out.replace("\n", "").replace(" ", "")
    code, out, _ = run_cli("bench", "heads", "--help")
    assert all(name in out for name in HEADS)


def test_every_help_that_lists_names_lists_its_registry(run_cli):
    from pipeline.data.benchmarks import TASKS
    from pipeline.embed.runtimes import RUNTIMES
    from pipeline.embed.sources import SOURCES
    from pipeline.embed.stage import ENGINES
    from pipeline.finetune.settings import METHODS
    from pipeline.train.heads import onnx_heads

    for command, names in [(["embed"], [*SOURCES, *RUNTIMES, *POOLINGS]), (["finetune"], [*METHODS, *POOLINGS]),
                           (["eval"], [*TASKS, *SOURCES]), (["bench", "long-texts"], [*POOLINGS, *HEADS]),
                           (["bench", "speed"], RUNTIMES), (["bench", "models"], [*SOURCES, *HEADS]),
                           (["predict"], ENGINES), (["export"], onnx_heads())]:
        code, out, _ = run_cli(*command, "--help")
        flat = "".join(out.split())  # click wraps long words at hyphens
        assert code == 0 and [name for name in names if name not in flat] == [], command


@pytest.mark.parametrize("spec, message", [(",", "no pooling given"), ("mean,,meen", "unknown pooling 'meen'"),
                                           ("", "no pooling given")])
def test_one_parser_refuses_empty_and_unknown_names(spec, message):
    with pytest.raises(PipelineError, match=message):
        parse_poolings(spec)


def test_names_keep_registry_order_and_sizes_must_be_whole_numbers():
    assert parse_names("b, a", ["a", "b", "c"], "x") == ["a", "b"]
    assert parse_names("all", ["a", "b"], "x") == ["a", "b"]
    assert parse_sizes("1000,4000") == [1000, 4000]
    with pytest.raises(PipelineError, match="size '4k' in '1000,4k' is not a positive whole number"):
        parse_sizes("1000,4k")


def test_manifest_round_trips_and_refuses_other_schemas_and_damage(encoder, toy, tmp_path):
    path = embed_dataset(toy, encoder, ["mean"], tmp_path, progress=False).path
    store = EmbeddingCache(path)
    record = json.loads(store.manifest_path.read_text())
    assert Manifest.from_json(record, path).to_json() == record
    cases = {"newer than this bert-pipeline reads": {**record, "schema": 2},
             "damaged or of an old format": {**record, "schema": 0},
             "damaged.*KeyError": {k: v for k, v in record.items() if k != "shards"},
             "not a plain folder name": {**record, "name": "../../.."}}
    for message, broken in cases.items():
        store.manifest_path.write_text(json.dumps(broken))
        with pytest.raises(PipelineError, match=message):
            train_cache(path, "mean", ["logreg"], tmp_path / "runs", progress=False)
    assert not (tmp_path / "runs").exists() and not (tmp_path.parent / "runs.csv").exists()
    again = embed_dataset(toy, encoder, ["mean"], tmp_path, progress=False)
    assert again.computed_rows == 0 and again.manifest.name == path.name, "a damaged manifest is rebuilt"


def test_a_truncated_key_file_is_rewritten_like_a_damaged_shard(encoder, toy, tmp_path):
    first = embed_dataset(toy, encoder, ["mean"], tmp_path, progress=False)
    key_file = first.path / "_key.json"
    key_file.write_text(key_file.read_text()[:10])
    again = embed_dataset(toy, encoder, ["mean"], tmp_path, progress=False)
    assert json.loads(key_file.read_text())["key"] == first.manifest.key
    np.testing.assert_array_equal(load_embeddings(again.path, "mean").X, load_embeddings(first.path, "mean").X)


def test_a_rerun_with_nothing_to_compute_hashes_each_shard_once_and_reads_none(encoder, toy, tmp_path, monkeypatch):
    from pipeline.cache import store as cache

    first = embed_dataset(toy, encoder, ["mean", "cls"], tmp_path, shard_rows=20, progress=False)
    hashed, read = [], []
    original = cache.file_sha256
    monkeypatch.setattr(cache, "file_sha256", lambda p: hashed.append(p.name) or original(p))
    monkeypatch.setattr(EmbeddingCache, "read_shard", lambda self, i: read.append(i))
    again = embed_dataset(toy, encoder, ["mean", "cls"], tmp_path, shard_rows=20, progress=False)
    assert again.computed_rows == 0 and sorted(hashed) == [s.file for s in first.manifest.shards] and read == []
    assert again.manifest.shards == first.manifest.shards and again.manifest.tokens == first.manifest.tokens


def test_a_fresh_run_hashes_each_shard_once_as_it_writes_it(encoder, toy, tmp_path, monkeypatch):
    from pipeline.cache import store as cache

    hashed = []
    original = cache.file_sha256
    monkeypatch.setattr(cache, "file_sha256", lambda p: hashed.append(p) or original(p))
    result = embed_dataset(toy, encoder, ["mean", "cls"], tmp_path, shard_rows=20, progress=False)
    assert len(hashed) == len(result.manifest.shards) > 1 and all(p.suffix == ".tmp" for p in hashed)
    for index, record in enumerate(result.manifest.shards):
        path = result.path / record.file
        assert (record.bytes, record.sha256) == (path.stat().st_size, original(path)) and index == int(path.stem[-5:])


def test_run_record_is_typed_and_checks_its_schema(encoder, toy, tmp_path):
    cache_path = embed_dataset(toy, encoder, ["mean"], tmp_path / "emb", progress=False).path
    train_cache(cache_path, "mean", ["logreg"], tmp_path / "runs", progress=False)
    folder = tmp_path / "runs" / cache_path.name / "mean" / "logreg"
    run = load_run(folder)
    assert run.record.encoder.model.weights_sha256 == encoder.ref.identity.weights_sha256
    record = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({**record, "schema": 99}))
    with pytest.raises(PipelineError, match="format version 99, newer"):
        load_run(folder)


def test_a_layers_only_cache_says_how_to_train_on_it(encoder, toy, tmp_path):
    path = embed_dataset(toy, encoder, ["layers"], tmp_path / "emb", progress=False).path
    with pytest.raises(PipelineError, match="only per-layer vectors.*--pooling layerK"):
        train_cache(path, "all", ["logreg"], tmp_path / "runs", progress=False)
    assert train_cache(path, "layer1", ["logreg"], tmp_path / "runs", progress=False)


def test_calibrated_heads_fall_back_or_are_skipped_when_a_class_is_rarer_than_the_folds(encoder, tmp_path):
    rows = sentiment_rows(40) + [("meh so so", "neutral"), ("meh fine", "neutral")]
    ds = load_dataset(write_csv(tmp_path / "rare.csv", [(t, lab, "test" if i % 5 == 0 and lab != "neutral" else
                                                         "train") for i, (t, lab) in enumerate(rows)],
                                ("text", "label", "split")), __import__("pipeline.data").data.ColumnSpec(split="split"))
    path = embed_dataset(ds, encoder, ["mean"], tmp_path / "emb", progress=False).path
    with pytest.raises(PipelineError, match="head linear-svm calibrates.*needs at least 2 rows"):
        train_cache(path, "mean", ["linear-svm"], tmp_path / "runs", progress=False)
    rows_done = train_cache(path, "mean", list(HEADS), tmp_path / "runs", progress=False)
    assert {r["head"] for r in rows_done} == {"logreg", "mlp", "knn"}


def test_caches_are_found_by_model_identity_not_folder_name(toy, tmp_path, run_cli):
    data = write_csv(tmp_path / "toy.csv", sentiment_rows(80))
    a, b = write_tiny_bert(tmp_path / "a" / "model", seed=1), write_tiny_bert(tmp_path / "b" / "model", seed=2)
    emb = tmp_path / "emb"
    assert run_cli("embed", "--data", data, "--model", a, "--out", emb, "--pooling", "mean", "--no-progress")[0] == 0
    code, _, err = run_cli("train", "--data", data, "--model", b, "--embeddings", emb, "--out", tmp_path / "runs",
                           "--no-progress")
    assert code == 2 and "no cache for data 'toy' and model 'model' (these weights)" in err


def test_the_public_api_names_resolve_lazily():
    import pipeline

    code = "import sys, pipeline; pipeline.train_cache; pipeline.DataSpec; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
    assert all(getattr(pipeline, name) is not None for name in pipeline.__all__)
    with pytest.raises(AttributeError):
        pipeline.no_such_name  # noqa: B018


def test_the_console_script_leaves_fast_with_main_s_exit_codes_and_whole_outputs(tiny_bert, tmp_path):
    """`run` skips the interpreter's final clean-up: the exit codes, the printed lines and the files written must be
    exactly those of `main`."""
    import subprocess
    import sys

    from conftest import sentiment_rows, write_csv

    def script(*args) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", "from pipeline.cli import run; run()", *map(str, args)],
                              capture_output=True, text=True, timeout=300)

    helped = script("--help")
    assert helped.returncode == 0 and "embed" in helped.stdout and helped.stdout.endswith("\n")
    full_disk = (  # stdout whose last flush fails, as on a full disk: the output is lost, so the exit code says so
        "import io, sys, pipeline.cli as c\n"
        "class Full(io.RawIOBase):\n"
        "    def writable(self): return True\n"
        "    def write(self, b): raise OSError(28, 'No space left on device')\n"
        "sys.stdout = io.TextIOWrapper(io.BufferedWriter(Full()))\n"
        "c.main = lambda: print('a line still in the buffer')\n"
        "c.run()\n")
    assert subprocess.run([sys.executable, "-c", full_disk], capture_output=True, timeout=300).returncode == 120
    refused = script("embed", "--data", tmp_path / "missing.csv")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and refused.stderr.startswith("error:")
    data = write_csv(tmp_path / "d.csv", sentiment_rows(30))
    done = script("embed", "--data", data, "--model", tiny_bert, "--dtype", "fp32", "--out", tmp_path / "emb",
                  "--pooling", "mean", "--no-progress")
    assert done.returncode == 0, done.stderr
    [cache] = [p for p in (tmp_path / "emb").iterdir() if p.is_dir()]
    assert load_embeddings(cache, "mean").X.shape == (30, 32)


def test_shards_published_from_many_threads_keep_the_umask_and_usual_modes(tmp_path):
    import os
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.paths import publish

    before = os.umask(0o022)
    try:
        def one(i: int) -> int:
            tmp = tmp_path / f".t{i}.tmp"
            tmp.write_bytes(b"x")
            tmp.chmod(0o600)
            publish(tmp, tmp_path / f"f{i}")
            return (tmp_path / f"f{i}").stat().st_mode & 0o777

        with ThreadPoolExecutor(8) as pool:
            modes = set(pool.map(one, range(400)))
        assert modes == {0o644} and os.umask(0o022) == 0o022
    finally:
        os.umask(before)


# --- every JSON record the product writes is typed and carries its schema version -----------------------------------

# What is written with atomic_write_json / write_record and is not a typed record, and why it may stay so.
UNTYPED_JSON = {
    "pipeline/bench/scaling.py": "scaling.json is a list of rows, one per size (scripts read it as a list)",
    "pipeline/bench/senteval.py": "per-task scores kept to resume an eval, keyed by cache, seed and protocol",
    "pipeline/embed/runtimes/kept_graphs.py": "graph.json beside a kept OpenVINO graph: a cache, checked by sha256",
    "pipeline/embed/sources/files.py": "the file-hash memo: a cache with its own `version`, dropped when unknown",
    "pipeline/embed/sources/packaged.py": "where an unpacked PyPI-packaged model came from: a cache, rebuilt if odd",
    "pipeline/paths.py": "write_record itself: it writes what its callers pass (checked at their calls)",
    "pipeline/predict/export.py": "the exported graph's meta for its consumers, versioned by the graph's opset",
}


def _json_writes() -> list[tuple[str, ast.Call]]:
    """(file, call) for every atomic_write_json / write_record call under pipeline/."""
    root = Path(pipeline.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            name = getattr(node, "func", None)
            name = getattr(name, "id", getattr(name, "attr", None))
            if isinstance(node, ast.Call) and name in ("atomic_write_json", "write_record"):
                found.append((path.relative_to(root.parent).as_posix(), node))
    return found


def _is_record_json(node: ast.expr) -> bool:
    """`x.to_json()`, or a dict that spreads one (`{**run.to_json(), "metrics": metrics.to_json()}`)."""
    if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "to_json":
        return True
    return isinstance(node, ast.Dict) and any(k is None and _is_record_json(v)
                                              for k, v in zip(node.keys, node.values, strict=True))


def test_every_json_record_written_is_a_typed_record_or_named_with_its_reason():
    writes = _json_writes()
    untyped = {file for file, call in writes
               if not _is_record_json(call.args[1 if getattr(call.func, "id", "") == "atomic_write_json" else 2])}
    assert untyped == set(UNTYPED_JSON), "write a JsonRecord's to_json(), or name the file here with its reason"
    assert len(writes) >= 12


@pytest.mark.parametrize("record", RECORDS, ids=lambda cls: cls.__name__)
def test_every_record_is_a_frozen_dataclass_with_its_schema_version(record):
    assert set(JsonRecord.__subclasses__()) == set(RECORDS), "a new record joins RECORDS"
    assert issubclass(record, JsonRecord) and record.__dataclass_params__.frozen
    assert isinstance(record.version(), int) and record.version() >= 1
    assert SCHEMA_KEY in {f.name for f in fields(record)}
