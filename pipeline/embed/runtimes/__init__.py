"""The runtimes: what turns an encoder's batches into the poolings' vectors. One registry, one choice, one factory.

A runtime is a RuntimeKind entry in RUNTIMES (base.py says what an entry holds and what a Runtime does); its name is
part of the cache key. `pick_runtime` chooses one name, once, when the encoder's settings are resolved
(settings.py); `start_runtime` makes the chosen one's Runtime for an encoder. Nothing outside this package compares
runtime names. A new runtime is one module with its KIND and one line in RUNTIMES.
"""

from importlib.util import find_spec

from pipeline.embed.device import device_kind, dtype_name
from pipeline.embed.runtimes import int8, openvino_graph, torch_eager
from pipeline.embed.runtimes.base import ModelSpec, Runtime, RuntimeKind
from pipeline.errors import PipelineError

RUNTIMES: dict[str, RuntimeKind] = {kind.name: kind for kind in (torch_eager.KIND, openvino_graph.KIND, int8.KIND)}

__all__ = ["RUNTIMES", "ModelSpec", "Runtime", "RuntimeKind", "batch_tokens", "pick_runtime", "runtime_here",
           "runtime_supported", "start_runtime"]


def runtime_supported(name: str, device, dtype, training: bool = False) -> bool:
    """Whether runtime `name` runs `device` in `dtype` here (names, or torch's objects), installed and able to."""
    kind = RUNTIMES.get(name)
    return kind is not None and (kind.package is None or find_spec(kind.package) is not None) and kind.supports(
        str(device), dtype_name(dtype), training)


def pick_runtime(requested: str, device, dtype, training: bool = False) -> str:
    """'auto': the best-ranked runtime that runs here (OpenVINO for CPU inference in fp32, or bf16 on x86 CPUs
    with native bf16, measured faster than PyTorch there; PyTorch everywhere else and always for training; a runtime
    without a rank only where no ranked one runs: openvino-int8 for --dtype int8). A named runtime must run here, else
    a one-line error with the fix."""
    requested, device, dtype = (requested or "auto").strip().lower(), str(device), dtype_name(dtype)
    if requested == "auto":
        ranked = sorted(RUNTIMES.values(), key=lambda k: (k.auto_rank is None, k.auto_rank or 0))
        found = next((k.name for k in ranked if runtime_supported(k.name, device, dtype, training)), None)
        if found is None:
            raise PipelineError(f"no runtime here runs {'training' if training else device_kind(device)} in {dtype}"
                                f" ({'; '.join(f'{k.name} {k.limits}' for k in ranked)}): use another --dtype or "
                                "--device, or install what it needs")
        return found
    kind = RUNTIMES.get(requested)
    if kind is None:
        raise PipelineError(f"unknown --runtime '{requested}': use auto, {', '.join(RUNTIMES)}")
    if kind.package is not None and find_spec(kind.package) is None:
        raise PipelineError(f"--runtime {kind.name} needs {kind.package}: pip install {kind.package}, or use "
                            "--runtime torch")
    if not kind.supports(device, dtype, training):
        other = "torch" if RUNTIMES["torch"].supports(device, dtype, training) else "auto"  # int8: its own runtime
        raise PipelineError(f"--runtime {kind.name} {kind.limits}, not "
                            f"{'training' if training else f'{device_kind(device)} {dtype}'}: use --runtime {other}")
    return kind.name


def runtime_here(name: str, device: str, dtype: str) -> str:
    """`name` where it runs on `device` in `dtype` (resolved names), else what 'auto' picks there: how a run's
    vectors are made again on another machine."""
    return name if runtime_supported(name, device, dtype) else pick_runtime("auto", device, dtype)


def batch_tokens(name: str, device: str, requested: int, max_length: int) -> int:
    """The token budget per batch: the one asked for, else the runtime's default on this device; never below one
    text of max_length tokens."""
    return max(requested or RUNTIMES[name].batch_tokens(device_kind(device)), max_length)


def start_runtime(encoder) -> Runtime:
    """The factory: the Runtime of the encoder's resolved runtime, made once per encoder."""
    return RUNTIMES[encoder.config.runtime].start(encoder)
