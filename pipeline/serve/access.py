"""One log line per request (client, method, path, status, texts, latency) and the request counters, for every
request, refused ones included. A plain ASGI middleware: Starlette's BaseHTTPMiddleware costs a task per request."""

import logging
import time

from pipeline.serve.metrics import Metrics

log = logging.getLogger("pipeline.serve")
ROUTES = frozenset({"/predict", "/embed", "/health", "/info", "/metrics", "/", "/docs", "/openapi.json"})


class AccessLog:
    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def sent(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            seconds = time.perf_counter() - start
            path = scope["path"]
            self.metrics.answered(path if path in ROUTES else "other", status, seconds)
            client = scope.get("client") or ("-", 0)
            log.info("%s %s %s %d texts=%s %.1f ms", client[0], scope["method"], path[:200], status,
                     scope.get("texts", "-"), seconds * 1000)
