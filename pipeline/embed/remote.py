"""Fail fast on a remote that does not answer: Ray's client retries an unreachable cluster address for minutes
(GCS connection attempts, then more), which looks like a hung command. One TCP connection with a short timeout
tells an unreachable or mistyped address apart in seconds, before Ray is started."""

import os
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from pipeline.errors import PipelineError

CONNECT_TIMEOUT_S = 5.0
LOCAL = {"", "auto", "local"}  # Ray finds or starts a cluster on this machine itself


@dataclass(frozen=True)
class RayPool:
    """The actor pool asked for: between `min_actors` and `max_actors` actors of `cpus_per_actor` CPUs each; None
    means "from the cluster's resources" (one actor per node's worth of CPUs, GPUs one each)."""

    min_actors: int | None = None
    max_actors: int | None = None
    cpus_per_actor: int | None = None


def parse_actors(text: str | None) -> tuple[int | None, int | None]:
    """--ray-actors: 'N' (a fixed pool) or 'MIN-MAX' (autoscaling between them)."""
    if text is None:
        return None, None
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    low, high = (int(match.group(1)), int(match.group(2) or match.group(1))) if match else (0, 0)
    if not match or low < 1 or high < low:
        raise PipelineError(f"--ray-actors {text!r} is not N or MIN-MAX with 1 <= MIN <= MAX, e.g. 4 or 2-8")
    return low, high


def check_ray_address(address: str | None, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse in one line a Ray address ('host:port' or 'ray://host:port') that takes no connection within
    `timeout` seconds; 'auto', 'local' and none are left to Ray."""
    if address is None or address.strip().lower() in LOCAL:
        return
    host, port = _host_port(address)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else exc.strerror or type(exc).__name__
        raise PipelineError(f"cannot reach the Ray cluster at {address} ({reason} within {timeout:g} s): check "
                            "--ray-address / RAY_ADDRESS, or start one with `ray start --head`") from None


def _host_port(address: str) -> tuple[str, int]:
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise PipelineError(f"--ray-address {address!r} is not host:port (or ray://host:port), e.g. 10.0.0.5:6379 "
                            "as `ray start --head` prints it")
    return parts.hostname, port


def hub_reachable(timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether the Hugging Face hub (HF_ENDPOINT, else huggingface.co) takes a connection within `timeout` seconds.
    Not, and a download falls back to the local cache at once, instead of waiting on the network's timeouts (no
    answer at all: minutes, with retries); offline mode (HF_HUB_OFFLINE) skips the probe."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    parts = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        socket.create_connection((parts.hostname or "", port), timeout=timeout).close()
    except (OSError, ValueError):
        return False
    return True
