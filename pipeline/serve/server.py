"""Run the app on uvicorn: the socket bound first (a busy port is one line, and --port 0 picks a free one), uvicorn's
own graceful stop on SIGTERM/SIGINT (in-flight requests finish, for at most --grace seconds), and one log line per
request. With --workers N, each worker process loads the run itself: they share the kept graph files on disk and
nothing else (each has its own queue and its own /metrics)."""

import contextlib
import ipaddress
import json
import logging
import os
import signal
import socket
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import uvicorn

from pipeline.errors import PipelineError
from pipeline.predict import load_classifier
from pipeline.serve.app import ServeSettings, create_app

log = logging.getLogger("pipeline.serve")
WORKER_ENV = "BERT_PIPELINE_SERVE"  # how the parent hands the run and settings to --workers processes
FORMAT = "%(asctime)s %(levelname)s %(message)s"


@dataclass(frozen=True)
class ServeTarget:
    """What a server process loads: the run folder, the device, and the server's settings."""

    run: Path
    device: str
    settings: ServeSettings


def serve(target: ServeTarget, host: str, port: int, workers: int = 1, log_level: str = "info") -> None:
    """Serve until SIGTERM/SIGINT. The run is loaded (hash checks and all) before the port is bound, so a bad run
    fails in one line without a server ever starting."""
    clf = load_classifier(target.run, target.device)
    sock = _bind(host, port)
    where = "http://{}:{}".format(*sock.getsockname()[:2]) if sock.family == socket.AF_INET else \
        "http://[{}]:{}".format(*sock.getsockname()[:2])
    logging.basicConfig(level=log_level.upper(), format=FORMAT)
    if not ipaddress.ip_address(sock.getsockname()[0]).is_loopback:
        log.warning("listening beyond this machine on %s: anyone who reaches it can call the model", where)
    options = {"timeout_graceful_shutdown": target.settings.grace, "access_log": False, "log_config": None,
               "log_level": log_level, "lifespan": "on"}
    if workers == 1:
        app = create_app(clf, target.settings)
        log.info("serving %s on %s (docs: %s/docs)", clf.path, where, where)
        with _stop_signals_end_normally():
            uvicorn.Server(uvicorn.Config(app, **options)).run(sockets=[sock])
        failure = app.state.service.failure
        if failure:
            raise PipelineError(failure)
        return
    log.info("serving %s on %s with %d workers (docs: %s/docs)", clf.path, where, workers, where)
    with tempfile.TemporaryDirectory() as tmp:
        failure = Path(tmp) / "failure"  # where a worker whose warm-up failed says why
        os.environ[WORKER_ENV] = json.dumps({"run": str(clf.path), "device": target.device, "log_level": log_level,
                                             "settings": asdict(target.settings), "failure_file": str(failure)})
        uvicorn.run("pipeline.serve.server:worker_app", factory=True, fd=_inheritable(sock), workers=workers,
                    **options)
        if failure.exists():
            raise PipelineError(failure.read_text())


def worker_app():
    """The app of one --workers process (uvicorn imports this by name in each)."""
    given = json.loads(os.environ[WORKER_ENV])
    logging.basicConfig(level=given["log_level"].upper(), format=FORMAT)
    return create_app(load_classifier(Path(given["run"]), given["device"]), ServeSettings(**given["settings"]),
                      Path(given["failure_file"]))


@contextlib.contextmanager
def _stop_signals_end_normally():
    """After draining, uvicorn raises the stopping signal again with the handler it found: by default that kills the
    process by SIGTERM (status 143) or turns SIGINT into "interrupted". Stopping is how a server ends, so the
    handler it finds here ends the command normally (also for a signal that comes before uvicorn listens)."""
    previous = {sig: signal.signal(sig, _normal_end) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    except _Stopped:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Stopped(Exception):
    """A stop signal, raised where the server's run is waited for."""


def _normal_end(signum: int, frame) -> None:
    raise _Stopped


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or one line saying why not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise PipelineError(f"cannot resolve --host {host} ({exc.strerror}): use an address such as 127.0.0.1"
                            ) from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise PipelineError(f"cannot listen on {host}:{port} ({exc.strerror}): pick another --port, or stop what "
                            "holds it") from None
    return sock


def _inheritable(sock: socket.socket) -> int:
    sock.set_inheritable(True)
    return sock.fileno()
