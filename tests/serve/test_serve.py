"""`serve` as a user runs it: the real server in a subprocess on 127.0.0.1 (a free port), called over real HTTP.
Answers equal `predict`'s under concurrent load, every bad request gets a 4xx and one line, a full queue a 503, and
SIGTERM lets the requests in flight finish."""

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from pipeline.predict import load_classifier

from conftest import sentiment_rows, write_csv

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60  # seconds for a server to answer /health (a cold start on a busy 2-core machine)


class Server:
    """`bert-pipeline serve` in a subprocess; its log lines are collected as they come."""

    def __init__(self, run: Path, *options: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", "--run", str(run), "--port", "0",
                                      *options], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                     env=env)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.port = self._wait_for(r"on http://127\.0\.0\.1:(\d+)")
        deadline = time.monotonic() + START_TIMEOUT
        while self.call("GET", "/health")[0] != 200:
            assert time.monotonic() < deadline and self.proc.poll() is None, self.log
            time.sleep(0.05)

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def _wait_for(self, pattern: str) -> int:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self.proc.poll() is None:
            for line in list(self.lines):
                if found := re.search(pattern, line):
                    return int(found.group(1))
            time.sleep(0.02)
        raise AssertionError(f"the server never listened:\n{self.log}")

    def call(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
             chunked: bool = False) -> tuple[int, http.client.HTTPMessage, bytes]:
        """One request on a fresh connection: status, headers, body."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
            response = connection.getresponse()
            return response.status, response.headers, response.read()
        finally:
            connection.close()

    def post(self, path: str, document) -> tuple[int, dict]:
        status, _, body = self.call("POST", path, json.dumps(document).encode(),
                                    {"Content-Type": "application/json"})
        return status, json.loads(body)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_bert) -> Path:
    """A trained fp32 run (logreg on mean) made through the CLI in its own folder."""
    from pipeline.cli import main

    root = tmp_path_factory.mktemp("serve")
    write_csv(root / "train.csv", sentiment_rows(120))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))
        for args in (["embed", "--dtype", "fp32", "--pooling", "mean"], ["train"]):
            mp.setattr(sys, "argv", ["bert-pipeline", *args, "--data", "train.csv", "--model", str(tiny_bert),
                                     "--no-progress"])
            main()
    return next((root / "artifacts" / "runs").glob("*/mean/logreg"))


@pytest.fixture(scope="module")
def clf(run):
    return load_classifier(run, "cpu")


@pytest.fixture(scope="module")
def server(run):
    """One server for the tests that do not stop it; a long --max-wait-ms, so that concurrent requests merge."""
    started = Server(run, "--max-wait-ms", "20", "--max-client-batch", "8", "--max-body-bytes", "50000")
    yield started
    assert started.stop() == 0, started.log


def metric(server: Server, name: str) -> float:
    """One sample's value in /metrics (0 when absent)."""
    text = server.call("GET", "/metrics")[2].decode()
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def check_predictions(got: dict, texts: list[str], clf) -> None:
    """The answer is `predict`'s: the same classifier's labels and probabilities, to 1e-6, in input order."""
    proba = clf.predict_proba(texts)
    assert len(got["predictions"]) == len(texts)
    for row, want in zip(got["predictions"], proba, strict=True):
        assert list(row["probabilities"]) == clf.label_names
        np.testing.assert_allclose(list(row["probabilities"].values()), want, rtol=0, atol=1e-6)
        assert row["label"] == clf.label_names[int(want.argmax())]
        assert row["confidence"] == pytest.approx(want.max(), abs=1e-6)


# --- answers ----------------------------------------------------------------------------------------------------

def test_concurrent_clients_get_predict_s_answers_in_merged_batches(server, clf):
    pool = [text for text, _ in sentiment_rows(90, seed=5)]
    requests = [pool[i:i + 1 + i % 3] for i in range(0, 90, 2)]  # 1-3 texts each, overlapping
    batches_before = metric(server, "serve_batch_requests_count")
    with ThreadPoolExecutor(16) as clients:
        answers = list(clients.map(lambda texts: server.post("/predict", {"texts": texts}), requests))
    for texts, (status, got) in zip(requests, answers, strict=True):
        assert status == 200, got
        check_predictions(got, texts, clf)
    batches = metric(server, "serve_batch_requests_count") - batches_before
    assert batches < len(requests), "concurrent requests were merged into shared batches"


def test_embed_gives_the_run_s_pooled_vectors(server, clf):
    texts = ["a good fun movie", "the plot was dull and slow"]
    status, got = server.post("/embed", {"texts": texts})
    assert status == 200 and got["pooling"] == "mean" and got["dim"] == 32
    np.testing.assert_allclose(got["embeddings"], clf.embed(texts), rtol=0, atol=1e-6)


