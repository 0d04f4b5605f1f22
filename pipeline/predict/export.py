"""Export a run for serving: encoder + the run's pooling + its head as one ONNX graph, with the tokenizer and labels.

The graph takes `input_ids` and `attention_mask` (int64, batch x tokens, any sizes) and returns `probabilities`
(float32, batch x labels, columns in label order). Beside `<name>.onnx` go `<name>.json` (label names and settings)
and `<name>.tokenizer/` (the run's tokenizer; its tokenizer.json truncates at the run's max length and pads to the
longest text, so `tokenizers.Tokenizer.from_file` serves as-is). The encoder and pooling are traced from torch; the
head is the run's own graph (head.onnx, converted by skl2onnx at training), joined to it by onnx.compose. Before
anything is written, onnxruntime runs the graph on probe texts and its probabilities must equal the classifier's.
"""

import logging
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.embed.encoder import Encoder
from pipeline.embed.loading import quiet_conversion, tokenizer_json
from pipeline.embed.pooled_model import PooledModel
from pipeline.embed.windows import Reading
from pipeline.errors import PipelineError
from pipeline.paths import atomic_write_bytes, atomic_write_json, ensure_writable, publish_together
from pipeline.predict.classifier import Classifier
from pipeline.predict.output import refuse_run_files
from pipeline.train.head_graph import convert
from pipeline.train.heads import onnx_heads
from pipeline.train.runs import Run

INPUTS, OUTPUT = ["input_ids", "attention_mask"], "probabilities"
OPSET = 18
TOLERANCE = 1e-4
PROBES = ["a gorgeous, witty, seductive movie", "the plot is thin and the acting is wooden, a dull and slow film",
          "fine", "not bad at all", "I expected more from this director; the first half drags but the ending is a "
          "genuine surprise and the score is lovely", "terrible"]


@dataclass(frozen=True)
class Exported:
    onnx: Path
    meta: Path
    tokenizer: Path
    max_abs_diff: float
    bytes: int


def export_onnx(clf: Classifier, out: Path) -> Exported:
    """Write `out` (.onnx), its .json and its .tokenizer/ folder for `clf`'s run, all three or none; refuse heads
    that do not export, and paths that are the run's or its model's own files."""
    out = Path(out)
    _refuse_int8(clf)
    _refuse_windows(clf)
    if out.suffix.lower() != ".onnx":
        raise PipelineError(f"--out {out} should end in .onnx (the labels go to .json and the tokenizer to "
                            ".tokenizer/ beside it)")
    if out.is_dir():
        raise PipelineError(f"{out} is a folder: give a file name (a path inside it or elsewhere)")
    meta, tokenizer = out.with_suffix(".json"), out.with_suffix(".tokenizer")
    refuse_run_files(clf.path, clf.run.record.model_ref, [out, meta, tokenizer], "--out")
    graph, classes = _head_graph(clf.run)
    if graph is None:
        *others, last = onnx_heads()
        raise PipelineError(f"head {clf.head} of this run does not convert to ONNX, so it does not export: train "
                            f"a {', '.join(others)} or {last} head on the same cache and export that run")
    _require_onnx()
    payload = _with_head(encoder_onnx(clf.encoder, *clf.source), graph, classes, len(clf.label_names))
    diff = _check(payload, clf)
    ensure_writable(out.parent)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        staged = Path(tmp)
        atomic_write_bytes(staged / out.name, payload)
        _write_tokenizer(clf, staged / tokenizer.name)
        atomic_write_json(staged / meta.name, _meta(clf, out, tokenizer, diff))
        publish_together([(staged / out.name, out), (staged / tokenizer.name, tokenizer), (staged / meta.name, meta)])
    return Exported(out, meta, tokenizer, diff, len(payload))


def _head_graph(run: Run) -> tuple[bytes | None, list[int]]:
    """The run's head graph and its classes. A run without one (trained before heads had graphs, or fine-tuned:
    its head is fitted on the tuned encoder's vectors, with no training rows at hand to check a graph on) gets one
    converted now; the export's check of the whole graph against predict (below) stands in for training's check."""
    if run.graph_bytes is not None and run.record.head_classes is not None:
        return run.graph_bytes, run.record.head_classes
    return convert(run.model, run.model.n_features_in_), [int(c) for c in run.model.classes_]


