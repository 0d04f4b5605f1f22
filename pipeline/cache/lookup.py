"""Finding a finished cache by what it holds (the data's fingerprint, the model's weights and tokenizer hashes), and
deciding whether a cache is complete for a key: the one rule the embed stage and predict share."""

from collections.abc import Iterable

from pipeline.cache.records import ModelIdentity, ShardRecord
from pipeline.cache.store import EmbeddingCache
from pipeline.errors import PipelineError
from pipeline.paths import safe_name
from pipeline.storage import Location, location


def find_cache(embeddings: Location, data_name: str, model: ModelIdentity, data_fingerprint: str) -> Location | None:
    """The newest finished cache of this data (same rows, labels and split) and this very model under `embeddings`.

    Matched on the model's weights and tokenizer hashes, not its folder name: two models in folders of the same
    name, or a model whose weights changed in place, never share a cache."""
    prefix = f"{safe_name(data_name)}__{safe_name(model.name.split('/')[-1])}__"
    found = []
    for path in location(embeddings).glob(prefix + "*"):
        manifest = EmbeddingCache(path).previous_manifest()
        if manifest and manifest.data.fingerprint == data_fingerprint and _same_model(manifest.encoder.model, model):
            found.append((manifest.created, path))
    return max(found)[1] if found else None


def require_cache(embeddings: Location, data_name: str, data_fingerprint: str, model: ModelIdentity,
                  embed_hint: str) -> Location:
    """`find_cache`, or a one-line error naming the command that makes the cache."""
    found = find_cache(embeddings, data_name, model, data_fingerprint)
    if found is None:
        raise PipelineError(f"no cache for data '{data_name}' and model '{model.name}' (these weights) under "
                            f"{embeddings}: run `{embed_hint}` first")
    return found


def _same_model(a: ModelIdentity, b: ModelIdentity) -> bool:
    return (a.weights_sha256, a.tokenizer_sha256) == (b.weights_sha256, b.tokenizer_sha256)


def verified_shards(store: EmbeddingCache, key: str, rows: list[int] | None = None
                    ) -> tuple[dict[int, ShardRecord], set[str]]:
    """The shards the manifest of `key` vouches for that still hash to its record (each read once, to hash it), and
    the poolings it lists (a manifest is written only when every shard holds all of them). `rows`: each shard's
    expected row count (default: the manifest's own)."""
    previous = store.previous_manifest()
    if previous is None or previous.key != key:
        return {}, set()
    rows = [shard.rows for shard in previous.shards] if rows is None else rows
    if len(previous.shards) != len(rows):
        return {}, set()
    records = {i: record for i, (record, n) in enumerate(zip(previous.shards, rows, strict=True))
               if store.verified_shard(i, n, record)}
    return records, set(previous.poolings)


def is_complete(store: EmbeddingCache, key: str, poolings: Iterable[str]) -> bool:
    """A finished cache of `key` holding `poolings`, every shard intact: usable as it is, nothing to compute."""
    verified, listed = verified_shards(store, key)
    return bool(verified) and len(verified) == len(store.previous_manifest().shards) and set(poolings) <= listed
