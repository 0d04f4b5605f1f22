"""`serve`: a trained run as an HTTP service (pipeline/serve; docs/serving.md)."""

from pathlib import Path

import click

from pipeline.cli.use import run_options

SERVER_PACKAGES = {"starlette", "uvicorn", "prometheus_client"}  # the `serve` extra


@click.command()
@run_options
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback must be asked for (e.g. 0.0.0.0).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="0: any free port.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda[:N] or mps.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Server processes, each with its own copy of the model (sharing the kept graph files).")
@click.option("--batch-tokens", default=8192, show_default=True, type=click.IntRange(min=1),
              help="Tokens merged into one batch at most (a request larger than this runs alone).")
@click.option("--max-wait-ms", default=2.0, show_default=True, type=click.FloatRange(0, 1000),
              help="How long a request may wait for others to share its batch.")
@click.option("--max-queue", default=256, show_default=True, type=click.IntRange(min=1),
              help="Requests waiting or running at once; more are answered 503 with Retry-After.")
@click.option("--max-body-bytes", default=1_000_000, show_default=True, type=click.IntRange(min=1),
              help="Largest request body (413 above).")
@click.option("--max-client-batch", default=64, show_default=True, type=click.IntRange(min=1),
              help="Most texts in one request (413 above).")
@click.option("--grace", default=10.0, show_default=True, type=click.FloatRange(0, 3600),
              help="Seconds SIGTERM waits for in-flight requests before it stops the server.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]), help="info: one line per request.")
def serve(run_path, runs, host, port, device, workers, batch_tokens, max_wait_ms, max_queue, max_body_bytes,
          max_client_batch, grace, log_level) -> None:
    """Serve a trained run over HTTP: POST /predict and /embed (batched across requests), GET /health, /info,
    /metrics (Prometheus) and /docs (OpenAPI). Texts are embedded as `predict` embeds them."""
    from pipeline.errors import PipelineError
    from pipeline.train.runs import newest_run

    try:
        from pipeline.serve.app import ServeSettings
        from pipeline.serve.server import ServeTarget
        from pipeline.serve.server import serve as run_server
    except ImportError as exc:
        if exc.name not in SERVER_PACKAGES:
            raise
        raise PipelineError(f"serve needs {exc.name}: pip install 'bert-pipeline[serve]'") from None

    settings = ServeSettings(batch_tokens, max_wait_ms, max_queue, max_body_bytes, max_client_batch, grace)
    run = Path(run_path) if run_path is not None else newest_run(runs)
    run_server(ServeTarget(run, device, settings), host, port, workers, log_level)
