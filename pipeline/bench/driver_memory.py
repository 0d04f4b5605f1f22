"""Driver memory of `embed --engine ray`: the driver's peak RSS for data of several sizes on a local multi-node Ray
cluster (ray.cluster_utils on 127.0.0.1). The driver holds a few tens of bytes per row (ray_rows.py), so its peak
should barely grow with the data; this measures it.

    python -m pipeline.bench.driver_memory --sizes 20000,200000 --nodes 2

Each size: a CSV of ~1 KB texts (seeded), then `bert-pipeline embed --engine ray` in its own process, joined to the
cluster, with a short --max-length and texts cut there (so the run measures the driver, not the model); the peak RSS
is that process's own (wait4). Writes driver-memory.json and .md under --out.
"""

import argparse
import csv
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.paths import write_record
from pipeline.records import JsonRecord

WORDS = ("the film story acting plot scene music actor director script camera light dark funny sad long short good "
         "bad great awful quiet loud slow fast").split()
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # Ray keeps 127.0.0.1 instead of this machine's outward IP


@dataclass(frozen=True)
class DriverMemoryRecord(JsonRecord):
    """driver-memory.json: the cluster and text settings, and each size's driver peak RSS and wall time."""

    nodes: int
    model: str
    max_length: int
    text_bytes: int
    cpu: str
    load_1min: float
    runs: list[dict]
    schema: int = 1

    REWRITE = "`python -m pipeline.bench.driver_memory` again"


def write_rows(path: Path, rows: int, text_bytes: int, seed: int = 0) -> Path:
    """`rows` texts of about `text_bytes` bytes each, labelled pos/neg, as CSV."""
    rng = random.Random(seed)
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["text", "label"])
        for i in range(rows):
            words: list[str] = []
            while sum(map(len, words)) + len(words) < text_bytes:
                words.append(rng.choice(WORDS))
            out.writerow([f"{i} " + " ".join(words), "pos" if i % 2 else "neg"])
    return path


def run_driver(address: str, data: Path, out: Path, max_length: int, model: str | None) -> tuple[int, float, str]:
    """One `embed --engine ray` process joined to the cluster: its peak RSS (bytes), wall seconds and summary."""
    command = [sys.executable, "-m", "pipeline", "embed", "--data", str(data), "--engine", "ray", "--ray-address",
               address, "--out", str(out), "--max-length", str(max_length), "--long-texts", "truncate",
               "--pooling", "mean", "--dtype", "fp32", "--no-progress", *(["--model", model] if model else [])]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, **LOOPBACK})
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"embed failed for {data}:\n{output[-3000:]}")
    return usage.ru_maxrss * 1024, time.perf_counter() - started, output.strip().splitlines()[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="20000,200000", help="Rows per run, comma-separated.")
    parser.add_argument("--nodes", type=int, default=2, help="Nodes of the local Ray cluster (1 CPU each).")
    parser.add_argument("--max-length", type=int, default=16)
    parser.add_argument("--text-bytes", type=int, default=1000)
    parser.add_argument("--model", default=None, help="--model of embed [default: embed's default model].")
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench"))
    args = parser.parse_args(argv)
    os.environ.update(LOOPBACK)
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "object_store_memory": 400 * 1024**2}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    results = []
    try:
        for _ in range(args.nodes - 1):
            cluster.add_node(**node)
        cluster.wait_for_nodes()
        with tempfile.TemporaryDirectory() as tmp:
            for rows in [int(s) for s in args.sizes.split(",")]:
                data = write_rows(Path(tmp) / f"rows-{rows}.csv", rows, args.text_bytes)
                peak, seconds, summary = run_driver(cluster.address, data, Path(tmp) / "cache", args.max_length,
                                                   args.model)
                results.append({"rows": rows, "peak_rss_mb": round(peak / 2**20, 1), "seconds": round(seconds, 1),
                                "summary": summary})
                print(f"{rows} rows: driver peak RSS {peak / 2**20:.0f} MB, {seconds:.0f} s; {summary}", flush=True)
    finally:
        cluster.shutdown()
    record = DriverMemoryRecord(args.nodes, args.model or "default", args.max_length, args.text_bytes,
                                platform.processor() or platform.machine(), os.getloadavg()[0], results)
    lines = ["| rows | driver peak RSS (MB) | wall s |", "|---|---|---|",
             *[f"| {r['rows']} | {r['peak_rss_mb']} | {r['seconds']} |" for r in results]]
    for path in write_record(args.out, "driver-memory", record.to_json(), "\n".join(lines) + "\n"):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
