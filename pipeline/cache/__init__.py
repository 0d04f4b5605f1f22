"""The embedding cache: one folder per key, Parquet shards with one fixed-size-list column per pooling, a manifest.

Layout of `<embeddings>/<data>__<model>__<key12>/`:
  _key.json             what the key was made of, and the shard size (written first)
  shard-00000.parquet   id, split, label, text, n_tokens, truncated, emb_<pooling>... (page checksums on)
  _manifest.json        model identity, poolings and dims, label names, shard list, stats (written last)
Every write goes to a temp file and is renamed into place, so a killed run leaves whole files or none. The `text`
column (each row's text, so reports can quote it) is not part of the key; shards written before it existed lack it and
still load, with `Embeddings.texts` None for their rows.
"""

from pipeline.cache.lookup import find_cache, is_complete, require_cache, verified_shards
from pipeline.cache.records import (
                                    MANIFEST_FILE,
                                    SCHEMA_VERSION,
                                    DataInfo,
                                    EncoderSettings,
                                    Int8Check,
                                    LongTexts,
                                    Manifest,
                                    ModelIdentity,
                                    PoolingInfo,
                                    RunStats,
                                    ShardRecord,
                                    cache_key,
)
from pipeline.cache.shards import EMB_PREFIX, TEXT, shard_table
from pipeline.cache.store import (
                                    KEY_FILE,
                                    LAYERS,
                                    EmbeddingCache,
                                    Embeddings,
                                    cache_dir,
                                    load_embeddings,
                                    pooling_column,
                                    pooling_source,
)

__all__ = ["DataInfo", "EMB_PREFIX", "EmbeddingCache", "Embeddings", "EncoderSettings", "Int8Check", "KEY_FILE",
           "LAYERS", "LongTexts", "MANIFEST_FILE", "Manifest", "ModelIdentity", "PoolingInfo", "RunStats",
           "SCHEMA_VERSION", "ShardRecord", "TEXT", "cache_dir", "cache_key", "find_cache",
           "is_complete", "load_embeddings", "pooling_column", "pooling_source", "require_cache", "shard_table",
           "verified_shards"]
