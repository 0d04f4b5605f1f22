"""Pick the device and compute dtype: the fastest that is right on this machine, measured rather than assumed."""

import time
from functools import lru_cache

import torch

from pipeline.errors import PipelineError

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
CPU_BF16_MIN_SPEEDUP = 1.5


def pick_device(requested: str = "auto") -> torch.device:
    """'auto' takes CUDA, then Apple MPS, then CPU; an explicit device must exist here."""
    requested = (requested or "auto").strip().lower()
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise PipelineError(f"unknown --device '{requested}': use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PipelineError("--device cuda asked for, but no CUDA GPU is visible here: use --device auto or cpu")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise PipelineError("--device mps asked for, but Apple MPS is not available here: use --device auto or cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise PipelineError(f"unsupported --device '{requested}': use auto, cpu, cuda, cuda:N or mps")
    return device


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    """'auto': bf16 on GPUs that support it (else fp16); on CPU bf16 only where it measures faster than fp32."""
    requested = (requested or "auto").strip().lower()
    if requested != "auto":
        if requested not in DTYPES:
            raise PipelineError(f"unknown --dtype '{requested}': use auto, fp32, bf16 or fp16")
        return DTYPES[requested]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16 if cpu_bf16_speedup() >= CPU_BF16_MIN_SPEEDUP else torch.float32


@lru_cache(maxsize=1)
def cpu_bf16_speedup() -> float:
    """How much faster a BERT-sized matmul runs under bf16 autocast than in fp32 on this CPU (e.g. 4.0 with AMX,
    0.1 where bf16 is emulated). The margin either way is wide, so the choice is stable from run to run."""
    layer, x = torch.nn.Linear(384, 1536), torch.randn(1024, 384)
    return _seconds(layer, x, torch.float32) / _seconds(layer, x, torch.bfloat16)


def _seconds(layer: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype, reps: int = 5) -> float:
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        layer(x)
        start = time.perf_counter()
        for _ in range(reps):
            layer(x)
        return (time.perf_counter() - start) / reps


def dtype_name(dtype: torch.dtype) -> str:
    return DTYPE_NAMES[dtype]
