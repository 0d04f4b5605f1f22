"""Do the embed and predict stages stream? Time and peak memory (RSS) of `embed` or `predict` on growing slices of
one data set.

Each size runs in its own process, so its peak RSS is its own: time should grow linearly and memory stay flat.
"""

import csv
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.data import Dataset
from pipeline.errors import PipelineError
from pipeline.paths import write_record

RUNNER = """
import resource, sys
from pipeline.cli import main
try:
    main()
finally:
    print("peak_rss_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


Command = Callable[[Path, Path], list[str]]  # (the slice's CSV, a scratch folder) -> bert-pipeline arguments


def embed_command(model: str, extra_args: list[str]) -> Command:
    """`embed` of the slice with mean pooling into a new cache."""
    return lambda data, tmp: ["embed", "--data", str(data), "--model", model, "--pooling", "mean", "--out",
                              str(tmp / "emb"), "--no-progress", *extra_args]


def predict_command(run: Path) -> Command:
    """`predict` of the slice with a trained run: embedded into a new cache shard by shard, then scored."""
    return lambda data, tmp: ["predict", "--run", str(run), "--input", str(data), "--output",
                              str(tmp / f"{data.stem}.parquet"), "--embeddings", str(tmp / "emb"), "--no-progress"]


def scaling_benchmark(ds: Dataset, sizes: list[int], command: Command, log=print) -> list[dict]:
    """One fresh `bert-pipeline` process per size (a new cache each), timed, its peak RSS read."""
    if max(sizes) > len(ds):
        raise PipelineError(f"--sizes asks for {max(sizes)} texts but the data has {len(ds)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            path = Path(tmp) / f"slice{size}.csv"
            with path.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["text", "label"])
                writer.writerows(zip(ds.texts[:size], ds.labels[:size].tolist(), strict=True))
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", RUNNER, *command(path, Path(tmp) / str(size))],
                                  capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines()[-2:-1] or ["no output"])[0]  # the final line is the RSS
                raise PipelineError(f"the run on {size} texts failed: {last}")
            rss = int(done.stderr.strip().splitlines()[-1].split()[-1]) / 1024
            rows.append({"texts": size, "seconds": seconds, "texts_per_s": size / seconds, "peak_rss_mb": rss})
            log(f"{size:>7} texts {seconds:8.1f}s {size / seconds:8.1f} texts/s  peak RSS {rss:7.0f} MB")
    return rows


def write_scaling(folder: Path, rows: list[dict]) -> list[Path]:
    """scaling.json and scaling.md under `folder`."""
    return write_record(folder, "scaling", rows, scaling_markdown(rows))


def scaling_markdown(rows: list[dict]) -> str:
    lines = ["| texts | seconds | texts/s | peak RSS (MB) |", "|---|---|---|---|"]
    lines += [f"| {r['texts']} | {r['seconds']:.1f} | {r['texts_per_s']:.1f} | {r['peak_rss_mb']:.0f} |" for r in rows]
    return "\n".join(lines) + "\n"

