"""Peak memory of `bert-pipeline predict` on growing slices of one file: one fresh process per size, peak RSS read.

    .venv/bin/python scripts/predict_memory.py --run artifacts/runs/<cache>/mean/logreg \\
        --data ../shared/data/sst2-glue/train.tsv --sizes 1000,10000,67349

Per size, two processes: a plain predict, which embeds the slice into a fresh cache and scores it (the streaming
path), then the same predict with --label-col, which reuses that cache and adds the metrics and report. GLUE's 0/1
labels are written as negative/positive so that a run trained on the demo data (Rotten Tomatoes) scores them:
cross-domain accuracy. Prints a Markdown table.
"""

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.bench.scaling import RUNNER
from pipeline.registry import parse_sizes

NAMES = {"0": "negative", "1": "positive"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--data", default="../shared/data/sst2-glue/train.tsv")
    parser.add_argument("--text-col", default="sentence")
    parser.add_argument("--sizes", default="1000,10000,67349")
    args = parser.parse_args()
    with open(args.data, newline="", encoding="utf-8") as handle:
        rows = [(r[args.text_col], NAMES.get(r["label"], r["label"])) for r in csv.DictReader(handle, delimiter="\t")]
    print("| rows | predict: seconds | texts/s | peak RSS (MB) | with --label-col: seconds | peak RSS (MB) | "
          "accuracy |\n|---|---|---|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for size in parse_sizes(args.sizes):
            data = Path(tmp) / f"slice{size}.csv"
            with data.open("w", newline="", encoding="utf-8") as handle:
                csv.writer(handle).writerows([("text", "label"), *rows[:size]])
            common = ["predict", "--run", args.run, "--input", str(data), "--embeddings", str(Path(tmp) / "emb"),
                      "--no-progress"]
            plain = measure([*common, "--output", str(Path(tmp) / f"plain{size}.parquet")], size)
            out = Path(tmp) / f"scored{size}.parquet"
            labelled = measure([*common, "--label-col", "label", "--output", str(out)], size)
            accuracy = json.loads(out.with_suffix(".metrics.json").read_text())["metrics"]["accuracy"]
            print(f"| {size} | {plain[0]:.1f} | {size / plain[0]:.1f} | {plain[1]:.0f} | {labelled[0]:.1f} | "
                  f"{labelled[1]:.0f} | {accuracy:.4f} |", flush=True)


def measure(args: list[str], size: int) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of one fresh `bert-pipeline` process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", RUNNER, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"predict of {size} rows failed: {done.stderr.strip()[-500:]}")
    return seconds, int(done.stderr.strip().splitlines()[-1].split()[-1]) / 1024

if __name__ == "__main__":
    main()