def test_a_text_over_the_max_length_is_truncated_as_predict_truncates_it(server, clf):
    long = " ".join(["good fun movie"] * 200)
    assert clf.token_counts([long])[0] == 128
    status, got = server.post("/predict", {"texts": [long]})
    assert status == 200
    check_predictions(got, [long], clf)


def test_info_docs_and_metrics_describe_the_run_and_the_load(server, clf):
    info = json.loads(server.call("GET", "/info")[2])
    assert info["labels"] == ["negative", "positive"] and info["pooling"] == "mean" and info["head"] == "logreg"
    assert info["metrics"]["accuracy"] > 0.5 and info["dtype"] == "fp32" and info["serving"]["max_client_batch"] == 8
    for path in ("/", "/docs", "/openapi.json"):
        schema = json.loads(server.call("GET", path)[2])
        assert {"/predict", "/embed", "/health", "/info", "/metrics"} <= set(schema["paths"])
    server.post("/predict", {"texts": ["fine"]})
    text = server.call("GET", "/metrics")[2].decode()
    for name in ("serve_requests_total", "serve_errors_total", "serve_batch_texts_bucket", "serve_queue_seconds_bucket",
                 "serve_tokenize_seconds_bucket", "serve_inference_seconds_bucket"):
        assert name in text, name
    assert re.search(r'^serve_requests_total\{route="/predict",status="200"\} [1-9]', text, re.MULTILINE)
    assert re.search(r"INFO 127\.0\.0\.1 POST /predict 200 texts=1 \d+\.\d ms", server.log), "one line per request"


# --- bad requests -----------------------------------------------------------------------------------------------

BAD = [
    (b'{"texts": ["good"', 400, "invalid JSON"),
    (b"", 400, "the body is empty"),
    (b"\xff\xfe{}", 400, "invalid JSON"),
    (b"[" * 20000 + b"]" * 20000, 400, "nested too deeply"),
    (b'["good"]', 422, "send a JSON object"),
    (b'{"text": ["good"]}', 422, "unknown field 'text'"),
    (b"{}", 422, 'no "texts" field'),
    (b'{"texts": "good"}', 422, 'one text goes in a list'),
    (b'{"texts": null}', 422, '"texts" is null, not a list'),
    (b'{"texts": []}', 422, '"texts" is empty'),
    (b'{"texts": ["good", 3]}', 422, "texts[1] is a number, not a string"),
    (b'{"texts": ["good", ["nested"]]}', 422, "texts[1] is a list, not a string"),
    (b'{"texts": ["good", ""]}', 422, "texts[1] is empty or whitespace only"),
    (b'{"texts": [" \\n\\t "]}', 422, "texts[0] is empty or whitespace only"),
    (b'{"texts": ["ok \\ud800"]}', 422, "texts[0] holds a lone surrogate"),
    (json.dumps({"texts": ["good"] * 9}).encode(), 413, "9 texts in one request, more than --max-client-batch 8"),
    (json.dumps({"texts": ["good " * 12000]}).encode(), 413, "more than --max-body-bytes 50000"),
]


@pytest.mark.parametrize("body, status, reason", BAD, ids=[reason for _, _, reason in BAD])
def test_a_bad_request_gets_a_4xx_and_one_line(server, body, status, reason):
    got_status, headers, got = server.call("POST", "/predict", body, {"Content-Type": "application/json"})
    assert got_status == status, got
    message = json.loads(got)["error"]
    assert reason in message and "\n" not in message and len(message) < 200, message
    assert server.call("GET", "/health")[0] == 200, "the server is still up"


def test_a_streamed_body_over_the_limit_is_refused_while_it_arrives(server):
    chunks = (b"x" * 10000 for _ in range(100))  # 1 MB, no Content-Length
    status, _, got = server.call("POST", "/embed", chunks, {"Content-Type": "application/json"}, chunked=True)
    assert status == 413 and "--max-body-bytes 50000" in json.loads(got)["error"]


@pytest.mark.parametrize("method, path, status", [("GET", "/nothing", 404), ("POST", "/predict/x", 404),
                                                  ("GET", "/predict", 405), ("DELETE", "/health", 405)])
def test_unknown_routes_and_methods_get_one_line(server, method, path, status):
    got_status, _, got = server.call(method, path)
    assert got_status == status and "see GET /docs" in json.loads(got)["error"]
    assert "Traceback" not in server.log


# --- load and operations ----------------------------------------------------------------------------------------

