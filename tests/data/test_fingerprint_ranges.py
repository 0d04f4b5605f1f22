"""The data fingerprint as an ordered combination of range digests (what Ray tasks hash on a cluster): data up to
RANGE_ROWS rows keeps the fingerprint, and so every cache key, it had before ranges existed; larger data combines its
ranges in order; the seeded split is a function of the texts' first-seen order and labels only."""

import hashlib
import json

import numpy as np
import pytest

from pipeline.data import dataset as dataset_module
from pipeline.data import load_dataset
from pipeline.data.dataset import auto_split, combine_ranges, range_digest, split_by_keys

from conftest import sentiment_rows, write_csv


def whole_file_digest(ds) -> str:
    """The fingerprint as it was computed before ranges: one sha256 over the label names and every row."""
    digest = hashlib.sha256(json.dumps(ds.label_names).encode())
    for row in zip(ds.ids, ds.texts, ds.labels.tolist(), ds.splits.tolist(), strict=True):
        digest.update(json.dumps(row, ensure_ascii=False).encode() + b"\n")
    return digest.hexdigest()


def test_data_up_to_one_range_keeps_its_fingerprint(tmp_path):
    ds = load_dataset(write_csv(tmp_path / "small.csv", sentiment_rows(500)))
    assert ds.fingerprint == whole_file_digest(ds)


def test_larger_data_combines_its_ranges_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(dataset_module, "RANGE_ROWS", 64)
    ds = load_dataset(write_csv(tmp_path / "rows.csv", sentiment_rows(200)))
    rows = list(zip(ds.ids, ds.texts, ds.labels.tolist(), ds.splits.tolist(), strict=True))
    parts = [range_digest(ds.label_names, rows[a:a + 64]) for a in range(0, 200, 64)]
    assert len(parts) == 4 and ds.fingerprint == combine_ranges(parts) != whole_file_digest(ds)
    assert combine_ranges(parts[::-1]) != ds.fingerprint


@pytest.mark.parametrize("seed", [0, 3])
def test_the_split_from_text_digests_is_the_split_from_texts(seed):
    texts = [t for t, _ in sentiment_rows(400, seed=seed)] * 2  # duplicates share a split
    labels = np.random.default_rng(seed).integers(0, 3, len(texts))
    digests = np.array([hashlib.blake2b(t.encode(), digest_size=16).digest() for t in texts], dtype="S16")
    by_text = auto_split(texts, labels, 0.25, seed)
    assert (split_by_keys(digests, labels, 0.25, seed) == by_text).all()
    assert (by_text[:400] == by_text[400:]).all()
