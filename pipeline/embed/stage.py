"""Stage one: data -> encoder -> poolings -> cache, shard by shard, resumable, one forward pass per batch."""

import os
import platform
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache

import numpy as np
from tqdm import tqdm

from pipeline.cache import (
    DataInfo,
    EmbeddingCache,
    Manifest,
    PoolingInfo,
    RunStats,
    ShardRecord,
    cache_dir,
    cache_key,
    shard_table,
)
from pipeline.data import Dataset, DataSpec, read_table
from pipeline.embed import openvino_graph
from pipeline.embed.encoder import Encoder, Tokenized, iter_outputs
from pipeline.embed.models import package_version, resolve_model
from pipeline.embed.pooling import POOLINGS, pool
from pipeline.errors import PipelineError
from pipeline.storage import Location, ensure_writable, require_local

DEFAULT_SHARD_ROWS = 4096
# Shards written at once, each in its own thread: one on small machines (the model needs the cores); a GPU host's
# spare cores write several, since there the Parquet write and sha256, not the model, set the pace.
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # this process's
WRITERS = max(1, min(4, CORES // 4))
ENGINES = {"local": "this process", "ray": "a Ray Data actor pool (pip install 'bert-pipeline[distributed]')"}
Spans = list[tuple[int, int]]


@dataclass(frozen=True)
class EmbedResult:
    path: Location
    manifest: Manifest
    computed_rows: int
    computed_shards: list[int]


@dataclass(frozen=True)
class EncoderOptions:
    """How to run the encoder: the settings that change vectors (max_length, dtype) and those that do not."""

    max_length: int = 128
    device: str = "auto"
    dtype: str = "auto"
    batch_tokens: int = 0
    runtime: str = "auto"

    def load(self, model: str) -> Encoder:
        return Encoder(resolve_model(model), self.device, self.dtype, self.max_length, self.batch_tokens,
                       runtime=self.runtime)


Runner = Callable[[Dataset, Encoder, EmbeddingCache, Spans, dict, bool], None]


def embed(data: DataSpec, model: str, poolings: list[str], out: Location, options: EncoderOptions = EncoderOptions(),
          shard_rows: int = DEFAULT_SHARD_ROWS, engine: str = "local", ray_address: str | None = None,
          progress: bool = True) -> EmbedResult:
    """The whole stage: read `data`, load `model`, embed and cache the poolings, on the chosen engine. With Ray, the
    file is read by Ray Data and the shards computed by actors, all in one Ray session."""
    with engine_session(engine, out, ray_address) as (reader, runner):
        ds = data.load(reader)
        ensure_writable(out)
        return embed_dataset(ds, options.load(model), poolings, out, shard_rows, progress, runner)


@contextmanager
def engine_session(engine: str, out: Location, ray_address: str | None) -> Iterator[tuple[Callable, Runner]]:
    """The table reader and shard runner of an engine, inside its session (Ray is imported only for 'ray')."""
    if engine not in ENGINES:
        raise PipelineError(f"unknown engine {engine!r}: choose from {', '.join(ENGINES)}")
    if engine == "local":
        yield read_table, run_local
        return
    from pipeline.embed import ray_engine

    with ray_engine.ray_session(require_local(out, "--out of --engine ray"), ray_address):
        yield ray_engine.read_table_ray, ray_engine.run_actors


def embed_dataset(ds: Dataset, encoder: Encoder, poolings: list[str], embeddings: Location,
                  shard_rows: int = DEFAULT_SHARD_ROWS, progress: bool = True, runner: Runner | None = None
                  ) -> EmbedResult:
    """Embed every row of `ds` into the cache for (encoder settings, data); reuse finished shards, add missing
    poolings, and write the manifest last. `runner` computes the unfinished shards (default: in this process)."""
    missing = [p for p in poolings if POOLINGS[p].needs_pooler and not encoder.has_pooler]
    if missing:
        raise PipelineError(f"{encoder.ref.name} has no trained pooler: drop {', '.join(missing)} from --pooling")
    settings = encoder.settings()
    key = cache_key(settings, ds.fingerprint)
    store = EmbeddingCache(cache_dir(embeddings, ds.name, encoder.ref.name, key))
    store.path.mkdir(parents=True, exist_ok=True)
    with store.acquire(), _disk_errors(store):
        shard_rows = store.start(key, {"encoder": settings.to_json(), "data_fingerprint": ds.fingerprint},
                                 shard_rows)
        spans = [(s, min(s + shard_rows, len(ds))) for s in range(0, len(ds), shard_rows)]
        verified, listed = _verified_shards(store, spans, key)
        target, todo = _plan(store, ds, spans, poolings, verified, listed)
        started = time.perf_counter()
        if todo:
            store.drop_manifest()
            (runner or run_local)(ds, encoder, store, spans, todo, progress)
        kept = {i: record for i, record in verified.items() if i not in todo}
        manifest = _manifest(ds, encoder, store, spans, target, key, todo, kept, time.perf_counter() - started)
        store.write_manifest(manifest)
    computed = sum(spans[i][1] - spans[i][0] for i in todo)
    return EmbedResult(store.path, manifest, computed, sorted(todo))


def _verified_shards(store: EmbeddingCache, spans: Spans, key: str) -> tuple[dict[int, ShardRecord], set[str]]:
    """Shards the previous manifest vouches for and that still hash to its record (each read once, to hash it),
    and the poolings that manifest lists: a manifest is written only when every shard holds all of them."""
    previous = store.previous_manifest()
    if previous is None or previous.key != key or len(previous.shards) != len(spans):
        return {}, set()
    records = {i: record for i, (record, (a, b)) in enumerate(zip(previous.shards, spans, strict=True))
               if store.verified_shard(i, b - a, record)}
    return records, set(previous.poolings)


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


def run_local(ds: Dataset, encoder: Encoder, store: EmbeddingCache, spans: Spans,
              todo: dict[int, list[str]], progress: bool) -> None:
    """Compute the missing poolings of each unfinished shard. Three things overlap: the next shard is tokenised and
    the previous ones written (Parquet, sha256) in other threads while this one runs on the model. At most WRITERS
    shards wait to be written, so memory stays flat whichever side is slower."""
    reused = len(ds) - sum(spans[i][1] - spans[i][0] for i in todo)
    bar = tqdm(total=len(ds), initial=reused, unit="text", desc="embed", disable=not progress, file=sys.stderr,
               dynamic_ncols=True, smoothing=0.1)
    order = sorted(todo)
    with ThreadPoolExecutor(max_workers=1) as prefetch, ThreadPoolExecutor(max_workers=WRITERS) as writer:
        tokenize = lambda i: encoder.tokenize(ds.texts[spans[i][0]:spans[i][1]])  # noqa: E731
        pending, writing = prefetch.submit(tokenize, order[0]), deque()
        for n, index in enumerate(order):
            tokens = pending.result()
            if n + 1 < len(order):
                pending = prefetch.submit(tokenize, order[n + 1])
            vectors = _pool_chunk(encoder, tokens, todo[index], bar)
            while len(writing) >= WRITERS:
                writing.popleft().result()
            writing.append(writer.submit(_write_shard, store, index, ds, *spans[index], tokens, vectors))
        for written in writing:
            written.result()
    bar.close()


def compute_shard(ds: Dataset, encoder: Encoder, store: EmbeddingCache, index: int, span: tuple[int, int],
                  poolings: list[str], tokens: Tokenized | None = None, bar: tqdm | None = None) -> None:
    """Embed one shard's rows (tokenising them unless given) and write the shard; any engine calls this."""
    a, b = span
    tokens = tokens or encoder.tokenize(ds.texts[a:b])
    vectors = _pool_chunk(encoder, tokens, poolings, bar or tqdm(disable=True))
    _write_shard(store, index, ds, a, b, tokens, vectors)


def embed_texts(encoder: Encoder, texts: list[str], poolings: list[str]) -> dict[str, np.ndarray]:
    """Vectors of a few texts in memory (no cache), e.g. for predict; same code path as the cached stage."""
    return _pool_chunk(encoder, encoder.tokenize(texts), poolings, tqdm(disable=True))


def _pool_chunk(encoder: Encoder, tokens, poolings: list[str], bar: tqdm) -> dict[str, np.ndarray]:
    """All requested poolings of one chunk from one forward pass per batch, back in input order."""
    if encoder.runtime == "openvino":
        return openvino_graph.pool_chunk(encoder, tokens, poolings, bar)
    import torch

    hidden = any(POOLINGS[p].needs_hidden_states for p in poolings)
    n = len(tokens.input_ids)
    out: dict[str, np.ndarray] = {}
    for rows, outputs in iter_outputs(encoder, tokens, hidden):
        for name, tensor in pool(poolings, outputs).items():
            array = tensor.to(torch.float32).cpu().numpy()
            if name not in out:
                out[name] = np.empty((n, *array.shape[1:]), dtype=np.float32)
            out[name][rows] = array
        bar.update(len(rows))
    return out


def _write_shard(store: EmbeddingCache, index: int, ds: Dataset, a: int, b: int, tokens, vectors) -> None:
    """Write a shard with its new poolings merged into the ones it already had (if it was whole), and its texts."""
    old = store.shard_vectors(index, ds.ids[a:b]) or {}
    table = shard_table(ds.ids[a:b], list(ds.splits[a:b]), ds.labels[a:b], tokens.lengths, tokens.truncated,
                        {**old, **vectors}, ds.texts[a:b])
    store.write_shard(index, table)


def _manifest(ds: Dataset, encoder: Encoder, store: EmbeddingCache, spans: Spans, poolings: list[str], key: str,
              todo: dict, kept: dict[int, ShardRecord], seconds: float) -> Manifest:
    """The finished cache's record; shards kept from the previous manifest keep their records (no rehash)."""
    counts = [_token_counts(store, i) for i in range(len(spans))]
    shards = [kept.get(i) or store.shard_record(i, b - a) for i, (a, b) in enumerate(spans)]
    rows, new_tokens = sum(spans[i][1] - spans[i][0] for i in todo), sum(counts[i][0] for i in todo)
    run = RunStats(seconds, rows, new_tokens, sorted(todo), rows / seconds if rows else None,
                   new_tokens / seconds if rows else None)
    return Manifest(
        name=store.path.name, key=key, created=datetime.now(timezone.utc).isoformat(),
        data=DataInfo(ds.name, ds.fingerprint, ds.split_origin, ds.split_counts()),
        rows=len(ds), label_names=ds.label_names, encoder=encoder.settings(), model_ref=encoder.ref.spec,
        poolings={p: _pooling_info(p, encoder) for p in poolings}, shards=shards,
        tokens=sum(c[0] for c in counts), truncated=sum(c[1] for c in counts),
        device=encoder.device_name, batch_tokens=encoder.batch_tokens,
        cpu_bf16_speedup=None,  # no longer measured: the CPU dtype follows its bf16 flags (encoder.dtype)
        last_run=run, versions=dict(_versions()))


def _token_counts(store: EmbeddingCache, index: int) -> tuple[int, int]:
    """(tokens, truncated texts) of a shard, from its two small columns only."""
    meta = store.read_columns(index, ["n_tokens", "truncated"])
    return int(meta.column("n_tokens").to_numpy().sum()), int(meta.column("truncated").to_numpy().sum())


def _pooling_info(name: str, encoder: Encoder) -> PoolingInfo:
    shape = POOLINGS[name].shape(encoder.num_layers, encoder.hidden_size)
    return PoolingInfo(POOLINGS[name].description, shape, int(np.prod(shape)))


@lru_cache(maxsize=1)
def _versions() -> dict:
    names = ["bert-pipeline", "torch", "transformers", "tokenizers", "openvino", "numpy", "pyarrow"]
    return {**{name: package_version(name) for name in names}, "python": platform.python_version()}
