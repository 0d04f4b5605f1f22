"""The 'openvino-int8' runtime (--dtype int8): the kept OpenVINO graph quantized to int8 by NNCF, calibrated on the
user's own train texts.

Why calibrate on the user's texts: static int8 fixes each activation's scale from the calibration texts; scales fitted
to another domain's texts clip or blur this one's. Why the FFN down-projections stay in float: measured on SST-2
(docs/int8.md), keeping the six of MiniLM in float lifted the 1st-percentile cosine to fp32 from 0.9930 to 0.9974,
more than keeping the first or the last layer. The float parts run in fp32: with bf16 float parts one text in 50 bent.

The quantized graph is kept beside the fp32 one (kept_graphs.py), under a key made of everything that changes it: the
fp32 graph's key (weights, tokenizer, config, library versions), the calibration texts' sha256, max length, NNCF's
version and this module's code. The key travels in EncoderConfig.calibration.graph and the cache key, so predict and
the Ray actors load the very graph the run was embedded with. `auto` never picks int8 (auto_rank None; docs/int8.md
says why). The guard that refuses bent vectors runs in the embed stage (embed/calibration.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.embed.batching import pad_ids
from pipeline.embed.device import device_kind
from pipeline.embed.runtimes import kept_graphs
from pipeline.embed.runtimes.base import RuntimeKind
from pipeline.embed.runtimes.openvino_graph import BATCH_TOKENS, Graph, OpenVINORuntime, model_of
from pipeline.embed.sources.files import package_version
from pipeline.errors import PipelineError, first_line

if TYPE_CHECKING:
    from pipeline.embed.encoder import Encoder

KIND_FOLDER = "openvino-int8"  # beside kept_graphs' "openvino"
FLOAT_PARTS = "fp32"  # what the graph's float parts run in


class Int8Runtime(OpenVINORuntime):
    """The calibrated int8 graph of one encoder. Before calibration (config.calibration.graph unset) it only lends
    the fp32 graph's spec and tokenizer, so that the stage can tokenise the calibration texts without the model."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder, self.graphs = encoder, {}
        key = encoder.config.calibration.graph
        self.kept = kept_graphs.find(encoder.ref.identity, encoder.raw_config) if key is None else _kept(key)

    def _graph(self, hint: str) -> Graph:
        if self.encoder.config.calibration.graph is None:
            raise PipelineError("the int8 graph is not calibrated yet: embed with --dtype int8 first")
        if hint not in self.graphs:
            import openvino as ov

            self.graphs[hint] = Graph(ov.Core().read_model(self.kept.xml), self.kept.info.names, self.kept,
                                      self.encoder.pad_id, FLOAT_PARTS, hint)
        return self.graphs[hint]


def _kept(key: str) -> kept_graphs.KeptGraph:
    kept = kept_graphs.find_at(kept_graphs.keyed_folder(KIND_FOLDER, key))
    if kept is None:
        raise PipelineError(f"the int8 graph {key} this run was embedded with is not kept on this machine: run "
                            "`bert-pipeline embed` with the run's --data and --dtype int8 here to calibrate it again")
    return kept


def quantize(reference: Encoder, calibration: list[list[int]], max_length: int) -> str:
    """Quantize the reference (fp32 OpenVINO) encoder's graph with NNCF, calibrated on these token ids (one text per
    calibration item), keep it and return its key; a graph kept under the same key is used as it is."""
    model, names, kept = model_of(reference)
    if kept is None:
        raise PipelineError("--dtype int8 keeps its graph in the user cache folder, which is not writable here: set "
                            "XDG_CACHE_HOME to a writable folder")
    key = _key(kept.folder.name, calibration, max_length)
    folder = kept_graphs.keyed_folder(KIND_FOLDER, key)
    if kept_graphs.find_at(folder) is None:
        quantized = _nncf(model, calibration, reference.pad_id)
        tokenizer = (kept.folder / kept_graphs.FILES[2]).read_text(encoding="utf-8")
        kept_graphs.keep(quantized, tokenizer, folder, kept.info)
    return key


def _nncf(model, calibration: list[list[int]], pad_id: int):
    """NNCF post-training static quantization (ModelType.TRANSFORMER: SmoothQuant, fast bias correction), the FFN
    down-projections kept in float."""
    import nncf

    items = [tuple(pad_ids([ids], pad_id).values()) for ids in calibration]  # (input_ids, attention_mask)
    try:
        with _quiet_nncf():
            return nncf.quantize(model, nncf.Dataset(items), model_type=nncf.ModelType.TRANSFORMER,
                                 subset_size=len(items), ignored_scope=nncf.IgnoredScope(names=down_projections(model)))
    except Exception as exc:  # NNCF's errors are pages long
        raise PipelineError(f"NNCF could not quantize the graph ({type(exc).__name__}: {first_line(exc)}): use "
                            "--dtype fp32 or bf16") from None


@contextlib.contextmanager
def _quiet_nncf():
    """NNCF logs every op it leaves in float and draws progress bars: only our one-line messages reach the user."""
    import io
    import logging
    import warnings

    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def down_projections(model) -> list[str]:
    """The FFN down-projections: MatMuls whose constant weight maps a wider input to a narrower output (intermediate
    size -> hidden size), found by shape, so any BERT-family graph works."""
    names = []
    for op in model.get_ops():
        shape = op.input(1).get_partial_shape() if op.get_type_name() == "MatMul" else None
        if shape is not None and shape.is_static and len(shape) == 2 and shape[1].get_length() > shape[0].get_length():
            names.append(op.get_friendly_name())
    return names


def _key(fp32_key: str, calibration: list[list[int]], max_length: int) -> str:
    sample = hashlib.sha256(json.dumps(calibration).encode()).hexdigest()
    record = {"fp32": fp32_key, "calibration": sample, "max_length": max_length, "nncf": package_version("nncf"),
              "code": _code_sha256()}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:24]


@lru_cache(maxsize=1)
def _code_sha256() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def _supports(device: str, dtype: str, training: bool) -> bool:
    return device_kind(device) == "cpu" and dtype == "int8" and not training and package_version("openvino") is not None


KIND = RuntimeKind("openvino-int8", "the OpenVINO graph quantized to int8 by NNCF, calibrated on the train texts "
                   "(--dtype int8; CPU; inference only)", supports=_supports,
                   limits="runs inference on a CPU in int8 (pip install 'bert-pipeline[int8]')",
                   batch_tokens=lambda device: BATCH_TOKENS, start=Int8Runtime, package="nncf",
                   auto_rank=None)  # its vectors differ from fp32's: only --dtype int8 picks it
