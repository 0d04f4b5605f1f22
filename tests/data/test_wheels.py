"""Pinned wheels fetched as files (pipeline/wheels.py), without the network: pip is replaced by a stand-in that
writes a wheel or fails, as pip does."""

import hashlib
import subprocess
from pathlib import Path

import pytest

from pipeline import wheels
from pipeline.errors import PipelineError

WHEEL = b"PK\x05\x06" + bytes(18)  # an empty zip is enough: only its bytes are checked here
PINNED = hashlib.sha256(WHEEL).hexdigest()


def fake_pip(monkeypatch, code: int, stderr: str = "", write: bool = True) -> list[list[str]]:
    calls = []

    def run(cmd, **_):
        calls.append(cmd)
        dest = cmd[cmd.index("-d") + 1]
        if write:
            (Path(dest) / "demo_pkg-1.0-py3-none-any.whl").write_bytes(WHEEL)
        return subprocess.CompletedProcess(cmd, code, "", stderr)

    monkeypatch.setattr(wheels.subprocess, "run", run)
    return calls


def test_a_pinned_wheel_is_downloaded_without_its_dependencies_and_checked(monkeypatch, tmp_path):
    calls = fake_pip(monkeypatch, 0)
    wheel = wheels.pinned_wheel("demo-pkg==1.0", PINNED, tmp_path / "w", "fix it")
    assert wheel.read_bytes() == WHEEL
    assert calls[0][calls[0].index("pip"):calls[0].index("-d")] == ["pip", "download", "--no-deps",
                                                                      "--only-binary=:all:", "-q"]


def test_another_file_than_the_pinned_one_is_refused(monkeypatch, tmp_path):
    fake_pip(monkeypatch, 0)
    with pytest.raises(PipelineError, match=r"^demo_pkg-1.0-py3-none-any.whl has sha256 .* refusing to use it"):
        wheels.pinned_wheel("demo-pkg==1.0", "0" * 64, tmp_path, "fix it")


@pytest.mark.parametrize("code, write", [(1, False), (0, False)])
def test_a_failed_download_is_one_line_with_pip_s_last_line_and_the_way_out(monkeypatch, tmp_path, code, write):
    fake_pip(monkeypatch, code, "Looking in indexes\nERROR: No matching distribution", write)
    with pytest.raises(PipelineError) as caught:
        wheels.pip_download(["demo-pkg==1.0", "part-2==1.0"], tmp_path, "check access to PyPI")
    assert str(caught.value) == ("could not download demo-pkg==1.0 and the other parts (pip: ERROR: No matching "
                                 "distribution): check access to PyPI")
