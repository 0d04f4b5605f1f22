"""Where the embed stage's time goes.

The stage overlaps three threads (tokenising the next shard, the model on this one, writing the previous ones), so
a profiler of one thread cannot say it, and cProfile's view of threads differs between Python versions. Instead each
step is timed on its own over the same texts and shards, one after another (waiting for the GPU after each), and
reported beside the stage's real, overlapped wall time: the step whose seconds come closest to that wall time sets
the pace, and the sum of the steps against the wall time shows how much the overlap saves.
"""

import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from itertools import accumulate
from pathlib import Path

import torch

from pipeline.cache import EmbeddingCache
from pipeline.data import Dataset
from pipeline.embed.encoder import Encoder
from pipeline.embed.stage import embed_dataset
from pipeline.paths import file_sha256


def sync(device: torch.device) -> None:
    """Wait for the GPU's queued work, so that a timer reads the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def profile_embed(ds: Dataset, encoder: Encoder, poolings: list[str]) -> dict:
    """The stage's wall time on a new cache, and the seconds of each step timed alone over the same shards."""
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = embed_dataset(ds, encoder, poolings, Path(tmp) / "stage", progress=False)
        wall = time.perf_counter() - started
        seconds: dict[str, float] = defaultdict(float)
        clock = _Clock(seconds, encoder.device)
        ends = list(accumulate(record.rows for record in result.manifest.shards))
        stage, again = EmbeddingCache(result.path), EmbeddingCache(Path(tmp) / "again")
        again.path.mkdir()
        for index, (start, end) in enumerate(zip([0, *ends[:-1]], ends, strict=True)):
            _shard_steps(ds.texts[start:end], encoder, poolings, clock)
            table = stage.read_shard(index)
            clock("Parquet write", again.write_shard, index, table)
            clock("sha256 of the shards", file_sha256, again.shard_path(index))
    seconds["Parquet write"] -= seconds["sha256 of the shards"]  # write_shard hashes what it wrote
    return {"wall_seconds": wall, "step_seconds": {step: s for step, s in seconds.items() if s > 0}}


class _Clock:
    """Adds the seconds of a call (GPU work included) to its step."""

    def __init__(self, seconds: dict[str, float], device: torch.device) -> None:
        self.seconds, self.device = seconds, device

    def __call__(self, step: str, work: Callable, *args) -> object:
        sync(self.device)
        started = time.perf_counter()
        result = work(*args)
        sync(self.device)
        self.seconds[step] += time.perf_counter() - started
        return result


def _shard_steps(texts: list[str], encoder: Encoder, poolings: list[str], clock: _Clock) -> None:
    """One shard's compute steps, as the stage runs them (the runtime names its own steps), each timed alone."""
    tokens = clock("tokenise", encoder.tokenize, texts)
    encoder.encode(tokens, poolings, clock=clock)


def profile_markdown(profile: dict) -> str:
    wall, seconds = profile["wall_seconds"], profile["step_seconds"]
    lines = [f"Where the embed stage's time goes: each step timed alone over the same shards, against the stage's "
             f"overlapped wall time of {wall:.2f}s:", "", "| step | seconds | share of the wall time |",
             "|---|---|---|"]
    lines += [f"| {step} | {s:.3f} | {s / wall:.1%} |" for step, s in sorted(seconds.items(), key=lambda kv: -kv[1])]
    lines += ["", f"One after another the steps take {sum(seconds.values()):.2f}s; the stage runs tokenising and "
              f"writing in threads beside the model and takes {wall:.2f}s.", ""]
    return "\n".join(lines)
