"""Pick the device and compute dtype: the fastest that is right on this machine, decided from what the hardware
reports (never from a timing, which varies from run to run and would change the cache key).

Picks are made by name ('cpu', 'cuda:1'; 'fp32', 'bf16'), and torch is imported only when the answer needs it: a GPU
could be there, or a caller asks for torch's own device and dtype objects. Only settings.py (EncoderOptions.resolve)
asks for picks; everything else reads the resolved EncoderConfig. A CPU-only start-up (the openvino runtime
with a kept graph) then never pays for `import torch` (about 1 s).
"""

import os
import platform
from functools import lru_cache
from pathlib import Path

from pipeline.errors import PipelineError

DTYPE_ALIASES = {"fp32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16",
                 "float16": "fp16",
                 "int8": "int8"}  # int8: post-training quantized, CPU only (runtimes/int8.py); never picked by 'auto'
X86_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # native bf16 dot products / tile matmuls
X86 = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})
ARM64 = frozenset({"aarch64", "arm64", "armv8", "armv9"})
# A Linux GPU shows as a driver node (in containers too: NVIDIA's, ROCm's /dev/kfd, WSL's /dev/dxg, Jetson's
# integrated GPU) or, before a driver that loads on first use has loaded, as an NVIDIA or AMD display-class device
# on the PCI bus.
GPU_NODES = (Path("/dev/nvidiactl"), Path("/dev/nvidia0"), Path("/proc/driver/nvidia"), Path("/dev/kfd"),
             Path("/dev/dxg"), Path("/dev/nvhost-ctrl-gpu"))
PCI_DEVICES = Path("/sys/bus/pci/devices")
GPU_VENDORS = frozenset({"0x10de", "0x1002"})  # NVIDIA, AMD


def gpu_may_exist() -> bool:
    """False only where no GPU can be: Linux with no GPU driver node and no GPU on the PCI bus. Elsewhere (and
    where one may be) torch is asked."""
    if platform.system() != "Linux" or any(node.exists() for node in GPU_NODES):
        return True
    try:
        devices = list(PCI_DEVICES.iterdir())
    except OSError:
        return False
    return any(_pci_gpu(device) for device in devices)


def _pci_gpu(device: Path) -> bool:
    try:
        vendor, kind = ((device / name).read_text().strip() for name in ("vendor", "class"))
    except OSError:
        return False
    return vendor in GPU_VENDORS and kind.startswith("0x03")  # class 0x03: display controllers


def pick_device_name(requested: str = "auto") -> str:
    """pick_device's answer as a name ('cpu', 'cuda', 'cuda:1', 'mps'), without torch when it is the CPU."""
    requested = (requested or "auto").strip().lower()
    if requested == "cpu" or (requested == "auto" and not gpu_may_exist()):
        return "cpu"
    return str(pick_device(requested))


def pick_device(requested: str = "auto"):
    """'auto' takes CUDA, then Apple MPS, then CPU; an explicit device must exist here. A torch.device."""
    import torch

    requested = (requested or "auto").strip().lower()
    if requested == "auto":
        if gpu_may_exist() and torch.cuda.is_available():
            return torch.device("cuda")
        if gpu_may_exist() and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
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


def device_kind(device) -> str:
    """'cuda' for 'cuda:1' or torch.device('cuda', 1)."""
    return str(device).split(":")[0]


def cpu_runs_bf16_natively() -> bool:
    """The CPU has native bf16 and is x86 (where graph compilers such as OpenVINO use it)."""
    return cpu_has_native_bf16() and platform.machine().strip().lower() in X86


def pick_dtype_name(requested: str, device) -> str:
    """'auto': bf16 on GPUs that support it (else fp16); on CPU bf16 only where the CPU has native bf16 matmul
    instructions (see cpu_prefers_bf16), else fp32. The same machine always gets the same dtype, hence the same key."""
    requested = (requested or "auto").strip().lower()
    if requested != "auto":
        if requested not in DTYPE_ALIASES:
            raise PipelineError(f"unknown --dtype '{requested}': use auto, fp32, bf16, fp16 or int8")
        return DTYPE_ALIASES[requested]
    kind = device_kind(device)
    if kind == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if kind == "mps":
        return "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def pick_dtype(requested: str, device):
    """pick_dtype_name's answer as a torch.dtype."""
    return torch_dtype(pick_dtype_name(requested, device))


def cpu_prefers_bf16(flags: frozenset[str] | set[str], machine: str) -> bool:
    """The CPU dtype rule, pure over the CPU's feature flags and architecture so that it can be tested anywhere:
    x86 with AVX512-BF16 or AMX-BF16 -> bf16; arm64 with the 'bf16' feature -> bf16; anything else -> fp32 (there
    bf16 autocast is emulated and runs several times slower than fp32)."""
    machine = machine.strip().lower()
    if machine in X86:
        return bool(X86_BF16_FLAGS & set(flags))
    if machine in ARM64:
        return "bf16" in flags
    return False


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    return cpu_prefers_bf16(cpu_flags(), platform.machine())


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The feature flags every core reports: Linux /proc/cpuinfo ('flags' on x86, 'Features' on arm64).
    Where there is no /proc/cpuinfo (macOS, Windows), torch's own x86 check stands in for AVX512-BF16 (every CPU
    with AMX-BF16 so far also has AVX512-BF16); arm64 outside Linux reports nothing, so it stays on fp32."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        import torch

        probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        try:
            return frozenset({"avx512_bf16"}) if probe is not None and probe() else frozenset()
        except Exception:  # a private torch helper: any failure means "not known to be there"
            return frozenset()
    per_cpu = [frozenset(value.split()) for key, _, value in (line.partition(":") for line in text.splitlines())
               if key.strip().lower() in ("flags", "features")]
    return frozenset.intersection(*per_cpu) if per_cpu else frozenset()  # what every core has


def cpu_threads_cap() -> int | None:
    """The CPU threads this process was given, when it was given a number: OMP_NUM_THREADS, which torch follows and
    Ray sets to an actor's CPUs. None: every core. Without it, an OpenVINO graph in a 1-CPU Ray actor used every core
    of its node, so two such actors on one node ran no faster than one."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[DTYPE_ALIASES[name]]


def dtype_name(dtype) -> str:
    """'bf16' for torch.bfloat16 (or for 'bfloat16')."""
    return DTYPE_ALIASES[str(dtype).removeprefix("torch.")]
