"""Serve a trained run over HTTP: `bert-pipeline serve --run R`.

app (the Starlette routes: /predict, /embed, /health, /info, /metrics, the OpenAPI schema; every bad request answered
with a 4xx and one line), batcher (concurrent requests merged into token-budget batches on one thread that owns the
classifier, behind a bounded queue), metrics (Prometheus counters and histograms), server (uvicorn: workers,
SIGTERM draining, one log line per request).
"""
