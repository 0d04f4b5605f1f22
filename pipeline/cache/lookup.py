"""Finding a finished cache by what it holds: the data's fingerprint and the model's weights and tokenizer hashes."""

from pipeline.cache.records import ModelIdentity
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
