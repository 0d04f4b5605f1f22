"""The embed stage on Ray Data: the same plan, encoder, pooling and shard format, spread over actors.

Ray Data reads the file (read_csv / read_json / read_parquet, so any path the cluster reaches); the driver then
validates the rows and computes the cache key exactly as the local engine does (the key needs a fingerprint of every
row, and the split is assigned centrally). Ray Data maps the unfinished shards over a pool of actors, each loading
the model once from the driver's resolved EncoderConfig (nothing is picked again on an actor); every actor writes
whole shards atomically in the cache format (shards.py, as the local engine), and the driver writes the manifest
last. So resume, keys and files are those of the local engine, and `make train` reads
the result unchanged. Ray is imported only here.
"""

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.data import Dataset
from pipeline.data.tables import Columns, detect_format
from pipeline.embed.encoder import Encoder
from pipeline.embed.remote import check_ray_address
from pipeline.embed.runtimes import runtime_supported
from pipeline.embed.settings import EncoderConfig
from pipeline.embed.shards import compute_shard
from pipeline.errors import PipelineError, first_line

MIN_ACTORS_TIMEOUT_S = 600  # no actor could start (e.g. asked for GPUs nobody has): fail instead of waiting forever
NO_PROGRESS_TIMEOUT_S = 1800  # a stuck job fails with Ray's message instead of hanging


class ShardEmbedder:
    """One Ray actor: loads the encoder once, then embeds and writes whole shards that arrive with their rows."""

    def __init__(self, config: dict, cache_path: str, todo: dict) -> None:
        """`config`: the driver's EncoderConfig as JSON; the model's files are found again here, nothing is picked."""
        from pipeline.cache import EmbeddingCache

        self.encoder = Encoder(EncoderConfig.from_json(config))
        self.store, self.todo = EmbeddingCache(Path(cache_path)), todo

    def __call__(self, batch):
        import numpy as np
        import pyarrow as pa

        done = []
        for row in batch.to_pylist():
            rows = Dataset("shard", row["ids"], row["texts"], np.asarray(row["labels"], dtype=np.int64), [],
                           np.asarray(row["splits"], dtype=object), "")
            compute_shard(rows, self.encoder, self.store, row["shard"], (0, len(rows)), self.todo[row["shard"]])
            done.append(row["shard"])
        return pa.table({"shard": done})


@contextmanager
def ray_session(root: Path, address: str | None = None) -> Iterator[None]:
    """Join `address` (or RAY_ADDRESS) or start a quiet local Ray for the block; shut down what this started."""
    Path(root).mkdir(parents=True, exist_ok=True)
    with _native_logs_to(Path(root) / ".ray-driver.log"):
        ray, started_here = _start_ray(address)
        try:
            yield
        finally:
            if started_here:
                ray.shutdown()


def read_table_ray(path: Path) -> Columns:
    """Read a table file with Ray Data (any path Ray can reach, e.g. cluster storage), in file order."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import ray
    import ray.data

    fmt = detect_format(Path(path))
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    readers = {"csv": lambda: ray.data.read_csv(str(path)),
               "tsv": lambda: ray.data.read_csv(str(path), parse_options=pacsv.ParseOptions(delimiter="\t")),
               "jsonl": lambda: ray.data.read_json(str(path), lines=True),
               "parquet": lambda: ray.data.read_parquet(str(path))}
    if not Path(path).exists() and "://" not in str(path):
        raise PipelineError(f"data file not found: {path} (check the path given to --data / DATA=)")
    try:
        table = pa.concat_tables(ray.get(readers[fmt]().to_arrow_refs()))
    except Exception as exc:  # Ray wraps the reader's error; its first line says what is wrong
        raise PipelineError(f"Ray Data cannot read {path}: {first_line(exc)}") from None
    if table.num_rows == 0:
        raise PipelineError(f"data file has no rows: {path}")
    return {name: table.column(name).to_pylist() for name in table.column_names}


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


def run_actors(ds: Dataset, encoder: Encoder, store, spans, todo: dict, progress: bool) -> None:
    """The Ray runner of the embed stage: the unfinished shards, each with its rows, over an actor pool."""
    import ray
    import ray.data
    from ray.data import ActorPoolStrategy

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress and sys.stderr.isatty()
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    context.wait_for_min_actors_s = MIN_ACTORS_TIMEOUT_S
    context.execution_no_progress_timeout_s = NO_PROGRESS_TIMEOUT_S
    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    actors = gpus or 1
    config = encoder.config
    if gpus and not runtime_supported(config.runtime, "cuda", config.dtype):  # the key names it: run that one
        raise PipelineError(f"the Ray cluster has GPUs, where the {config.runtime} runtime cannot run: use "
                            "--runtime torch")
    config = config.variant(device="cuda") if gpus else config.variant(device="cpu", batch_tokens=config.batch_tokens)
    per_actor = {"num_gpus": 1} if gpus else {"num_cpus": cpus}
    items = [{"shard": i, "ids": ds.ids[a:b], "texts": ds.texts[a:b], "labels": ds.labels[a:b].tolist(),
              "splits": ds.splits[a:b].tolist()} for i, (a, b) in ((i, spans[i]) for i in sorted(todo))]
    work = ray.data.from_items(items, override_num_blocks=len(items))
    results = work.map_batches(
        ShardEmbedder, batch_size=1, batch_format="pyarrow",
        compute=ActorPoolStrategy(min_size=1, max_size=min(actors, len(todo))),
        fn_constructor_kwargs={"config": config.to_json(),
                               "cache_path": str(store.path), "todo": todo},
        **per_actor,
    ).take_all()
    written = sorted(r["shard"] for r in results)
    if written != sorted(todo):
        raise PipelineError(f"Ray wrote shards {written} but {sorted(todo)} were due: run the same command again")


def _start_ray(address: str | None):
    """Join `address` (or RAY_ADDRESS), else start a quiet local Ray; says whether this call started it."""
    try:
        import ray
    except ImportError:
        raise PipelineError("--engine ray needs Ray: pip install 'bert-pipeline[distributed]' "
                            "(or make embed ENGINE=ray)") from None
    if address is not None:  # asked for by name: refused at once if nothing answers there, even beside a running Ray
        check_ray_address(address)
    if ray.is_initialized():
        return ray, False
    target = address or os.environ.get("RAY_ADDRESS")
    check_ray_address(target)
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        ray.init(address=target, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 configure_logging=True)
    except ConnectionError as exc:
        raise PipelineError(f"cannot reach the Ray cluster at {target} ({exc}): check --ray-address "
                            "or start one with `ray start --head`") from None
    return ray, True

