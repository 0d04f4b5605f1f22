"""Driver memory and speed of `embed --engine ray`: the driver's peak RSS and the texts/s for data of several sizes
on local multi-node Ray clusters (ray.cluster_utils on 127.0.0.1, 1 CPU per node). The driver holds a few tens of
bytes per row (ray_rows.py), so its peak should barely grow with the data; and the texts/s on 1 against 2 nodes is
what a second node buys.

    python -m pipeline.bench.driver_memory --sizes 20000,200000 --nodes 2
    python -m pipeline.bench.driver_memory --data ../shared/data/sst2 --sizes 2000 --nodes 1,2 --max-length 128 \
        --shard-rows 250

Each size: a CSV of ~1 KB texts (seeded), or the first rows of --data, then `bert-pipeline embed --engine ray` in its
own process, joined to the cluster, one actor per node; the peak RSS is that process's own (wait4), the texts/s the
cache manifest's (the Ray job's wall time: actors starting, the model loading once per actor, shards embedded and
uploaded). One cluster at a time, shut down before the next. Writes driver-memory.json and .md under --out.
"""

import argparse
import csv
import json
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

    nodes: list[int]
    data: str  # 'synthetic' (~text_bytes texts) or the --data whose first rows were embedded
    model: str
    max_length: int
    text_bytes: int
    cpu: str
    load_1min: float
    runs: list[dict]
    schema: int = 2

    REWRITE = "`python -m pipeline.bench.driver_memory` again"


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what the platform says."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


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


def write_data_rows(path: Path, data: str, rows: int) -> Path:
    """The first `rows` rows of `data` (a file or a benchmark folder, as embed's --data), as text,label CSV."""
    from pipeline.data import DataSpec

    ds = DataSpec(data).load()
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["text", "label"])
        out.writerows([ds.texts[i], ds.label_names[ds.labels[i]]] for i in range(min(rows, len(ds))))
    return path


def run_driver(address: str, data: Path, out: Path, nodes: int, args: argparse.Namespace) -> dict:
    """One `embed --engine ray` process joined to the cluster, one actor per node: its peak RSS (MB), wall seconds,
    the texts/s its cache records and its summary line."""
    command = [sys.executable, "-m", "pipeline", "embed", "--data", str(data), "--engine", "ray", "--ray-address",
               address, "--ray-actors", str(nodes), "--out", str(out), "--max-length", str(args.max_length),
               "--long-texts", "truncate", "--pooling", "mean", "--dtype", "fp32", "--no-progress",
               *(["--model", args.model] if args.model else []),
               *(["--shard-rows", str(args.shard_rows)] if args.shard_rows else [])]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, **LOOPBACK})
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"embed failed for {data}:\n{output[-3000:]}")
    lines = output.strip().splitlines()
    cache = Path(lines[-1].removeprefix("cache: "))
    speed = json.loads((cache / "_manifest.json").read_text())["last_run"]["texts_per_s"]
    return {"nodes": nodes, "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "seconds": round(time.perf_counter() - started, 1), "texts_per_s": round(speed or 0, 1),
            "summary": lines[0]}


def measure(nodes: int, args: argparse.Namespace, tmp: Path) -> list[dict]:
    """Every size on a fresh local cluster of `nodes` 1-CPU nodes (fresh caches: every shard is computed)."""
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "object_store_memory": 400 * 1024**2}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    results = []
    try:
        for _ in range(nodes - 1):
            cluster.add_node(**node)
        cluster.wait_for_nodes()
        for rows in [int(s) for s in args.sizes.split(",")]:
            data = (write_data_rows(tmp / f"rows-{rows}.csv", args.data, rows) if args.data
                    else write_rows(tmp / f"rows-{rows}.csv", rows, args.text_bytes))
            run = {"rows": rows, **run_driver(cluster.address, data, tmp / f"cache-{nodes}", nodes, args)}
            results.append(run)
            print(f"{rows} rows on {nodes} node(s): driver peak RSS {run['peak_rss_mb']:.0f} MB, {run['seconds']:.0f} "
                  f"s, {run['texts_per_s']:.1f} texts/s; {run['summary']}", flush=True)
    finally:
        cluster.shutdown()
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="20000,200000", help="Rows per run, comma-separated.")
    parser.add_argument("--nodes", default="2", help="Nodes of the local Ray cluster (1 CPU each), comma-separated: "
                                                     "one cluster per count, one after the other.")
    parser.add_argument("--data", default=None, help="Embed the first rows of this data (a file or a benchmark "
                                                     "folder) instead of synthetic ~--text-bytes texts.")
    parser.add_argument("--max-length", type=int, default=16)
    parser.add_argument("--text-bytes", type=int, default=1000)
    parser.add_argument("--shard-rows", type=int, default=None, help="--shard-rows of embed [default: embed's].")
    parser.add_argument("--model", default=None, help="--model of embed [default: embed's default model].")
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench"))
    args = parser.parse_args(argv)
    os.environ.update(LOOPBACK)
    with tempfile.TemporaryDirectory() as tmp:
        results = [run for nodes in [int(n) for n in args.nodes.split(",")] for run in measure(nodes, args, Path(tmp))]
    record = DriverMemoryRecord([int(n) for n in args.nodes.split(",")], args.data or "synthetic",
                                args.model or "default", args.max_length, args.text_bytes,
                                cpu_name(), os.getloadavg()[0], results)
    lines = ["| nodes | rows | driver peak RSS (MB) | wall s | texts/s |", "|---|---|---|---|---|",
             *[f"| {r['nodes']} | {r['rows']} | {r['peak_rss_mb']} | {r['seconds']} | {r['texts_per_s']} |"
               for r in results]]
    for path in write_record(args.out, "driver-memory", record.to_json(), "\n".join(lines) + "\n"):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
