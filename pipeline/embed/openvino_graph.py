"""The 'openvino' runtime: on CPU, the encoder and every pooling it can make run as one compiled OpenVINO graph.

Why not PyTorch eager there: a small encoder (MiniLM: 384 wide) spends a third of its CPU time outside the matmuls,
in dozens of small kernels per layer (attention, GELU, layer norm, casts) and in the poolings' reductions. OpenVINO
fuses them; on a quiet AMD EPYC Zen 4 it ran MiniLM with all poolings 1.35x faster than PyTorch in bf16 and 1.3x
in fp32 (README, "Speed"). torch.compile fuses too, but costs 20-30 s of compile per run and per new shape.

The graph is converted from the same torch modules the 'torch' runtime runs (the model plus POOLINGS' functions), so
a pooling is still defined once. Converted graphs are kept between runs (kept_graphs.py).
"""

import contextlib
import io
import tempfile
import warnings
import weakref
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline.embed import kept_graphs
from pipeline.embed.device import dtype_name
from pipeline.embed.encoder import Encoder, EncoderOutput, Tokenized, pad_ids, position_limit
from pipeline.embed.pooling import POOLINGS
from pipeline.errors import PipelineError

PRECISION = {"fp32": "f32", "bf16": "bf16"}  # our dtype name -> OpenVINO's element type name
_GRAPHS: "weakref.WeakKeyDictionary[Encoder, Graph]" = weakref.WeakKeyDictionary()


class _PooledModel(torch.nn.Module):
    """input_ids, attention_mask -> every pooling of `names`, in that order: what gets converted."""

    def __init__(self, encoder: Encoder, names: list[str]) -> None:
        super().__init__()
        self.model, self.names, self.has_pooler = encoder.model, names, encoder.has_pooler
        self.token_types = "token_type_ids" in encoder.tokenizer.model_input_names

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        extra = {"token_type_ids": torch.zeros_like(input_ids)} if self.token_types else {}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                         return_dict=True, **extra)
        x = EncoderOutput(out.last_hidden_state, attention_mask, out.hidden_states,
                          getattr(out, "pooler_output", None) if self.has_pooler else None)
        return tuple(POOLINGS[name].fn(x) for name in self.names)


class Graph:
    """The compiled graph of one encoder, with a queue of parallel inference requests (one per CPU stream)."""

    def __init__(self, encoder: Encoder) -> None:
        import openvino as ov

        model, self.names = _model(encoder)
        self.pad_id = encoder.pad_id  # not the encoder itself: the graph must not keep its encoder alive
        precision = PRECISION[dtype_name(encoder.dtype)]
        compiled = ov.Core().compile_model(model, "CPU", {
            "INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "THROUGHPUT"})
        got = compiled.get_property("INFERENCE_PRECISION_HINT")
        if got.get_type_name() != precision:
            raise PipelineError(f"OpenVINO would run this CPU in {got.get_type_name()}, not "
                                f"{dtype_name(encoder.dtype)}: use --runtime torch or --dtype fp32")
        self.queue = ov.AsyncInferQueue(compiled, 0)

    def pool(self, tokens: Tokenized, poolings: list[str], batches: list[np.ndarray],
             bar: tqdm) -> dict[str, np.ndarray]:
        """All requested poolings of a chunk, back in input order; batches run in parallel requests."""
        n, wanted = len(tokens.input_ids), [self.names.index(p) for p in poolings]
        out: dict[str, np.ndarray] = {}

        def done(request, rows: np.ndarray) -> None:
            for name, k in zip(poolings, wanted, strict=True):
                array = request.get_output_tensor(k).data
                if name not in out:
                    out[name] = np.empty((n, *array.shape[1:]), dtype=np.float32)
                out[name][rows] = array
            bar.update(len(rows))

        self.queue.set_callback(done)
        for rows in batches:
            inputs = pad_ids([tokens.input_ids[i] for i in rows], self.pad_id)
            self.queue.start_async({0: inputs["input_ids"], 1: inputs["attention_mask"]}, userdata=rows)
        self.queue.wait_all()
        return out


def pool_chunk(encoder: Encoder, tokens: Tokenized, poolings: list[str], bar: tqdm) -> dict[str, np.ndarray]:
    """The 'openvino' runtime's version of the stage's chunk step; the graph is compiled once per encoder."""
    graph = _GRAPHS.get(encoder)
    if graph is None:
        graph = _GRAPHS[encoder] = Graph(encoder)
    return graph.pool(tokens, poolings, encoder.batches(tokens.lengths), bar)


def _model(encoder: Encoder):
    """The graph and its output names, always as read back from its files: a graph fresh from the converter can
    round a last bit differently, and a rerun (which reads the kept copy) must give the very same vectors as the first
    run. The files are the kept copy when there is one, else a new conversion, kept for the next run."""
    import openvino as ov

    kept = kept_graphs.find(encoder.ref.identity.weights_sha256, encoder.config.to_dict())  # checked again: now
    if kept is None:
        info = kept_graphs.GraphInfo([n for n, p in POOLINGS.items() if encoder.has_pooler or not p.needs_pooler],
                                     encoder.has_pooler, position_limit(encoder.model))
        model = _convert(encoder, info.names)
        folder = kept_graphs.graph_folder(encoder.ref.identity.weights_sha256, encoder.config.to_dict())
        with contextlib.suppress(OSError, PipelineError):
            kept = kept_graphs.keep(model, folder, info) if folder is not None else None
        if kept is None:  # nowhere to keep it: read back all the same, weights in memory
            with tempfile.TemporaryDirectory() as tmp:
                ov.save_model(model, Path(tmp) / "model.xml", compress_to_fp16=False)
                return ov.Core().read_model(Path(tmp) / "model.xml", config={"ENABLE_MMAP": False}), info.names
    return ov.Core().read_model(kept.xml), kept.info.names


def _convert(encoder: Encoder, names: list[str]):
    """torch -> OpenVINO (traced on a small batch; batch and token axes stay dynamic), with the tracer's warnings
    and prints kept off the terminal."""
    import openvino as ov

    example = encoder.prepare(encoder.tokenize(["a short text", "and a somewhat longer second text"]).input_ids)
    module = _PooledModel(encoder, names).eval()
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            return ov.convert_model(module, example_input=(example["input_ids"], example["attention_mask"]))
        except Exception as exc:  # a converter error is pages long; its first line says what failed
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise PipelineError(f"OpenVINO cannot convert {encoder.ref.name} ({type(exc).__name__}: {first}): "
                                "use --runtime torch") from None