def _refuse_int8(clf: Classifier) -> None:
    """An int8 run's vectors come from its calibrated OpenVINO graph, which is not an ONNX graph of the encoder: an
    fp32 export would serve other vectors than the head was trained on."""
    if clf.run.record.encoder.int8_graph is not None:
        raise PipelineError(f"this run was embedded in int8 (a calibrated OpenVINO graph), which does not export to "
                            f"ONNX: serve it with `bert-pipeline serve --run {clf.path}` or the Python API "
                            f"(pipeline.load_classifier('{clf.path}')), or embed in fp32 and train again to export")


def _refuse_windows(clf: Classifier) -> None:
    """The graph reads one window per text: a run whose training texts were read in several cannot be served by it
    without its vectors changing meaning."""
    settings = clf.run.record.encoder
    if settings.long_texts == "window":
        raise PipelineError(f"this run read its texts over {settings.max_length} tokens in windows, which one ONNX "
                            f"graph cannot: serve it with the Python API (pipeline.load_classifier('{clf.path}')"
                            ".predict(texts)), or embed with --long-texts truncate and train again to export")


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise PipelineError(f"export needs {exc.name}: pip install 'bert-pipeline[serve]' "
                            "(onnx, onnxscript)") from None


class PooledEncoder(nn.Module):
    """input_ids, attention_mask -> one pooling's vectors (one layer's, for a per-layer pooling): an encoder in fp32."""

    def __init__(self, encoder: Encoder, source: str, layer: int | None = None) -> None:
        super().__init__()
        self.pooled = PooledModel(encoder.model.float().eval(), [source], encoder.has_pooler, encoder.token_types)
        self.layer = layer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        (pooled,) = self.pooled(input_ids, attention_mask)
        return pooled[:, self.layer] if self.layer is not None else pooled


def encoder_onnx(encoder: Encoder, pooling: str = "mean", layer: int | None = None) -> bytes:
    """An encoder and one pooling (one layer of a per-layer pooling) as ONNX bytes (inputs as the export's, output
    `vectors`): the export's first half, and what the speed bench times ONNX Runtime on. The model becomes fp32."""
    return _to_onnx(PooledEncoder(encoder, pooling, layer), _example_inputs(encoder))


def _example_inputs(encoder: Encoder) -> tuple[torch.Tensor, torch.Tensor]:
    """Two texts of different lengths, padded: the batch and token axes stay symbolic in the graph."""
    inputs = encoder.pad(encoder.tokenize(PROBES[:2]).input_ids)
    return torch.from_numpy(inputs["input_ids"]), torch.from_numpy(inputs["attention_mask"])


