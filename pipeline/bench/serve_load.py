"""How `serve` holds up under load: closed-loop clients (each sends one text, waits for the answer, sends the
next) against a real server in its own process on 127.0.0.1, beside offline `predict` on the same texts in the same
run. Reported per client count: texts/s, the ratio to offline, p50/p95/p99 latency, errors, and how far the served
probabilities are from the offline ones (batch mates differ; bf16 arithmetic is not batch-invariant).

Every load is bounded twice: a fixed number of requests and a time limit; the server is stopped with SIGTERM (it
drains) and killed only if it outlives its grace.
"""

import http.client
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.paths import write_record
from pipeline.predict import load_classifier
from pipeline.records import JsonRecord


@dataclass(frozen=True)
class ServeRecord(JsonRecord):
    """serve.json: the run, the server's settings, offline predict's throughput, and one row per client count."""

    run: str
    model: str
    pooling: str
    head: str
    dtype: str
    runtime: str
    texts: int
    time_limit_s: float
    server_args: list[str]
    startup_to_ready_s: float
    offline_texts_per_s: float
    loads: list[dict]  # per client count: requests, errors, texts/s, latency percentiles, batches, diff vs offline
    server_exit_code: int
    machine: dict
    schema: int = 1

    REWRITE = "`bert-pipeline bench serve` again"


START_LIMIT = 120.0  # seconds for the server to answer /health


