"""Where the embed stage's time goes: one run under cProfile, its cumulative times grouped into the stage's steps.

cProfile sees the main thread only; tokenising runs in a second thread (overlapped with the forward passes), so it is
timed on its own, once, and reported beside the shares rather than inside them.
"""

import cProfile
import pstats
import tempfile
import time
from pathlib import Path

from pipeline.data import Dataset
from pipeline.embed.encoder import Encoder
from pipeline.embed.stage import embed_dataset

# step -> the functions (by name and module file ending) whose cumulative time is that step's; order matters:
# forward includes pad and copy-in, which are shown apart and subtracted.
STEPS = {
    "pad + copy to device": [("_pad", "encoder.py"), ("_to_device", "encoder.py")],
    "forward (model)": [("forward", "encoder.py")],
    "pooling": [("pool", "pooling.py")],
    "copy to host (fp32 numpy)": [("_pool_chunk", "stage.py")],
    "Parquet write": [("write_shard", "cache/store.py")],
    "hashing (sha256)": [("file_sha256", "cache/store.py")],
    "plan (reading finished shards)": [("_plan", "stage.py")],
}


def profile_embed(ds: Dataset, encoder: Encoder, poolings: list[str]) -> dict:
    """Shares of the wall time of one embed run (new cache) by step, plus the tokeniser's own time."""
    started = time.perf_counter()
    encoder.tokenize(ds.texts)
    tokenise = time.perf_counter() - started
    profiler = cProfile.Profile()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        profiler.runcall(embed_dataset, ds, encoder, poolings, Path(tmp), progress=False)
        wall = time.perf_counter() - started
    seconds = _step_seconds(pstats.Stats(profiler).stats)
    seconds["forward (model)"] -= seconds["pad + copy to device"]
    seconds["copy to host (fp32 numpy)"] -= seconds["forward (model)"] + seconds["pad + copy to device"] + \
        seconds["pooling"]
    seconds["other (Python, waits, manifest)"] = wall - sum(seconds.values())
    return {"wall_seconds": wall, "tokenise_seconds_overlapped": tokenise,
            "shares": {step: max(0.0, s) / wall for step, s in seconds.items()}}


def _step_seconds(stats: dict) -> dict[str, float]:
    """Cumulative seconds per step from pstats' raw table {(file, line, name): (cc, nc, tt, ct, callers)}."""
    totals = dict.fromkeys(STEPS, 0.0)
    for (file, _, name), (_, _, _, cumulative, _) in stats.items():
        for step, functions in STEPS.items():
            if any(name == fn and file.endswith(suffix) for fn, suffix in functions):
                totals[step] += cumulative
    return totals


def profile_markdown(profile: dict) -> str:
    lines = [f"Where the embed stage's time goes (one run, {profile['wall_seconds']:.1f}s wall):", "",
             "| step | share of wall time |", "|---|---|"]
    lines += [f"| {step} | {share:.1%} |" for step, share in sorted(profile["shares"].items(), key=lambda kv: -kv[1])]
    lines += ["", f"Tokenising alone takes {profile['tokenise_seconds_overlapped']:.1f}s; it runs in a second thread, "
              "overlapped with the forward passes.", ""]
    return "\n".join(lines)
