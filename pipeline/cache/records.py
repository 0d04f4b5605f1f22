"""The typed records that cross the seam between the stages: what identifies a model and an encoder's settings
(both part of every cache key), and the manifest that vouches for a finished cache. Each has to_json/from_json and a
schema version that is checked on read.
"""

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.paths import safe_name
from pipeline.records import JsonRecord, check_schema

MANIFEST_FILE = "_manifest.json"
DROPPED = frozenset({"cpu_bf16_speedup"})  # manifest fields of older versions, no longer written or read

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ModelIdentity:
    """What identifies a model's files: part of every cache key and run record."""

    name: str
    source: str
    revision: str | None
    weights_sha256: str
    tokenizer_sha256: str


@dataclass(frozen=True)
class EncoderSettings:
    """Everything about the encoder that changes the vectors: the model, max length, compute dtype and the runtime
    that ran it (records written before runtimes existed were all 'torch'), and how texts over max length were read
    ('window' with its overlap, or 'truncate'): set only when some text was over it, and only then in the key and
    the JSON, so that short-text data keeps the key it had before windows existed. An int8 cache also names its
    calibrated graph (`int8_graph`), so another calibration sample is another cache."""

    model: ModelIdentity
    max_length: int
    dtype: str
    runtime: str = "torch"
    long_texts: str | None = None
    window_overlap: int | None = None
    int8_graph: str | None = None  # --dtype int8: the key of the calibrated graph (runtimes/int8.py), else unset

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None or k not in OPTIONAL_FIELDS}

    @classmethod
    def from_json(cls, record: dict) -> "EncoderSettings":
        overlap = record.get("window_overlap")
        return cls(ModelIdentity(**record["model"]), int(record["max_length"]), str(record["dtype"]),
                   str(record.get("runtime", "torch")), record.get("long_texts"),
                   None if overlap is None else int(overlap), record.get("int8_graph"))


OPTIONAL_FIELDS = ("long_texts", "window_overlap", "int8_graph")  # in the key and JSON only when set


@dataclass(frozen=True)
class Int8Check:
    """How far an int8 cache is from full precision: the guard's cosines (int8 against fp32, per text the worst of
    the cached poolings) over `texts` held-out train texts, after calibrating on `calibration_texts` others."""

    texts: int
    calibration_texts: int
    mean: float
    p1: float
    min: float

    def describe(self) -> str:
        return (f"int8 cosine to fp32 over {self.texts} held-out train texts: mean {self.mean:.5f}, 1st percentile "
                f"{self.p1:.5f}, min {self.min:.5f} (calibrated on {self.calibration_texts})")


@dataclass(frozen=True)
class LongTexts:
    """How a cache's texts over max length were read, and how many there were: token counts are of whole texts,
    special tokens included; `windows` is the rows the model ran (one per short text)."""

    mode: str
    overlap: int
    texts: int
    over: int
    median_tokens: float
    p95_tokens: float
    windows: int

    def describe(self, max_length: int) -> str:
        """One line on how the texts were read: how many were over max length, their token counts, windows or cut
        (embed, predict and train's report.md all say it in these words)."""
        counts = f"median {self.median_tokens:.0f}, p95 {self.p95_tokens:.0f} tokens"
        if not self.over:
            return f"all {self.texts} texts fit in {max_length} tokens ({counts})"
        how = (f"read whole in {self.windows - (self.texts - self.over)} windows ("
               f"{(self.windows - self.texts + self.over) / self.over:.1f} per long text, overlap {self.overlap})"
               if self.mode == "window" else f"cut at {max_length}")
        return f"{self.over} of {self.texts} texts over {max_length} tokens ({counts}): {how}"


@dataclass(frozen=True)
class PoolingInfo:
    """One cached pooling: what it means and the shape of its vector per text."""

    description: str
    shape: list[int]
    dim: int


@dataclass(frozen=True)
class ShardRecord:
    """A finished shard as the manifest vouches for it."""

    file: str
    rows: int
    bytes: int
    sha256: str
    node: str | None = None  # the Ray node that wrote it (for debugging; not in the key); None on the local engine


@dataclass(frozen=True)
class DataInfo:
    name: str
    fingerprint: str
    split_origin: str
    split_counts: dict[str, int]


@dataclass(frozen=True)
class RunStats:
    """What the last embed run computed, and how fast (None speeds when it only reused shards)."""

    seconds: float
    computed_rows: int
    computed_tokens: int
    computed_shards: list[int]
    texts_per_s: float | None
    tokens_per_s: float | None
    workers: str | None = None  # who computed the shards, e.g. '2 actors on 2 nodes' (Ray); None in this process


@dataclass(frozen=True)
class Manifest(JsonRecord):
    """The contract between the stages: a finished cache's identity, poolings, labels and shards (_manifest.json)."""

    name: str
    key: str
    created: str
    data: DataInfo
    rows: int
    label_names: list[str]
    encoder: EncoderSettings
    model_ref: str
    poolings: dict[str, PoolingInfo]
    shards: list[ShardRecord]
    tokens: int
    truncated: int
    device: str
    batch_tokens: int
    last_run: RunStats
    versions: dict[str, str | None]
    schema: int = field(default=SCHEMA_VERSION)
    long_texts: LongTexts | None = None  # None in caches made before windows existed
    int8: Int8Check | None = None  # --dtype int8 only

    def to_json(self) -> dict:
        return {**asdict(self), "encoder": self.encoder.to_json()}

    @classmethod
    def from_json(cls, record: dict, where: Path) -> "Manifest":
        """Parse and check a manifest; any other schema or a damaged one gets a one-line error with the fix. Fields
        older versions wrote and no one reads any more (DROPPED) are skipped."""
        check_schema(record, where / MANIFEST_FILE, "`bert-pipeline embed` again to rebuild the cache", SCHEMA_VERSION)
        try:
            kept = {k: v for k, v in record.items() if k not in DROPPED}
            manifest = cls(**{**kept, "data": DataInfo(**record["data"]),
                              "encoder": EncoderSettings.from_json(record["encoder"]),
                              "poolings": {k: PoolingInfo(**v) for k, v in record["poolings"].items()},
                              "shards": [ShardRecord(**s) for s in record["shards"]],
                              "last_run": RunStats(**record["last_run"]),
                              "long_texts": LongTexts(**record["long_texts"]) if record.get("long_texts") else None,
                              "int8": Int8Check(**record["int8"]) if record.get("int8") else None})
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise PipelineError(f"the manifest of {where} is damaged ({type(exc).__name__}: {exc}): run the same "
                                "`bert-pipeline embed` command again to rebuild it") from None
        if manifest.name != safe_name(manifest.name, 200):
            raise PipelineError(f"the manifest of {where} names the cache {manifest.name!r}, which is not a plain "
                                "folder name: it was edited or crafted; run `bert-pipeline embed` again")
        return manifest


def cache_key(settings: EncoderSettings, data_fingerprint: str) -> str:
    """sha256 of everything that changes the vectors: model and tokenizer identity, max length, dtype, runtime, the
    data."""
    blob = json.dumps({"schema": SCHEMA_VERSION, "encoder": settings.to_json(), "data": data_fingerprint},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()
