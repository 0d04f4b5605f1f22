"""A model folder's files, checked and hashed without loading them (the sources, in __init__.py, find the folder).

Weights are accepted only as safetensors: a pickle checkpoint (pytorch_model.bin) can run arbitrary code on load;
and a model that asks for custom code (auto_map in config.json) is refused, since bert-pipeline never runs it.
A folder is checked before anything is hashed or loaded: config.json is JSON, the tokenizer files are there, each
safetensors file's header parses and the file is as long as the header says.
"""

import hashlib
import json
import os
import re
import time
from importlib import metadata
from pathlib import Path

from pipeline.errors import PipelineError, first_line
from pipeline.paths import atomic_write_json, file_stamp, hash_file_into, user_cache_dir

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json",
                   "sentencepiece.bpe.model", "spiece.model", "merges.txt", "vocab.json", "added_tokens.json")
VOCAB_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def custom_code_error(name: str) -> PipelineError:
    return PipelineError(f"{name} needs custom code (trust_remote_code), which bert-pipeline never runs: use a model "
                         "that transformers supports natively")


def read_config(folder: Path, name: str) -> dict:
    """config.json as a dict; refused when missing, not a JSON object, or asking for custom code (auto_map): even
    where transformers would fall back to its own class for the model_type, the custom code is what the weights were
    trained with (e.g. ALiBi instead of position embeddings), so the vectors would be silently wrong."""
    path = folder / "config.json"
    if not path.is_file():
        raise PipelineError(f"{folder} has no config.json: it is not a Hugging Face model folder")
    try:
        config = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise PipelineError(f"{path} is not valid JSON ({first_line(exc)}): restore the model's original "
                            "config.json") from None
    if not isinstance(config, dict):
        raise PipelineError(f"{path} holds a JSON {type(config).__name__}, not an object: restore the model's "
                            "original config.json")
    if config.get("auto_map"):
        raise custom_code_error(name)
    return config


def tokenizer_files(folder: Path) -> tuple[Path, ...]:
    """The tokenizer files that exist (all of them are hashed into the identity); refused when there is neither a
    tokenizer.json nor a vocabulary file, because transformers would then build a placeholder tokenizer that turns
    every word into [UNK]."""
    if not any((folder / f).is_file() for f in VOCAB_FILES):
        raise PipelineError(f"{folder} has no tokenizer files (tokenizer.json, or a vocabulary such as vocab.txt): "
                            "copy them from the model's original folder; without them every word becomes [UNK]")
    return tuple(folder / f for f in TOKENIZER_FILES if (folder / f).is_file())


def safetensors_files(folder: Path) -> list[Path]:
    """The folder's safetensors weights, each header checked; a folder with only pickle weights is refused."""
    if not (folder / "config.json").exists():
        raise PipelineError(f"{folder} has no config.json: it is not a Hugging Face model folder")
    files = sorted(folder.glob("*.safetensors"))
    if files:
        for path in files:
            check_safetensors(path)
        return files
    if list(folder.glob("*.bin")) or list(folder.glob("*.pt")):
        raise PipelineError(f"{folder} has only pickle weights (pytorch_model.bin), which can run code when loaded: "
                            "convert them to model.safetensors (safetensors.torch.save_file) and try again")
    raise PipelineError(f"no model.safetensors in {folder}: add the weights in safetensors format")


def from_hub(repo_id: str) -> Path:
    """Download (or find in the local HF cache) only config, tokenizer and safetensors files of a hub model."""
    from huggingface_hub import snapshot_download

    from pipeline.embed.remote import hub_reachable

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"],
                                      local_files_only=not hub_reachable()))
    except Exception as exc:  # offline, unknown repo, gated repo: all mean the same to the user
        raise PipelineError(f"cannot get model '{repo_id}' from the Hugging Face hub ({type(exc).__name__}): "
                            "check the id and your network, or pass a local model folder with --model") from None


def check_safetensors(path: Path) -> None:
    """Read only the header (8-byte little-endian length, then JSON naming each tensor's byte range) and refuse a file
    that is not safetensors or is shorter than its header says (an interrupted download or copy)."""
    redo = "download or copy the model again"
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            length = int.from_bytes(handle.read(8), "little") if size >= 8 else -1
            if not 2 <= length <= min(size - 8, 100 << 20):
                raise ValueError("no safetensors header at the start")
            header = json.loads(handle.read(length))
        ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"]
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise PipelineError(f"{path} is not a readable safetensors file ({first_line(exc)}): {redo}") from None
    needed = 8 + length + max(ends, default=0)
    if size < needed:
        raise PipelineError(f"{path} is truncated ({size} bytes; its header needs {needed}): {redo}")


def package_version(name: str) -> str | None:
    """An installed package's version; None when it is not installed (e.g. this project run from its source tree)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


MEMO_VERSION = 1
MEMO_ENTRIES = 256
RACY_SECONDS = 2.0  # a file modified this recently may change again within the same timestamp tick: not memoised


def hash_memo_path() -> Path | None:
    """Where file hashes are remembered between runs (see paths.user_cache_dir); None: nothing is remembered."""
    folder = user_cache_dir()
    return folder / "hashes.json" if folder is not None else None


def hash_files(files: tuple[Path, ...]) -> str:
    """sha256 over each file's name and then its bytes, in order: the identity of a model's weights or tokenizer.

    Why a memo: weights can be gigabytes, and every run would read them all. A result is remembered by each file's
    absolute path, size, mtime, ctime, device and inode, so a touched, rewritten or replaced file is hashed again; the
    memo is only a shortcut, and any problem reading or writing it just means hashing."""
    try:
        key = json.dumps([os.path.abspath(p) for p in files])
        stamp = [file_stamp(p) for p in files]
    except OSError:
        return _sha256_of(files)
    memo = _read_memo()
    entry = memo.get(key)
    if isinstance(entry, dict) and entry.get("stat") == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = _sha256_of(files)  # stamped before reading: a change during the read shows up next time
    if all(time.time() - mtime_ns / 1e9 > RACY_SECONDS for _, mtime_ns, *_ in stamp):
        memo.pop(key, None)
        memo[key] = {"stat": stamp, "sha256": digest}
        _write_memo(dict(list(memo.items())[-MEMO_ENTRIES:]))
    return digest


def _sha256_of(files: tuple[Path, ...]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        hash_file_into(digest, path)
    return digest.hexdigest()


def _read_memo() -> dict:
    path = hash_memo_path()
    try:
        record = json.loads(path.read_bytes()) if path is not None else None
    except (OSError, ValueError):
        return {}
    entries = record.get("entries") if isinstance(record, dict) and record.get("version") == MEMO_VERSION else None
    return dict(entries) if isinstance(entries, dict) else {}


def _write_memo(entries: dict) -> None:
    path = hash_memo_path()
    if path is None:
        return
    try:
        atomic_write_json(path, {"version": MEMO_VERSION, "entries": entries})
    except (PipelineError, OSError):
        pass