def _with_head(encoder: bytes, head: bytes, classes: list[int], n_labels: int) -> bytes:
    """The encoder's graph (output `vectors`) feeding the head's (its input), then one column per label: labels the
    head never saw get 0, as in predict. Names in the head's graph are prefixed so none clashes with the encoder's."""
    import onnx
    from onnx import TensorProto, compose, helper, numpy_helper

    first, second = onnx.load_from_string(encoder), compose.add_prefix(onnx.load_from_string(head), "head/")
    spread = np.zeros((len(classes), n_labels), dtype=np.float32)
    spread[np.arange(len(classes)), classes] = 1
    second.graph.initializer.append(numpy_helper.from_array(spread, "head/spread"))
    second.graph.node.append(helper.make_node("MatMul", ["head/probabilities", "head/spread"], [OUTPUT]))
    second.graph.output.append(helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", n_labels]))
    opsets = {o.domain: o.version for o in second.opset_import}  # skl2onnx can list a domain twice
    del second.opset_import[:]
    second.opset_import.extend(helper.make_opsetid(domain, version) for domain, version in opsets.items())
    second.ir_version = first.ir_version  # merging asks for one IR version; the encoder's is the newer
    merged = compose.merge_models(first, second, io_map=[("vectors", second.graph.input[0].name)],
                                  outputs=[OUTPUT])
    return merged.SerializeToString()


def _to_onnx(graph: nn.Module, example: tuple[torch.Tensor, torch.Tensor]) -> bytes:
    """The traced graph as ONNX bytes (torch.export), with the exporter's progress output kept off the terminal."""
    batch, tokens = torch.export.Dim("batch"), torch.export.Dim("tokens")
    shapes = {name: {0: batch, 1: tokens} for name in INPUTS}
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with quiet_conversion("the ONNX exporter failed on this model ({error})"):
            program = torch.onnx.export(graph, example, None, input_names=INPUTS,
                                        output_names=["vectors"], dynamic_shapes=shapes, opset_version=OPSET,
                                        dynamo=True, verbose=False)
    finally:
        quiet.setLevel(level)
    return program.model_proto.SerializeToString()


def _check(payload: bytes, clf: Classifier) -> float:
    """Run the graph with onnxruntime on the probe texts; its probabilities must equal the classifier's."""
    import onnxruntime as ort

    tokenizer = _serving_tokenizer(clf)
    batch = tokenizer.encode_batch(PROBES)
    feed = {"input_ids": np.array([e.ids for e in batch], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in batch], dtype=np.int64)}
    got = ort.InferenceSession(payload, providers=["CPUExecutionProvider"]).run(None, feed)[0]
    want = clf.reading_as(Reading("truncate")).predict_proba(PROBES)  # the graph's tokenizer cuts, as its .json says
    diff = float(np.abs(got - want).max())
    if clf.run.record.encoder.dtype == "fp32" and not diff <= TOLERANCE:
        raise PipelineError(f"the exported graph's probabilities differ from predict's by {diff:.2e} "
                            f"(more than {TOLERANCE:g}): nothing was written; please report this")
    return diff


def _serving_tokenizer(clf: Classifier):
    """The run's fast tokenizer as a `tokenizers.Tokenizer` that truncates at the run's max length and pads to the
    longest text in a batch: what the graph expects, with no settings left to the server."""
    from tokenizers import Tokenizer

    hf = clf.encoder.tokenizer
    serialized = tokenizer_json(hf)
    if serialized is None:
        raise PipelineError(f"the tokenizer of {clf.encoder.ref.name} has parts written in Python, which one "
                            "tokenizer.json cannot hold: it cannot be exported for serving")
    tokenizer = Tokenizer.from_str(serialized)
    tokenizer.enable_truncation(clf.encoder.max_length, direction=clf.encoder.spec.truncation_side)
    tokenizer.enable_padding(pad_id=hf.pad_token_id or 0, pad_token=hf.pad_token or "[PAD]")
    return tokenizer


def _write_tokenizer(clf: Classifier, folder: Path) -> None:
    """The tokenizer's files (AutoTokenizer.from_pretrained reads the folder), each written atomically; its
    tokenizer.json carries the serving truncation and padding."""
    with tempfile.TemporaryDirectory() as tmp:
        clf.encoder.tokenizer.save_pretrained(tmp)
        for path in sorted(Path(tmp).iterdir()):
            if path.is_file() and path.name != "tokenizer.json":
                atomic_write_bytes(folder / path.name, path.read_bytes())
    atomic_write_bytes(folder / "tokenizer.json", _serving_tokenizer(clf).to_str().encode())


def _meta(clf: Classifier, out: Path, tokenizer: Path, diff: float) -> dict:
    record = clf.run.record
    return {"onnx": out.name, "tokenizer": tokenizer.name, "inputs": INPUTS, "output": OUTPUT,
            "labels": clf.label_names, "max_length": record.encoder.max_length, "pooling": record.pooling,
            "head": record.head, "run": str(clf.path), "model": record.encoder.to_json()["model"],
            "run_dtype": record.encoder.dtype, "graph_dtype": "fp32", "opset": OPSET,
            "long_texts": "cut at max_length by the tokenizer" + ("" if record.encoder.long_texts == "truncate" else
                                                                  " (the Python API reads them whole, in windows)"),
            "check": {"texts": len(PROBES), "max_abs_diff": diff, "tolerance": TOLERANCE,
                      "onnxruntime": metadata.version("onnxruntime")}}
