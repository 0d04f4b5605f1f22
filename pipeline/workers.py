"""Worker processes started for scikit-learn fits (joblib's loky pool), shut down by the code that started them.

joblib keeps its process pool alive between calls and lets idle workers leave only after 300 s. Left to the
interpreter's exit, that pool is what a command waited on after its last line: the console script's fast exit
skips `threading._shutdown()`, where concurrent.futures-style executors are told to stop, and multiprocessing's
exit hook then joins workers that were never told. So every fit runs inside `process_pool()`, and the outermost one
shuts the pool down on the way out, on success, error or Ctrl-C alike. Nesting reuses the pool: a command that fits
twenty heads starts the workers once.
"""

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from pipeline.errors import PipelineError

_lock = threading.Lock()
_depth = 0


@contextmanager
def process_pool() -> Iterator[None]:
    """Scope for code that may start joblib workers: on leaving the outermost scope they are stopped and joined."""
    global _depth
    with _lock:
        _depth += 1
    failed = True
    try:
        yield
        failed = False
    except Exception as exc:
        if type(exc).__name__ == "TerminatedWorkerError":  # loky's, without importing loky to name it
            raise PipelineError("a worker process of the head fit died (killed, or out of memory); nothing was "
                                "written for this head: rerun the command, or free memory first") from None
        raise
    finally:
        with _lock:
            _depth -= 1
            outermost = _depth == 0
        if outermost:
            shutdown_workers(kill=failed)


def shutdown_workers(kill: bool = False) -> None:
    """Stop joblib's reusable loky pool if one was started (imports nothing when joblib was never used)."""
    module = sys.modules.get("joblib.externals.loky.reusable_executor")
    executor = getattr(module, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=kill)