class ServerProcess:
    """`bert-pipeline serve --port 0` in a subprocess, its port read from its first log lines."""

    def __init__(self, run: Path, args: list[str]) -> None:
        self.started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", "--run", str(run), "--port", "0",
                                      *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.port = self._port()
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # keep its pipe drained
        self.ready_s = self._ready()

    def _port(self) -> int:
        for line in self.proc.stderr:
            if found := re.search(r"on http://127\.0\.0\.1:(\d+)", line):
                return int(found.group(1))
            if line.startswith("error:"):
                raise PipelineError(f"the server did not start: {line.strip()[7:]}")
        raise PipelineError(f"the server ended before it listened (exit {self.proc.wait()})")

    def _ready(self) -> float:
        while time.perf_counter() - self.started < START_LIMIT:
            try:
                if request(self.port, "GET", "/health")[0] == 200:
                    return time.perf_counter() - self.started
            except OSError:
                pass
            time.sleep(0.01)
        self.stop()
        raise PipelineError(f"the server did not answer /health within {START_LIMIT:.0f} s")

    def stop(self, grace: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def request(port: int, method: str, path: str, body: bytes | None = None,
            connection: http.client.HTTPConnection | None = None) -> tuple[int, bytes]:
    own = connection is None
    connection = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, body, {"Content-Type": "application/json"} if body else {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        if own:
            connection.close()


def closed_loop(port: int, texts: list[str], clients: int, time_limit: float) -> dict:
    """`clients` threads, each with its own keep-alive connection, send texts[i] one at a time until every text was
    sent or `time_limit` passed; latencies, errors and the probabilities returned (NaN where none came)."""
    proba: list = [None] * len(texts)
    latencies, errors, lock, next_index = [], [], threading.Lock(), iter(range(len(texts)))
    deadline = time.perf_counter() + time_limit

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.perf_counter() < deadline:
            with lock:
                i = next(next_index, None)
            if i is None:
                break
            start = time.perf_counter()
            try:
                status, body = request(port, "POST", "/predict", json.dumps({"texts": [texts[i]]}).encode(),
                                       connection)
                if status != 200:
                    raise OSError(f"HTTP {status}: {body[:100]!r}")
                proba[i] = list(json.loads(body)["predictions"][0]["probabilities"].values())
                latencies.append(time.perf_counter() - start)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                errors.append(str(exc))
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000 if latencies else np.array([np.nan])
    return {"clients": clients, "requests": len(latencies) + len(errors), "answered": len(latencies),
            "errors": len(errors), "first_error": errors[0] if errors else None, "seconds": seconds,
            "texts_per_s": len(latencies) / seconds, "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99)), "_proba": proba}


def batch_totals(port: int) -> dict[str, float]:
    """The server's running totals from /metrics: batches, texts batched, seconds in the encoder and head."""
    text = request(port, "GET", "/metrics")[1].decode()
    names = {"batches": "serve_batch_texts_count", "texts": "serve_batch_texts_sum",
             "inference_s": "serve_inference_seconds_sum"}
    return {key: float(re.search(rf"^{name} (\S+)$", text, re.MULTILINE).group(1)) for key, name in names.items()}


def batch_stats(before: dict[str, float], after: dict[str, float]) -> dict:
    """Mean texts per batch and encoder + head milliseconds per text over one load (how full and how costly the
    server's batches were)."""
    batches, texts = after["batches"] - before["batches"], after["texts"] - before["texts"]
    return {"batches": int(batches), "texts_per_batch": texts / batches if batches else None,
            "inference_ms_per_text": 1000 * (after["inference_s"] - before["inference_s"]) / texts if texts else None}


def offline(run: Path, texts: list[str], repeats: int) -> tuple[float, np.ndarray]:
    """Offline `predict` throughput on the texts (one call, as `predict --input` scores them; best of `repeats`
    after a warm-up) and its probabilities."""
    clf = load_classifier(run)
    clf.predict_proba(texts[:32])
    best, proba = np.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        proba = clf.predict_proba(texts)
        best = min(best, time.perf_counter() - start)
    return len(texts) / best, proba


def serve_benchmark(run: Path, texts: list[str], clients: list[int], time_limit: float, server_args: list[str],
                    log=print) -> ServeRecord:
    """Offline throughput, then one server process for every client count in turn, then its SIGTERM."""
    load_before = os.getloadavg()[0]
    offline_tps, want = offline(run, texts, 3)
    log(f"offline predict: {offline_tps:.1f} texts/s on {len(texts)} texts ({1000 / offline_tps:.2f} ms a text)")
    server = ServerProcess(run, server_args)
    log(f"server ready in {server.ready_s:.2f} s (process start to /health 200)")
    info = json.loads(request(server.port, "GET", "/info")[1])
    loads = []
    try:
        for n in clients:
            before = batch_totals(server.port)
            row = closed_loop(server.port, texts, n, time_limit)
            row.update(batch_stats(before, batch_totals(server.port)))
            got = row.pop("_proba")
            done = [i for i, p in enumerate(got) if p is not None]
            row["max_abs_diff_vs_offline"] = float(np.abs(np.array([got[i] for i in done]) - want[done]).max()) \
                if done else None
            row["ratio_to_offline"] = row["texts_per_s"] / offline_tps
            loads.append(row)
            log(f"{n:>3} clients: {row['texts_per_s']:.1f} texts/s ({row['ratio_to_offline']:.0%} of offline), "
                f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, {row['errors']} errors")
    finally:
        exit_code = server.stop()
    return ServeRecord(str(run), info["model"], info["pooling"], info["head"], info["dtype"], info["runtime"],
                       len(texts), time_limit, server_args, server.ready_s, offline_tps, loads, exit_code,
                       {"processor": _cpu_name(), "threads": os.cpu_count(), "python": platform.python_version(),
                        "load_average_1min": [load_before, os.getloadavg()[0]]})


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_serve(folder: Path, record: ServeRecord) -> list[Path]:
    """serve.json and serve.md under `folder`."""
    return write_record(folder, "serve", record.to_json(), serve_markdown(record))


def serve_markdown(r: ServeRecord) -> str:
    lines = [f"Run {r.run} ({r.head} on {r.pooling}, model {r.model}, {r.dtype}, runtime "
             f"{r.runtime}). {r.machine['processor']}, {r.machine['threads']} threads, load average "
             f"{r.machine['load_average_1min'][0]:.1f} before and {r.machine['load_average_1min'][1]:.1f} after "
             f"(other work on the machine takes its share). {r.texts} texts, "
             f"one per request. Offline predict: **{r.offline_texts_per_s:.1f} texts/s**; server start to "
             f"/health ready: {r.startup_to_ready_s:.2f} s.", "",
             "| clients | requests | errors | texts/s | vs offline | p50 ms | p95 ms | p99 ms | max abs diff | "
             "texts/batch | inference ms/text |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in r.loads:
        diff = "-" if row["max_abs_diff_vs_offline"] is None else f"{row['max_abs_diff_vs_offline']:.1e}"
        lines.append(f"| {row['clients']} | {row['requests']} | {row['errors']} | {row['texts_per_s']:.1f} | "
                     f"{row['ratio_to_offline']:.0%} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | "
                     f"{row['p99_ms']:.1f} | {diff} | {_number(row['texts_per_batch'])} | "
                     f"{_number(row['inference_ms_per_text'], 2)} |")
    return "\n".join(lines) + "\n"


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
