"""The embed stage on a Ray cluster: the same plan, encoder, pooling and shard format, spread over an actor pool.

What runs where: Ray Data's read tasks read the file (a local path every node sees, or s3://, gs://, hdfs://) into
blocks that stay in the object store; Ray tasks check, split-key and fingerprint them (ray_rows.py), so the driver
holds a few tens of bytes per row and no text. An actor pool sized to the cluster (RayPool: one actor per node's
worth of CPUs by default, GPUs one each) loads the model once per actor from the driver's resolved EncoderConfig and
writes whole shards straight to the cache folder or URI (shards.py, atomically, as the local engine). Each actor
returns its shards' records (name, rows, sha256, node) and the driver writes the manifest last. So resume, keys and
files are those of the local engine, and `train` reads the result unchanged. Ray is imported only here and in
ray_rows.py.
"""

import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pipeline.cache import EmbeddingCache, ShardRecord
from pipeline.data import DEMO_NAME, Dataset, DataSpec
from pipeline.embed.encoder import Encoder
from pipeline.embed.ray_rows import Block, ClusterRows, RowNumbers, cluster_rows, texts_of
from pipeline.embed.remote import RayPool, check_ray_address
from pipeline.embed.runtimes import runtime_supported
from pipeline.embed.settings import EncoderConfig
from pipeline.embed.shards import compute_shard
from pipeline.errors import PipelineError
from pipeline.storage import Location, location

MIN_ACTORS_TIMEOUT_S = 600  # no actor could start (e.g. asked for GPUs nobody has): fail instead of waiting forever
NO_PROGRESS_TIMEOUT_S = 1800  # a stuck job fails with Ray's message instead of hanging
PASSED_VARIABLES = ("AWS_", "GOOGLE_APPLICATION_CREDENTIALS", "HF_")  # storage and model settings every worker needs


class ShardEmbedder:
    """One Ray actor: loads the encoder once, then embeds whole shards, writes each to the cache itself and returns
    its record. The rows' labels, splits and ids arrive once, by reference; the texts come from the blocks."""

    def __init__(self, config: dict, cache: str, todo: dict, spans: list, blocks: list[Block], column: str,
                 rows: list) -> None:
        """`config`: the driver's EncoderConfig as JSON; the model's files are found again here, nothing is picked."""
        import ray

        self.encoder = Encoder(EncoderConfig.from_json(config))
        self.store, self.todo, self.spans, self.blocks, self.column = EmbeddingCache(cache), todo, spans, blocks, column
        self.labels, self.splits, ids = ray.get(rows[0])
        self.ids = ids if ids is not None else RowNumbers(len(self.labels))
        context = ray.get_runtime_context()
        self.node, self.actor = context.get_node_id(), context.get_actor_id()

    def __call__(self, batch):
        import pyarrow as pa

        return pa.Table.from_pylist([self.shard(int(index)) for index in batch.column("shard").to_pylist()])

    def shard(self, index: int) -> dict:
        import ray

        a, b = self.spans[index]
        blocks = [k for k in self.blocks if k.start < b and k.start + k.rows > a]
        texts = texts_of(blocks, ray.get([k.ref for k in blocks]), self.column, a, b)
        rows = Dataset("shard", self.ids[a:b], texts, self.labels[a:b], [], self.splits[a:b], "")
        compute_shard(rows, self.encoder, self.store, index, (0, b - a), self.todo[index])
        record = self.store.shard_record(index, b - a)
        return {"shard": index, **asdict(record), "node": self.node, "actor": self.actor}


