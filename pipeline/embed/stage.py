"""Stage one: data -> encoder -> poolings -> cache, shard by shard, resumable, one forward pass per batch."""

import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from functools import lru_cache, partial

import numpy as np

from pipeline.cache import (
    DataInfo,
    EmbeddingCache,
    Manifest,
    PoolingInfo,
    RunStats,
    ShardRecord,
    cache_dir,
    verified_shards,
)
from pipeline.data import Dataset, DataSpec
from pipeline.embed import windows
from pipeline.embed.aggregate import AGGREGATIONS, Fan, Gather, split_name
from pipeline.embed.calibration import calibrated
from pipeline.embed.encoder import Encoder
from pipeline.embed.keying import Keyed, from_counts, keyed
from pipeline.embed.pooling import POOLINGS
from pipeline.embed.remote import RayPool
from pipeline.embed.settings import EncoderOptions
from pipeline.embed.shards import Spans, run_local
from pipeline.embed.sources.files import package_version
from pipeline.errors import PipelineError
from pipeline.storage import Location, ensure_writable

DEFAULT_SHARD_ROWS = 4096
ENGINES = {"local": "this process", "ray": "a Ray Data actor pool (pip install 'bert-pipeline[distributed]')"}


@dataclass(frozen=True)
class EmbedResult:
    path: Location
    manifest: Manifest
    computed_rows: int
    computed_shards: list[int]


Runner = Callable[[Dataset, Encoder, EmbeddingCache, Spans, dict, bool], str | None]  # returns who worked, if not here


def embed(data: DataSpec, model: str, poolings: list[str], out: Location, options: EncoderOptions = EncoderOptions(),
          shard_rows: int = DEFAULT_SHARD_ROWS, engine: str = "local", ray_address: str | None = None,
          progress: bool = True, pool: RayPool = RayPool()) -> EmbedResult:
    """The whole stage: read `data`, load `model`, embed and cache the poolings, on the chosen engine. With Ray, the
    file is read, checked and fingerprinted by Ray tasks and the shards computed by actors, in one Ray session."""
    with engine_session(engine, out, ray_address, pool) as (runner, cluster_rows):
        ds = None if cluster_rows else data.load()
        ensure_writable(out)
        encoder = Encoder(options.resolve(model))
        ds, lengths = cluster_rows(data, encoder) if cluster_rows else (ds, None)
        known = None if lengths is None else from_counts(encoder, lengths)
        return embed_dataset(ds, encoder, poolings, out, shard_rows, progress, runner, known)


@contextmanager
def engine_session(engine: str, out: Location, ray_address: str | None,
                   pool: RayPool = RayPool()) -> Iterator[tuple[Runner | None, Callable | None]]:
    """The shard runner and (Ray) row loader of an engine, inside its session (Ray is imported only for 'ray'); the
    local ones are None: the rows are read here, and embed_dataset runs shards in this process, from the chunks
    keying already read."""
    if engine not in ENGINES:
        raise PipelineError(f"unknown engine {engine!r}: choose from {', '.join(ENGINES)}")
    if engine == "local":
        yield None, None
        return
    from pipeline.embed import ray_engine

    with ray_engine.ray_session(out, ray_address):
        yield partial(ray_engine.run_actors, pool=pool), ray_engine.load_rows


def embed_dataset(ds: Dataset, encoder: Encoder, poolings: list[str], embeddings: Location,
                  shard_rows: int = DEFAULT_SHARD_ROWS, progress: bool = True, runner: Runner | None = None,
                  known: Keyed | None = None) -> EmbedResult:
    """Embed every row of `ds` into the cache for (encoder settings, data); reuse finished shards, add missing
    poolings, and write the manifest last. `runner` computes the unfinished shards (default: in this process, from
    the shards keying already read); `known` is `keyed(...)` of these texts when the caller already has it."""
    missing = [p for p in poolings if POOLINGS[split_name(p)[0]].needs_pooler and not encoder.has_pooler]
    if missing:
        raise PipelineError(f"{encoder.ref.name} has no trained pooler: drop {', '.join(missing)} from --pooling")
    encoder, int8 = calibrated(encoder, ds, poolings)  # --dtype int8: calibrate and guard before anything is written
    known = known or keyed(encoder, ds, embeddings, spans_of(len(ds), shard_rows), keep=runner is None)
    if not known.long_texts.over:  # every text fits: mean@head_tail is mean, so only mean is cached
        poolings = list(dict.fromkeys(split_name(p)[0] for p in poolings))
    key = known.key(ds)
    store = EmbeddingCache(cache_dir(embeddings, ds.name, encoder.ref.name, key))
    store.path.mkdir(parents=True, exist_ok=True)
    with store.acquire(), _disk_errors(store):
        shard_rows = store.start(key, {"encoder": known.settings.to_json(), "data_fingerprint": ds.fingerprint},
                                 shard_rows)
        spans = spans_of(len(ds), shard_rows)
        verified, listed = verified_shards(store, key, [b - a for a, b in spans])
        target, todo = _plan(store, ds, spans, poolings, verified, listed)
        started, workers = time.perf_counter(), None
        if todo:
            store.drop_manifest()
            workers = (runner or partial(run_local, read=known.chunks if known.spans == spans else {}))(
                ds, encoder, store, spans, todo, progress)
        kept = {i: record for i, record in verified.items() if i not in todo}
        manifest = _manifest(ds, encoder, store, spans, target, key, todo, kept, time.perf_counter() - started,
                             workers)
        manifest = replace(manifest, encoder=known.settings, long_texts=known.long_texts, int8=int8)
        store.write_manifest(manifest)
    computed = sum(spans[i][1] - spans[i][0] for i in todo)
    return EmbedResult(store.path, manifest, computed, sorted(todo))


