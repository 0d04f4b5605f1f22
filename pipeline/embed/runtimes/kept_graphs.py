"""Converted OpenVINO graphs kept between runs, under the user's cache folder (paths.user_cache_dir).

Why keep them: converting an encoder takes seconds, and a later run that finds its graph here needs neither the
conversion nor the model, nor torch or transformers at all (about 2 s of imports at start-up). A graph is keyed by
the weights' and tokenizer's hashes, the model's config.json and the versions of the converting libraries; beside it
go what a run needs without the model (ModelSpec, the poolings), the tokenizer as one tokenizer.json, and the sha256
of its files, checked on every load: a graph that fails the check is not used, and is converted again.
"""

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from pipeline.cache import ModelIdentity
from pipeline.embed.runtimes.base import ModelSpec
from pipeline.embed.sources.files import hash_files, package_version
from pipeline.paths import atomic_write_json, user_cache_dir

GRAPH_VERSION = 3
KEPT_GRAPHS = 8  # graphs kept on disk (the most recently used); each is about the size of the weights
STALE_TMP_SECONDS = 3600  # a temp folder this old belongs to a run that was killed while keeping its graph
FILES = ("model.xml", "model.bin", "tokenizer.json")


@dataclass(frozen=True)
class GraphInfo:
    names: list[str]  # the graph's outputs: the poolings it computes, in order
    spec: ModelSpec


@dataclass(frozen=True)
class KeptGraph:
    folder: Path
    info: GraphInfo

    @property
    def xml(self) -> Path:
        return self.folder / FILES[0]

    def tokenizer(self):
        """The model's fast tokenizer, as `tokenizers.Tokenizer` (what transformers' fast tokenizers run), with the
        setting its tokenizer.json does not hold."""
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(self.folder / FILES[2]))
        tokenizer.encode_special_tokens = self.info.spec.split_special_tokens
        return tokenizer


def graph_folder(model: ModelIdentity, config: dict) -> Path | None:
    """Where the graph of this model (weights, tokenizer) and config is kept; None when there is no cache folder."""
    root = user_cache_dir()
    if root is None:
        return None
    versions = {name: package_version(name)
                for name in ("bert-pipeline", "openvino", "torch", "transformers", "tokenizers")}
    record = {"graph": GRAPH_VERSION, "weights": model.weights_sha256, "tokenizer": model.tokenizer_sha256,
              "config": config, "versions": versions, "code": _code_sha256()}
    return root / "openvino" / hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:24]


@lru_cache(maxsize=1)
def _code_sha256() -> str:
    """The code baked into a graph: the poolings' maths and the conversion. Editing either makes a new graph."""
    here, embed = Path(__file__).parent, Path(__file__).parent.parent
    return hash_files((embed / "pooling.py", embed / "pooled_model.py", here / "openvino_graph.py"))


def find(model: ModelIdentity, config: dict) -> KeptGraph | None:
    """The kept graph of this model and config, if its files still hash to what was recorded."""
    return find_at(graph_folder(model, config))


def keyed_folder(kind: str, key: str) -> Path | None:
    """Where a graph of another kind (an int8 one) with this key is kept; None when there is no cache folder."""
    root = user_cache_dir()
    return None if root is None else root / kind / key


def find_at(folder: Path | None) -> KeptGraph | None:
    """The graph kept in `folder`, if its files still hash to what was recorded."""
    kept = _read(folder) if folder is not None else None
    if kept is not None:
        with contextlib.suppress(OSError):
            os.utime(folder)  # most recently used: kept longest
    return kept


def _read(folder: Path) -> KeptGraph | None:
    try:
        record = json.loads((folder / "graph.json").read_text())
        if record.get("sha256") != hash_files(tuple(folder / f for f in FILES)):
            return None
        info = GraphInfo([str(n) for n in record["names"]], ModelSpec(**record["spec"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return KeptGraph(folder, info)


def keep(model, tokenizer_json: str, folder: Path, info: GraphInfo) -> KeptGraph:
    """Write the graph: into a temp folder, then renamed into place, so a reader never sees half a graph. A whole
    copy that another run kept meanwhile is used as it is; a damaged one is replaced. Only the KEPT_GRAPHS most
    recently used stay, and temp folders of killed runs go after an hour."""
    import openvino as ov

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        ov.save_model(model, tmp / FILES[0], compress_to_fp16=False)  # fp16 weights would change the vectors
        (tmp / FILES[2]).write_text(tokenizer_json, encoding="utf-8")
        digest = hash_files(tuple(tmp / f for f in FILES))
        atomic_write_json(tmp / "graph.json", {"sha256": digest, **asdict(info)})
        kept = _read(folder)
        if kept is not None:
            return kept
        if folder.exists():
            shutil.rmtree(folder)
        os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _prune(folder.parent)
    return KeptGraph(folder, info)


def _prune(root: Path) -> None:
    graphs = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    stale = [p for p in root.glob(".tmp-*") if time.time() - p.stat().st_mtime > STALE_TMP_SECONDS]
    for old in [*graphs[KEPT_GRAPHS:], *stale]:
        shutil.rmtree(old, ignore_errors=True)
