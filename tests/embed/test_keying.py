"""The cache key without a counting pass: a first embed tokenises each text once (the shards' own reading gives the
counts the key needs), a second finds its cache from the manifest without tokenising at all, and the key and the
vectors are what counting every text first gave."""

import pytest

from pipeline.cache import cache_key
from pipeline.data import load_dataset
from pipeline.embed import keying, windows
from pipeline.embed.encoder import load_encoder
from pipeline.embed.settings import EncoderOptions
from pipeline.embed.shards import run_local
from pipeline.embed.stage import embed_dataset

from conftest import sentiment_rows, write_csv

LONG = " ".join(["the movie was very long and the plot is a story"] * 12)


@pytest.fixture
def counted(monkeypatch):
    """Texts through encoder.tokenize, and those counted on their own (the counting pass this design removed; with
    'truncate', a cut text's whole length is counted, since its shard row holds the cut one)."""
    from pipeline.embed.encoder import Encoder

    seen, recounted, tokenize, count = [], [], Encoder.tokenize, keying.windows.token_counts
    monkeypatch.setattr(Encoder, "tokenize", lambda self, texts: seen.extend(texts) or tokenize(self, texts))
    monkeypatch.setattr(keying.windows, "token_counts", lambda fast, ts: recounted.extend(ts) or count(fast, ts))
    return seen, recounted


def old_key(encoder, ds) -> str:
    """The key as it was made before: every text counted, then windows.keyed."""
    fast = encoder.fast_tokenizer
    added = sum(windows.specials(fast))
    return cache_key(windows.keyed(encoder.settings(), encoder.reading, windows.token_counts(fast, ds.texts), added),
                     ds.fingerprint)


@pytest.mark.parametrize("long_texts", [0, 3], ids=["short", "some-long"])
def test_each_text_is_tokenised_once_and_the_key_is_unchanged(tiny_bert, tmp_path, counted, monkeypatch, long_texts):
    rows = sentiment_rows(40) + [(LONG + f" {i}", "positive") for i in range(long_texts)]
    ds = load_dataset(write_csv(tmp_path / "data.csv", rows))
    encoder = load_encoder(str(tiny_bert), EncoderOptions(32, "cpu", "fp32", runtime="torch"))
    seen, recounted = counted
    result = embed_dataset(ds, encoder, ["mean"], tmp_path / "e", shard_rows=16, progress=False)
    assert sorted(seen) == sorted(ds.texts) and recounted == [], "every text tokenised exactly once"
    assert result.manifest.long_texts.over == long_texts

    seen.clear()
    again = embed_dataset(ds, encoder, ["mean"], tmp_path / "e", shard_rows=16, progress=False)
    assert seen == recounted == [] and again.path == result.path and again.computed_rows == 0

    monkeypatch.undo()
    assert result.manifest.key == old_key(encoder, ds)
    counted_first = embed_dataset(ds, encoder, ["mean"], tmp_path / "old", shard_rows=16, progress=False,
                                  runner=run_local)  # as before: every text counted, then each shard tokenised
    assert counted_first.path.name == result.path.name
    for new, old in zip(sorted(result.path.glob("*.parquet")), sorted(counted_first.path.glob("*.parquet")),
                        strict=True):
        assert new.read_bytes() == old.read_bytes(), "the shards are bitwise those of the counting design"


def test_a_long_cache_is_found_for_its_reading_only(tiny_bert, tmp_path, counted):
    """The reading keys long data: truncate then window make two caches, and each is found again untokenised. Only
    'truncate' counts its cut texts again (their whole length, for the manifest's token counts)."""
    ds = load_dataset(write_csv(tmp_path / "data.csv", sentiment_rows(10) + [(LONG, "negative")] * 2))
    seen, recounted = counted
    paths = {}
    for mode in ("truncate", "window", "truncate"):
        encoder = load_encoder(str(tiny_bert), EncoderOptions(32, "cpu", "fp32", runtime="torch", long_texts=mode))
        seen.clear(), recounted.clear()
        result = embed_dataset(ds, encoder, ["mean"], tmp_path / "e", progress=False)
        assert result.manifest.long_texts.mode == mode and result.manifest.long_texts.p95_tokens > 32
        assert paths.setdefault(mode, result.path) == result.path
        assert sorted(seen) == ([] if result.computed_rows == 0 else sorted(ds.texts))
        assert recounted == ([LONG] * 2 if mode == "truncate" and result.computed_rows else [])
    assert len(set(paths.values())) == 2
