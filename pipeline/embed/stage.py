"""Stage one: data -> encoder -> poolings -> cache, shard by shard, resumable, one forward pass per batch."""

import platform
from collections.abc import Callable, Iterator
from contextlib import contextmanager
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from pipeline.cache import EmbeddingCache, cache_dir, cache_key, file_sha256, shard_table
from pipeline.data import Dataset
from pipeline.embed.device import cpu_bf16_speedup
from pipeline.embed.encoder import Encoder, Tokenized, iter_outputs
from pipeline.errors import PipelineError
from pipeline.embed.pooling import POOLINGS, pool

DEFAULT_SHARD_ROWS = 4096


@dataclass(frozen=True)
class EmbedResult:
    path: Path
    manifest: dict
    computed_rows: int
    computed_shards: list[int]


Runner = Callable[[Dataset, Encoder, EmbeddingCache, list, dict, bool], None]


def embed_dataset(ds: Dataset, encoder: Encoder, poolings: list[str], root: Path,
                  shard_rows: int = DEFAULT_SHARD_ROWS, progress: bool = True, runner: Runner | None = None
                  ) -> EmbedResult:
    """Embed every row of `ds` into the cache for (encoder settings, data); reuse finished shards, add missing
    poolings, and write the manifest last. `runner` computes the unfinished shards (default: in this process)."""
    if "pooler" in poolings and not encoder.has_pooler:
        raise PipelineError(f"{encoder.ref.name} has no trained pooler: drop 'pooler' from --pooling")
    settings = encoder.settings()
    key = cache_key(settings, ds.fingerprint)
    store = EmbeddingCache(cache_dir(root, ds.name, encoder.ref.name, key))
    store.path.mkdir(parents=True, exist_ok=True)
    with store.acquire(), _disk_errors(store):
        shard_rows = store.start(key, {"encoder": settings, "data_fingerprint": ds.fingerprint}, shard_rows)
        spans = [(s, min(s + shard_rows, len(ds))) for s in range(0, len(ds), shard_rows)]
        target, todo = _plan(store, ds, spans, poolings)
        started = time.perf_counter()
        if todo:
            store.drop_manifest()
            (runner or run_local)(ds, encoder, store, spans, todo, progress)
        manifest = _manifest(ds, encoder, store, spans, target, key, todo, time.perf_counter() - started)
        store.write_manifest(manifest)
    computed = sum(spans[i][1] - spans[i][0] for i in todo)
    return EmbedResult(store.path, manifest, computed, sorted(todo))


def _plan(store: EmbeddingCache, ds: Dataset, spans, poolings: list[str]) -> tuple[list[str], dict[int, list[str]]]:
    """Which poolings the cache will hold (requested + any a whole shard already has), and what each shard lacks."""
    have = [store.shard_columns(i, ds.ids[a:b]) for i, (a, b) in enumerate(spans)]
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


def run_local(ds: Dataset, encoder: Encoder, store: EmbeddingCache, spans: list[tuple[int, int]],
              todo: dict[int, list[str]], progress: bool) -> None:
    """Compute the missing poolings of each unfinished shard; tokenise the next shard while this one runs."""
    reused = len(ds) - sum(spans[i][1] - spans[i][0] for i in todo)
    bar = tqdm(total=len(ds), initial=reused, unit="text", desc="embed", disable=not progress, file=sys.stderr,
               dynamic_ncols=True, smoothing=0.1)
    order = sorted(todo)
    with ThreadPoolExecutor(max_workers=1) as prefetch:
        tokenize = lambda i: encoder.tokenize(ds.texts[spans[i][0]:spans[i][1]])  # noqa: E731
        pending = prefetch.submit(tokenize, order[0])
        for n, index in enumerate(order):
            tokens = pending.result()
            if n + 1 < len(order):
                pending = prefetch.submit(tokenize, order[n + 1])
            compute_shard(ds, encoder, store, index, spans[index], todo[index], tokens, bar)
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
    """Write a shard with its new poolings merged into the ones it already had (if it was whole)."""
    old = store.shard_vectors(index, ds.ids[a:b]) or {}
    table = shard_table(ds.ids[a:b], list(ds.splits[a:b]), ds.labels[a:b], tokens.lengths, tokens.truncated,
                        {**old, **vectors})
    store.write_shard(index, table)


def _manifest(ds: Dataset, encoder: Encoder, store: EmbeddingCache, spans, poolings: list[str], key: str,
              todo: dict, seconds: float) -> dict:
    shards, tokens, truncated = [], np.zeros(len(spans), dtype=np.int64), 0
    for i, (a, b) in enumerate(spans):
        path = store.shard_path(i)
        meta = pq.read_table(path, columns=["n_tokens", "truncated"])
        tokens[i] = int(meta.column("n_tokens").to_numpy().sum())
        truncated += int(meta.column("truncated").to_numpy().sum())
        shards.append({"file": path.name, "rows": b - a, "bytes": path.stat().st_size, "sha256": file_sha256(path)})
    rows, new_tokens = sum(spans[i][1] - spans[i][0] for i in todo), int(sum(tokens[i] for i in todo))
    run = {"seconds": seconds, "computed_rows": rows, "computed_tokens": new_tokens, "computed_shards": sorted(todo),
           "texts_per_s": rows / seconds if rows else None, "tokens_per_s": new_tokens / seconds if rows else None}
    return {
        "schema": 1, "name": store.path.name, "key": key, "created": datetime.now(timezone.utc).isoformat(),
        "data": {"name": ds.name, "fingerprint": ds.fingerprint, "split_origin": ds.split_origin,
                 "split_counts": ds.split_counts()},
        "rows": len(ds), "label_names": ds.label_names, "encoder": encoder.settings(), "model_ref": encoder.ref.spec,
        "poolings": {p: {"description": POOLINGS[p].description, "shape": _shape(p, encoder),
                         "dim": int(np.prod(_shape(p, encoder)))} for p in poolings},
        "shards": shards, "tokens": int(tokens.sum()), "truncated": truncated,
        "device": str(encoder.device), "batch_tokens": encoder.batch_tokens,
        "cpu_bf16_speedup": round(cpu_bf16_speedup(), 3) if encoder.device.type == "cpu" else None,
        "last_run": run, "versions": _versions(),
    }


def _shape(pooling: str, encoder: Encoder) -> list[int]:
    return [encoder.num_layers + 1, encoder.hidden_size] if pooling == "layers" else [encoder.hidden_size]


def _versions() -> dict:
    names = ["bert-pipeline", "torch", "transformers", "tokenizers", "numpy", "pyarrow"]
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return {**found, "python": platform.python_version()}
