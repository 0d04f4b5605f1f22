"""The HTTP routes of `serve`, on Starlette: a small, well-kept ASGI toolkit (FastAPI is built on it) that leaves
request checking to us, so every refusal is one line we wrote, and adds no per-request validation layer.

POST /predict and /embed go through the batcher. The model answers a warm-up request before the server accepts its
first connection (connections made meanwhile wait in the socket's backlog), so GET /health answers 200 only from a
warm worker, and with --workers a warming worker takes no requests. /info describes the run; /metrics is
Prometheus' text format; /, /docs and /openapi.json give the OpenAPI schema. Anything else is a 404 or 405 with
a one-line JSON reason, never a traceback.
"""

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.schemas import SchemaGenerator

from pipeline.errors import first_line
from pipeline.predict import Classifier
from pipeline.serve.access import AccessLog
from pipeline.serve.batcher import Batcher, QueueFull
from pipeline.serve.bodies import BadRequest, parse_texts, read_body
from pipeline.serve.metrics import Metrics

log = logging.getLogger("pipeline.serve")
STARTUP_FAILURE = 3  # uvicorn's exit status for a worker that could not start: its supervisor then stops
WARM_UP_TEXT = "a short text to warm the model up"


@dataclass(frozen=True)
class ServeSettings:
    """The limits and batching knobs of one server (the CLI's options)."""

    batch_tokens: int = 8192
    max_wait_ms: float = 2.0
    max_queue: int = 256
    max_body_bytes: int = 1_000_000
    max_client_batch: int = 64
    grace: float = 10.0


class Service:
    """What the routes share: the classifier, its batcher (made at start-up, in the server's event loop), the
    metrics, and why the warm-up failed, if it did. A worker process (--workers) whose warm-up fails writes why to
    `failure_file` for its parent and exits with uvicorn's start-up failure status, which stops the parent instead
    of restarting the worker forever."""

    def __init__(self, clf: Classifier, settings: ServeSettings, failure_file: Path | None = None) -> None:
        self.clf, self.settings, self.metrics, self.failure_file = clf, settings, Metrics(), failure_file
        self.batcher: Batcher | None = None
        self.failure: str | None = None

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette):
        s = self.settings
        self.batcher = Batcher(self.clf, self.metrics, s.batch_tokens, s.max_wait_ms / 1000, s.max_queue)
        await self.warm_up()
        yield
        await asyncio.to_thread(self.batcher.stop, 5.0)  # by now uvicorn drained (or, after --grace, cancelled) all

    async def warm_up(self) -> None:
        """Requests of one and of two texts through the whole path (the runtime may run them in different compiled
        forms: see Runtime.encode's `soon`); a failure is logged in one line and stops the server."""
        start = time.perf_counter()
        try:
            await self.batcher.submit([WARM_UP_TEXT])
            await self.batcher.submit([WARM_UP_TEXT, WARM_UP_TEXT])
        except Exception as exc:
            self.failure = f"the model failed its warm-up ({type(exc).__name__}: {first_line(exc)})"
            log.error("error: %s", self.failure)
            if self.failure_file is not None:
                self.failure_file.write_text(self.failure)
                os._exit(STARTUP_FAILURE)
            os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's own stop; the command then reports the failure
            return
        log.info("ready: %s answered its warm-up in %.2f s", self.clf.path, time.perf_counter() - start)

    async def score(self, request: Request):
        """The Scored answer to the request's texts (BadRequest or QueueFull on the way)."""
        body = await read_body(request.headers.get("content-length"), request.stream(),
                               self.settings.max_body_bytes)
        texts = parse_texts(body, self.settings.max_client_batch)
        request.scope["texts"] = len(texts)
        return await self.batcher.submit(texts)

    def info(self) -> dict:
        record = self.clf.run.record
        return {"run": str(self.clf.path), "model": record.encoder.model.name, "model_ref": record.model_ref,
                "pooling": record.pooling, "head": record.head, "head_description": record.head_description,
                "labels": self.clf.label_names, "max_length": record.encoder.max_length,
                "dtype": record.encoder.dtype, "runtime": self.clf.settings.runtime,
                "metrics": _run_metrics(self.clf.path), "serving": asdict(self.settings)}


