"""Computing shards: the unfinished shards of a cache, embedded and written, on any engine (this process, or the
actors of ray_engine.py). Each shard is one chunk of rows through Encoder.encode, then one Parquet file."""

import os
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from pipeline.cache import EmbeddingCache, shard_table
from pipeline.data import Dataset
from pipeline.embed.encoder import Encoder
from pipeline.embed.windows import Chunk

# Shards written at once, each in its own thread: one on small machines (the model needs the cores); a GPU host's
# spare cores write several, since there the Parquet write and sha256, not the model, set the pace.
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # this process's
WRITERS = max(1, min(4, CORES // 4))
Spans = list[tuple[int, int]]


def run_local(ds: Dataset, encoder: Encoder, store: EmbeddingCache, spans: Spans,
              todo: dict[int, list[str]], progress: bool, read: dict[int, Chunk] | None = None) -> None:
    """Compute the missing poolings of each unfinished shard. Three things overlap: the next shard is tokenised and
    the previous ones written (Parquet, sha256) in other threads while this one runs on the model. At most WRITERS
    shards wait to be written, so memory stays flat whichever side is slower. `read`: shards already tokenised (by
    keying the cache), embedded as they are and let go once embedded."""
    reused = len(ds) - sum(spans[i][1] - spans[i][0] for i in todo)
    bar = tqdm(total=len(ds), initial=reused, unit="text", desc="embed", disable=not progress, file=sys.stderr,
               dynamic_ncols=True, smoothing=0.1)
    order = sorted(todo)
    with ThreadPoolExecutor(max_workers=1) as prefetch, ThreadPoolExecutor(max_workers=WRITERS) as writer:
        read = {} if read is None else read  # popped: a chunk is let go once embedded
        tokenize = lambda i: read.pop(i, None) or encoder.read(ds.texts[spans[i][0]:spans[i][1]])  # noqa: E731
        pending, writing = prefetch.submit(tokenize, order[0]), deque()
        for n, index in enumerate(order):
            tokens = pending.result()
            if n + 1 < len(order):
                pending = prefetch.submit(tokenize, order[n + 1])
            vectors = encoder.encode(tokens, todo[index], bar.update)
            while len(writing) >= WRITERS:
                writing.popleft().result()
            writing.append(writer.submit(write_shard, store, index, ds, *spans[index], tokens, vectors))
        for written in writing:
            written.result()
    bar.close()


def compute_shard(ds: Dataset, encoder: Encoder, store: EmbeddingCache, index: int, span: tuple[int, int],
                  poolings: list[str]) -> None:
    """Embed one shard's rows and write the shard (a Ray actor's unit of work)."""
    a, b = span
    tokens = encoder.read(ds.texts[a:b])
    write_shard(store, index, ds, a, b, tokens, encoder.encode(tokens, poolings))


def write_shard(store: EmbeddingCache, index: int, ds: Dataset, a: int, b: int, tokens: Chunk,
                vectors: dict[str, np.ndarray]) -> None:
    """Write a shard with its new poolings merged into the ones it already had (if it was whole), and its texts."""
    old = store.shard_vectors(index, ds.ids[a:b]) or {}
    table = shard_table(ds.ids[a:b], list(ds.splits[a:b]), ds.labels[a:b], tokens.text_tokens, tokens.truncated,
                        {**old, **vectors}, ds.texts[a:b])
    store.write_shard(index, table)
