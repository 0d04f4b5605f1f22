"""Which cache a set of texts goes to, with each text tokenised once.

Why this needs care: the reading of long texts (mode, overlap) joins the cache key only when some text is over max
length (windows.keyed), so that short-text data keeps its key and vectors. Knowing that takes every text's token
count. Two ways avoid paying for it twice:
- a cache already made for these texts says it in its manifest (`long_texts`): found under the key with the reading
  or under the plain key, it is used without tokenising anything;
- otherwise the shards' own tokenisation (Encoder.read) gives the counts, and the chunks it made are kept (up to
  KEEP_TOKENS tokens, so memory stays bounded) for the local runner to embed, instead of being tokenised again.
"""

from dataclasses import dataclass, field, replace

import numpy as np

from pipeline.cache import EmbeddingCache, EncoderSettings, LongTexts, cache_dir, cache_key
from pipeline.data import Dataset
from pipeline.embed import windows
from pipeline.embed.encoder import Encoder
from pipeline.embed.windows import Chunk
from pipeline.storage import Location

KEEP_TOKENS = 2_000_000  # tokens of read shards kept for the runner (about 70 MB of Python ints), the rest re-read

Spans = list[tuple[int, int]]


@dataclass(frozen=True)
class Keyed:
    """The settings a cache of these texts is keyed on, how its texts are read (the manifest's `long_texts`), and
    the shards already tokenised on the way (by index, for these `spans`), which the local runner embeds as they are."""

    settings: EncoderSettings
    long_texts: LongTexts
    spans: Spans
    chunks: dict[int, Chunk] = field(default_factory=dict)

    def key(self, ds: Dataset) -> str:
        return cache_key(self.settings, ds.fingerprint)


def keyed(encoder: Encoder, ds: Dataset, embeddings: Location, spans: Spans, keep: bool = True) -> Keyed:
    """How `ds` is cached by `encoder`: from a finished cache's manifest if there is one, else by reading the shards
    (`keep`: hold the read chunks for a local runner; a remote one tokenises its own shards, so only counts are
    taken, the cheapest way). Refuses a text over the size cap, or an overlap that leaves windows no room."""
    windows.check_size(ds.texts)
    added = sum(windows.specials(encoder.fast_tokenizer))
    encoder.reading.window(encoder.max_length, added)
    found = _recorded(encoder, ds, embeddings, added, spans)
    if found is not None:
        return found
    chunks = _read(encoder, ds, spans) if keep else {}
    lengths = np.concatenate([_whole_counts(encoder, ds.texts[a:b], chunks.get(i)) for i, (a, b) in enumerate(spans)]
                             or [np.zeros(0, dtype=np.int64)])
    return from_counts(encoder, lengths, spans, chunks)


def from_counts(encoder: Encoder, lengths: np.ndarray, spans: Spans | None = None,
                chunks: dict[int, Chunk] | None = None) -> Keyed:
    """How texts with these whole token counts are cached (the Ray engine's read tasks count them on the cluster)."""
    added = sum(windows.specials(encoder.fast_tokenizer))
    info = windows.long_texts(lengths, encoder.max_length, encoder.reading, added)
    return Keyed(windows.keyed(encoder.settings(), encoder.reading, lengths, added), info, spans or [], chunks or {})


def _recorded(encoder: Encoder, ds: Dataset, embeddings: Location, added: int, spans: Spans) -> Keyed | None:
    """A finished cache of these texts under the key with this reading (the data has long texts) or under the plain
    key (it has none: the reading changes no vector there); a cache made before windows existed says neither."""
    over = np.array([encoder.max_length + 1])
    for settings, long in ((windows.keyed(encoder.settings(), encoder.reading, over, added), True),
                           (windows.keyed(encoder.settings(), encoder.reading, over[:0], added), False)):
        key = cache_key(settings, ds.fingerprint)
        manifest = EmbeddingCache(cache_dir(embeddings, ds.name, encoder.ref.name, key)).previous_manifest()
        info = manifest.long_texts if manifest is not None and manifest.key == key else None
        if info is not None and bool(info.over) == long:
            reading = {"mode": encoder.reading.mode, "overlap": encoder.reading.window(encoder.max_length, added)[1]}
            return Keyed(settings, info if long else replace(info, **reading), spans)
    return None


def _read(encoder: Encoder, ds: Dataset, spans: Spans) -> dict[int, Chunk]:
    """The shards' chunks, read in order while they hold at most KEEP_TOKENS model tokens together."""
    chunks, held = {}, 0
    for i, (a, b) in enumerate(spans):
        chunk = encoder.read(ds.texts[a:b])
        held += int(chunk.lengths.sum())
        if held > KEEP_TOKENS:
            break
        chunks[i] = chunk
    return chunks


def _whole_counts(encoder: Encoder, texts: list[str], chunk: Chunk | None) -> np.ndarray:
    """Every text's whole token count: from its read chunk, where only a text cut by 'truncate' is counted again
    (the chunk holds its cut length), or, for a shard not kept, by counting alone."""
    fast = encoder.fast_tokenizer
    if chunk is None:
        return windows.token_counts(fast, texts)
    counts = chunk.text_tokens.copy()
    cut = np.flatnonzero(chunk.truncated & (counts <= encoder.max_length))
    if len(cut):
        counts[cut] = windows.token_counts(fast, [texts[i] for i in cut])
    return counts