@contextmanager
def ray_session(root: Location, address: str | None = None) -> Iterator[None]:
    """Join `address` (or RAY_ADDRESS) or start a quiet local Ray for the block; shut down what this started. Ray's
    native warnings go to a log beside a local cache root (else in the temporary folder)."""
    folder = root if isinstance(root, Path) else Path(tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    with _native_logs_to(folder / ".ray-driver.log"):
        ray, started_here = _start_ray(address)
        try:
            yield
        finally:
            if started_here:
                ray.shutdown()


def load_rows(spec: DataSpec, encoder: Encoder) -> tuple["Dataset | ClusterRows", np.ndarray | None]:
    """The rows to embed and, for a file read on the cluster, every text's whole token count (counted there). The
    built-in demo set and benchmark folders are small and local: they are read here, as the local engine does; so is
    the file of a --dtype int8 run still to calibrate, which is calibrated here on its train texts before any actor
    starts. A spec without a label column (predict's input) gives the texts alone."""
    path = location(spec.data) if spec.data != DEMO_NAME else None
    calibration = encoder.config.calibration
    if path is None or (isinstance(path, Path) and path.is_dir()) or (calibration and calibration.graph is None):
        return spec.load(), None
    rows, lengths = cluster_rows(path, spec.columns, spec.test_size, spec.seed, encoder.config.model.spec,
                                 task_options())
    return rows, lengths


def task_options() -> dict:
    """Ray options of every task and actor: the storage and model variables of this process, so that workers
    started before they were set (or on other machines) reach the same object store with the same credentials."""
    passed = {k: v for k, v in os.environ.items() if k.startswith(PASSED_VARIABLES)}
    return {"runtime_env": {"env_vars": passed}} if passed else {}


def run_actors(ds: "Dataset | ClusterRows", encoder: Encoder, store: EmbeddingCache, spans, todo: dict,
               progress: bool, pool: RayPool = RayPool()) -> str:
    """The Ray runner of the embed stage: the unfinished shards over an actor pool; the shards' records are adopted
    by `store` for the manifest. Returns who worked, e.g. '2 actors on 2 nodes'."""
    import ray
    import ray.data
    from ray.data import ActorPoolStrategy

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress and sys.stderr.isatty()
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    context.wait_for_min_actors_s = MIN_ACTORS_TIMEOUT_S
    context.execution_no_progress_timeout_s = NO_PROGRESS_TIMEOUT_S
    rows = ds if isinstance(ds, ClusterRows) else _put(ds)
    config, per_actor, (low, high) = _pool(encoder.config, pool, len(todo))
    shared = ray.put((rows.labels, rows.splits, None if isinstance(rows.ids, RowNumbers) else list(rows.ids)))
    results = ray.data.from_items([{"shard": i} for i in sorted(todo)], override_num_blocks=len(todo)).map_batches(
        ShardEmbedder, batch_size=1, batch_format="pyarrow", compute=ActorPoolStrategy(min_size=low, max_size=high),
        fn_constructor_kwargs={"config": config.to_json(), "cache": str(_whole(store.path)), "todo": todo,
                               "spans": spans, "blocks": rows.blocks, "column": rows.text_col, "rows": [shared]},
        **per_actor, **task_options(),  # Ray Data restarts a dead actor and retries its shard (max_restarts -1)
    ).take_all()
    for result in results:
        store.adopt(result["shard"], ShardRecord(result["file"], result["rows"], result["bytes"], result["sha256"],
                                                 result["node"]))
    written = sorted(r["shard"] for r in results)
    if written != sorted(todo):
        raise PipelineError(f"Ray wrote shards {written} but {sorted(todo)} were due: run the same command again")
    actors, nodes = len({r["actor"] for r in results}), len({r["node"] for r in results})
    return f"{actors} actor{'s' * (actors != 1)} on {nodes} node{'s' * (nodes != 1)}"


def _whole(path: Location) -> Location:
    """A local cache folder as an absolute path: the actors run in other folders (a cluster's workers in theirs)."""
    return path.resolve() if isinstance(path, Path) else path


def _pool(config: EncoderConfig, pool: RayPool, shards: int) -> tuple[EncoderConfig, dict, tuple[int, int]]:
    """The actors' config, Ray resources and pool size. CPU actors ask for `cpus_per_actor` CPUs (default: the
    smallest node's), never more than one node has; the pool fits the cluster unless asked otherwise."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    gpus = int(sum(n.get("GPU", 0) for n in nodes))
    if gpus:
        if not runtime_supported(config.runtime, "cuda", config.dtype):  # the key names it: run that one
            raise PipelineError(f"the Ray cluster has GPUs, where the {config.runtime} runtime cannot run: use "
                                "--runtime torch")
        return config.variant(device="cuda"), {"num_gpus": 1}, _bounds(pool, gpus, shards)
    cpus = [int(n.get("CPU", 0)) for n in nodes]
    per = pool.cpus_per_actor or min([c for c in cpus if c >= 1], default=1)
    if max(cpus, default=0) < per:
        raise PipelineError(f"no node of the Ray cluster has {per} CPU(s) for one actor (largest node: "
                            f"{max(cpus, default=0)} CPUs): lower --ray-cpus-per-actor, or add a node with more CPUs")
    fit = sum(c // per for c in cpus)
    if pool.min_actors and pool.min_actors > fit:
        raise PipelineError(f"the Ray cluster fits {fit} actor(s) of {per} CPU(s), not the {pool.min_actors} asked "
                            "for: lower --ray-actors or --ray-cpus-per-actor, or add nodes")
    config = config.variant(device="cpu", batch_tokens=config.batch_tokens)
    return config, {"num_cpus": per}, _bounds(pool, fit, shards)


def _bounds(pool: RayPool, fit: int, shards: int) -> tuple[int, int]:
    high = min(pool.max_actors or fit, shards)
    return min(pool.min_actors or 1, high), high


def _put(ds: Dataset, block_rows: int = 4096) -> ClusterRows:
    """A data set already in this process (the demo set, a benchmark folder) into the object store, by blocks."""
    import pyarrow as pa
    import ray

    blocks = [Block(ray.put(pa.table({"text": ds.texts[a:a + block_rows]})), a, len(ds.texts[a:a + block_rows]))
              for a in range(0, len(ds), block_rows)]
    return ClusterRows(ds.name, blocks, "text", ds.labels, ds.label_names, ds.splits, ds.split_origin,
                       ds.fingerprint, ds.ids)


@contextmanager
def _native_logs_to(path: Path) -> Iterator[None]:
    """Ray's C++ core writes warnings straight to file descriptor 2; keep them in a log file, not on the terminal.
    Python-level errors still reach the user: they are raised, and printed by the CLI after this block."""
    sys.stderr.flush()
    saved = os.dup(2)
    with path.open("ab") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _start_ray(address: str | None):
    """Join `address` (or RAY_ADDRESS), else start a quiet local Ray; says whether this call started it."""
    try:
        import ray
        import ray.data  # sets its loggers' levels when imported: quieted below, after that
    except ImportError:
        raise PipelineError("--engine ray needs Ray: pip install 'bert-pipeline[distributed]' "
                            "(or make embed ENGINE=ray)") from None
    for name in ("ray", "ray.data"):  # a Ray already running in this process too: its read tasks log progress
        logging.getLogger(name).setLevel(logging.ERROR)
    if address is not None:  # asked for by name: refused at once if nothing answers there, even beside a running Ray
        check_ray_address(address)
    if ray.is_initialized():
        return ray, False
    target = address or os.environ.get("RAY_ADDRESS")
    check_ray_address(target)
    try:
        ray.init(address=target, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 configure_logging=True)
    except ConnectionError as exc:
        raise PipelineError(f"cannot reach the Ray cluster at {target} ({exc}): check --ray-address "
                            "or start one with `ray start --head`") from None
    return ray, True
