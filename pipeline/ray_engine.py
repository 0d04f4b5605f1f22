"""The embed stage on Ray Data: the same plan, encoder, pooling and shard format, spread over actors.

The driver reads and validates the data and computes the cache key exactly as the local engine does (the key needs a
fingerprint of every row, and the split is assigned centrally). Ray Data then maps the unfinished shards over a pool
of actors, each loading the model once; every actor writes whole shards atomically in the cache format, and the
driver writes the manifest last. So resume, keys and files are those of the local engine, and `make train` reads
the result unchanged. Ray is imported only here.
"""

import os
from pathlib import Path

from pipeline.data import Dataset
from pipeline.embed import EmbedResult, compute_shard, embed_dataset
from pipeline.encoder import Encoder
from pipeline.errors import PipelineError

MIN_ACTORS_TIMEOUT_S = 600


class ShardEmbedder:
    """One Ray actor: loads the encoder once, then embeds and writes whole shards."""

    def __init__(self, ds_ref, encoder_args: dict, cache_path: str, spans: list, todo: dict) -> None:
        import ray

        from pipeline.cache import EmbeddingCache
        from pipeline.models import resolve_model

        self.ds = ray.get(ds_ref) if isinstance(ds_ref, ray.ObjectRef) else ds_ref
        self.encoder = Encoder(resolve_model(encoder_args["model"]), **encoder_args["options"])
        self.store, self.spans, self.todo = EmbeddingCache(Path(cache_path)), spans, todo

    def __call__(self, batch):
        import pyarrow as pa

        done = []
        for index in batch.column("shard").to_pylist():
            compute_shard(self.ds, self.encoder, self.store, index, tuple(self.spans[index]), self.todo[index])
            done.append(index)
        return pa.table({"shard": done, "rows": [self.spans[i][1] - self.spans[i][0] for i in done]})


def embed_with_ray(ds: Dataset, encoder: Encoder, poolings: list[str], root: Path, shard_rows: int,
                   address: str | None = None, progress: bool = True) -> EmbedResult:
    """`embed_dataset` with the unfinished shards computed by a Ray Data actor pool (local Ray unless `address`)."""
    ray = _start_ray(address)
    try:
        return embed_dataset(ds, encoder, poolings, root, shard_rows, progress,
                             runner=lambda *args: _run_actors(ray, *args))
    finally:
        if not address and not os.environ.get("RAY_ADDRESS"):
            ray.shutdown()


def _run_actors(ray, ds: Dataset, encoder: Encoder, store, spans, todo: dict, progress: bool) -> None:
    import ray.data
    from ray.data import ActorPoolStrategy

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    context.wait_for_min_actors_s = MIN_ACTORS_TIMEOUT_S
    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    actors = gpus or 1
    per_actor = {"num_gpus": 1} if gpus else {"num_cpus": cpus}
    options = {"device": "cuda" if gpus else "cpu", "dtype": _dtype_name(encoder), "max_length": encoder.max_length,
               "batch_tokens": encoder.batch_tokens if not gpus else 0}
    work = ray.data.from_items([{"shard": i} for i in sorted(todo)], override_num_blocks=len(todo))
    results = work.map_batches(
        ShardEmbedder, batch_size=1, batch_format="pyarrow",
        compute=ActorPoolStrategy(min_size=1, max_size=min(actors, len(todo))),
        fn_constructor_kwargs={"ds_ref": ray.put(ds), "encoder_args": {"model": encoder.ref.spec, "options": options},
                               "cache_path": str(store.path), "spans": spans, "todo": todo},
        **per_actor,
    ).take_all()
    written = sorted(r["shard"] for r in results)
    if written != sorted(todo):
        raise PipelineError(f"Ray wrote shards {written} but {sorted(todo)} were due: run the same command again")


def _dtype_name(encoder: Encoder) -> str:
    from pipeline.device import dtype_name

    return dtype_name(encoder.dtype)


def _start_ray(address: str | None):
    try:
        import ray
    except ImportError:
        raise PipelineError("--engine ray needs Ray: pip install 'bert-pipeline[distributed]' "
                            "(or make embed ENGINE=ray)") from None
    if not ray.is_initialized():
        target = address or os.environ.get("RAY_ADDRESS")
        try:
            ray.init(address=target, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                     configure_logging=True, ignore_reinit_error=True)
        except ConnectionError as exc:
            raise PipelineError(f"cannot reach the Ray cluster at {target} ({exc}): check --ray-address "
                                "or start one with `ray start --head`") from None
    return ray