def spans_of(rows: int, shard_rows: int) -> Spans:
    """The (start, end) rows of each shard."""
    return [(s, min(s + shard_rows, rows)) for s in range(0, rows, shard_rows)]


def _plan(store: EmbeddingCache, ds: Dataset, spans: Spans, poolings: list[str], verified: dict[int, ShardRecord],
          listed: set[str]) -> tuple[list[str], dict[int, list[str]]]:
    """Which poolings the cache will hold (requested + any a whole shard already has), and what each shard lacks.
    Shards the manifest vouches for are not read again; any other is read in full, with page checksums."""
    have = [listed if i in verified else store.shard_columns(i, ds.ids[a:b]) for i, (a, b) in enumerate(spans)]
    target = list(dict.fromkeys([*poolings, *sorted(set().union(*[h for h in have if h]))]))
    todo = {i: [p for p in target if p not in (have[i] or set())] for i in range(len(spans))}
    return target, {i: missing for i, missing in todo.items() if missing}


@contextmanager
def _disk_errors(store: EmbeddingCache) -> Iterator[None]:
    """A full disk or a folder turned read-only mid-run: one clear message; the shards already written stay valid."""
    try:
        yield
    except OSError as exc:
        raise PipelineError(f"cannot write the cache in {store.path} ({exc.strerror or exc}): free disk space or fix "
                            "permissions, then run the same command; finished shards are kept") from None


def embed_texts(encoder: Encoder, texts: list[str], poolings: list[str]) -> dict[str, np.ndarray]:
    """Vectors of a few texts in memory (no cache), e.g. for predict and the server: the cached stage's path, asked
    `soon` (Runtime.encode)."""
    windows.check_size(texts)
    return encoder.encode(encoder.read(texts), poolings, soon=True)


def embed_aggregations(encoder: Encoder, texts: list[str], pooling: str, aggregations: list[str]) -> dict:
    """One pooling of `texts` under each window aggregation (aggregate.AGGREGATIONS), from one forward pass per
    batch: what `bench long-texts` compares."""
    windows.check_size(texts)
    tokens = encoder.read(texts)
    fan = Fan({a: Gather(tokens, aggregation=lambda _, a=a: a) for a in aggregations})
    return {a: vectors[pooling] for a, vectors in encoder.encode(tokens, [pooling], sink=fan).items()}


def _manifest(ds: Dataset, encoder: Encoder, store: EmbeddingCache, spans: Spans, poolings: list[str], key: str,
              todo: dict, kept: dict[int, ShardRecord], seconds: float, workers: str | None) -> Manifest:
    """The finished cache's record; shards kept from the previous manifest keep their records (no rehash)."""
    config = encoder.config
    counts = [_token_counts(store, i) for i in range(len(spans))]
    shards = [kept.get(i) or store.shard_record(i, b - a) for i, (a, b) in enumerate(spans)]
    rows, new_tokens = sum(spans[i][1] - spans[i][0] for i in todo), sum(counts[i][0] for i in todo)
    run = RunStats(seconds, rows, new_tokens, sorted(todo), rows / seconds if rows else None,
                   new_tokens / seconds if rows else None, workers)
    return Manifest(
        name=store.path.name, key=key, created=datetime.now(timezone.utc).isoformat(),
        data=DataInfo(ds.name, ds.fingerprint, ds.split_origin, ds.split_counts()),
        rows=len(ds), label_names=ds.label_names, encoder=config.settings(), model_ref=config.model.spec,
        poolings={p: _pooling_info(p, encoder) for p in poolings}, shards=shards,
        tokens=sum(c[0] for c in counts), truncated=sum(c[1] for c in counts),
        device=config.device, batch_tokens=config.batch_tokens,
        last_run=run, versions=dict(_versions()))


def _token_counts(store: EmbeddingCache, index: int) -> tuple[int, int]:
    """(tokens, truncated texts) of a shard, from its two small columns only."""
    meta = store.read_columns(index, ["n_tokens", "truncated"])
    return int(meta.column("n_tokens").to_numpy().sum()), int(meta.column("truncated").to_numpy().sum())


def _pooling_info(name: str, encoder: Encoder) -> PoolingInfo:
    base, aggregation = split_name(name)
    shape = POOLINGS[base].shape(encoder.num_layers, encoder.hidden_size)
    folded = f"; long texts: {AGGREGATIONS[aggregation].description}" if aggregation else ""
    return PoolingInfo(POOLINGS[base].description + folded, shape, int(np.prod(shape)))


@lru_cache(maxsize=1)
def _versions() -> dict:
    names = ["bert-pipeline", "torch", "transformers", "tokenizers", "openvino", "nncf", "numpy", "pyarrow"]
    return {**{name: package_version(name) for name in names}, "python": platform.python_version()}