def test_a_full_queue_answers_503_with_retry_after(run):
    """--max-queue 1 and a first request that waits 1 s for batch mates: a second one finds the queue full."""
    busy = Server(run, "--max-queue", "1", "--max-wait-ms", "1000")
    try:
        with ThreadPoolExecutor(1) as first:
            waiting = first.submit(busy.post, "/predict", {"texts": ["good"]})
            time.sleep(0.5)
            status, headers, got = busy.call("POST", "/predict", b'{"texts": ["bad"]}')
            assert status == 503 and headers["Retry-After"] == "1", got
            assert "--max-queue 1" in json.loads(got)["error"]
            assert waiting.result(timeout=30)[0] == 200, "the queued request was answered"
    finally:
        assert busy.stop() == 0, busy.log


def test_sigterm_finishes_the_requests_in_flight_then_exits(run, clf):
    draining = Server(run, "--max-wait-ms", "800", "--grace", "20")
    texts = [[text] for text, _ in sentiment_rows(6, seed=9)]
    try:
        with ThreadPoolExecutor(len(texts)) as clients:
            flying = [clients.submit(draining.post, "/predict", {"texts": t}) for t in texts]
            time.sleep(0.3)  # all sent, none answered: their batch waits 0.8 s for mates
            assert not any(f.done() for f in flying)
            start = time.monotonic()
            draining.proc.send_signal(signal.SIGTERM)
            for t, answer in zip(texts, flying, strict=True):
                status, got = answer.result(timeout=30)
                assert status == 200, got
                check_predictions(got, t, clf)
        assert draining.proc.wait(timeout=20) == 0, draining.log
    finally:
        draining.stop()
    assert time.monotonic() - start < 10, "it left soon after its last answer"
    assert "Traceback" not in draining.log


BROKEN_MODEL = """
from pipeline.predict import Classifier
def embed(self, texts):
    raise RuntimeError("the model cannot run here\\nsecond line of a long library message")
Classifier.embed = embed
"""


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_model_that_fails_its_warm_up_stops_the_server_with_one_error_line(run, workers, tmp_path):
    """The model breaks in every process (sitecustomize: also in the --workers processes uvicorn spawns)."""
    (tmp_path / "sitecustomize.py").write_text(BROKEN_MODEL)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "pipeline", "serve", "--run", str(run), "--port", "0",
                           "--workers", workers], capture_output=True, text=True, env=env, timeout=120)
    assert "the model failed its warm-up (RuntimeError: the model cannot run here)" in done.stderr
    assert "second line" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("error: the model failed")


def test_a_bad_run_or_a_busy_port_is_one_line_before_any_server(run, run_cli, tmp_path):
    import socket

    code, _, err = run_cli("serve", "--run", str(tmp_path / "nothing"))
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code, _, err = run_cli("serve", "--run", str(run), "--port", str(taken.getsockname()[1]))
    assert code == 2 and "cannot listen on 127.0.0.1:" in err and "pick another --port" in err, err


def test_workers_each_load_the_run_and_stop_together(run, clf):
    """--workers 2: two processes on one port give predict's answers, and SIGTERM to the parent ends them all."""
    pair = Server(run, "--workers", "2")
    try:
        texts = [text for text, _ in sentiment_rows(12, seed=2)]
        with ThreadPoolExecutor(4) as clients:
            answers = list(clients.map(lambda t: pair.post("/predict", {"texts": [t]}), texts))
        for text, (status, got) in zip(texts, answers, strict=True):
            assert status == 200, got
            check_predictions(got, [text], clf)
        workers = {int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", pair.log)}
        assert len(workers) == 2, pair.log
    finally:
        assert pair.stop() == 0, pair.log
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_bench_serve_measures_each_client_count_beside_offline_predict(run, clf, run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    write_csv(Path("texts.csv"), sentiment_rows(24, seed=4))
    code, out, err = run_cli("bench", "serve", "--run", str(run), "--data", "texts.csv", "--clients", "1,4",
                             "--time-limit", "60", "--out", "bench")
    assert code == 0, err
    [written] = list(Path("bench/serve").iterdir())
    record = json.loads((written / "serve.json").read_text())
    assert [row["clients"] for row in record["loads"]] == [1, 4]
    for row in record["loads"]:
        assert row["requests"] == row["answered"] == 24 and row["errors"] == 0
        assert row["texts_per_s"] > 0 and row["p50_ms"] <= row["p99_ms"]
        assert row["max_abs_diff_vs_offline"] < 1e-6, "fp32: the served answers are offline predict's"
    assert record["offline_texts_per_s"] > 0 and record["server_exit_code"] == 0
    assert all(row["texts_per_batch"] >= 1 and row["inference_ms_per_text"] > 0 for row in record["loads"])
    assert "| 4 | 24 | 0 |" in (written / "serve.md").read_text() and "| clients |" in out