def _run_metrics(folder: Path) -> dict | None:
    """The run's test metrics from its metrics.json (None when the run folder has none)."""
    try:
        return json.loads((folder / "metrics.json").read_text())["metrics"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def error(status: int, reason: str, retry: bool = False) -> JSONResponse:
    return JSONResponse({"error": reason}, status, headers={"Retry-After": "1"} if retry else None)


def create_app(clf: Classifier, settings: ServeSettings = ServeSettings(),
               failure_file: Path | None = None) -> Starlette:
    service = Service(clf, settings, failure_file)

    async def answer(request: Request, shape) -> Response:
        try:
            scored = await service.score(request)
        except BadRequest as exc:
            return error(exc.status, exc.reason)
        except QueueFull as exc:
            return error(503, f"the server is busy ({exc}): retry shortly", retry=True)
        return JSONResponse(shape(scored))

    async def predict(request: Request) -> Response:
        """Classify texts with the run: label, confidence and every label's probability, in input order.
        ---
        requestBody:
          content: {application/json: {schema: {type: object, required: [texts],
                    properties: {texts: {type: array, items: {type: string}}}}}}
        responses:
          200: {description: '{"predictions": [{"label", "confidence", "probabilities": {label: p}}]}'}
          400: {description: 'invalid JSON'}
          413: {description: 'body or text count over the limits'}
          422: {description: 'missing texts, non-string or empty texts'}
          503: {description: 'the queue is full (Retry-After)'}
        """
        names = clf.label_names
        return await answer(request, lambda s: {"predictions": [
            {"label": names[int(row.argmax())], "confidence": float(row.max()),
             "probabilities": dict(zip(names, map(float, row), strict=True))} for row in s.proba]})

    async def embed(request: Request) -> Response:
        """The run's pooled vectors of the texts (what its head reads), in input order.
        ---
        requestBody:
          content: {application/json: {schema: {type: object, required: [texts],
                    properties: {texts: {type: array, items: {type: string}}}}}}
        responses:
          200: {description: '{"pooling": name, "dim": n, "embeddings": [[float, ...]]}'}
        """
        return await answer(request, lambda s: {"pooling": clf.pooling, "dim": int(s.vectors.shape[1]),
                                                "embeddings": s.vectors.tolist()})

    async def health(request: Request) -> Response:
        """200: the model answered its warm-up request; 503 while a failed warm-up stops the server.
        ---
        responses: {200: {description: ready}, 503: {description: the warm-up failed}}
        """
        if service.failure is None:
            return JSONResponse({"status": "ready"})
        return error(503, service.failure)

    async def info(request: Request) -> Response:
        """The run: model, pooling, head, labels, its test metrics, and this server's limits.
        ---
        responses: {200: {description: the run's description}}
        """
        return JSONResponse(service.info())

    async def metrics(request: Request) -> Response:
        """Prometheus metrics: requests, errors, batch sizes, queue / tokenise / inference time histograms.
        ---
        responses: {200: {description: Prometheus text format}}
        """
        return Response(service.metrics.exposition(), media_type="text/plain; version=0.0.4")

    async def schema(request: Request) -> Response:
        return JSONResponse(schemas.get_schema(routes=app.routes))

    async def http_error(request: Request, exc: HTTPException) -> Response:
        reason = {404: f"no route {request.url.path}: see GET /docs",
                  405: f"{request.method} is not allowed on {request.url.path}: see GET /docs"}
        return error(exc.status_code, reason.get(exc.status_code, exc.detail))

    async def internal(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, first_line(exc))
        return error(500, f"internal error ({type(exc).__name__}): see the server's log")

    schemas = SchemaGenerator({"openapi": "3.0.0", "info": {"title": f"bert-pipeline: {clf.head} on {clf.pooling}",
                                                            "version": "1"}})
    routes = [Route("/predict", predict, methods=["POST"]), Route("/embed", embed, methods=["POST"]),
              Route("/health", health), Route("/info", info), Route("/metrics", metrics),
              *(Route(path, schema, include_in_schema=False) for path in ("/", "/docs", "/openapi.json"))]
    app = Starlette(routes=routes, lifespan=service.lifespan, middleware=[Middleware(AccessLog, service.metrics)],
                    exception_handlers={HTTPException: http_error, Exception: internal})
    app.state.service = service
    return app
