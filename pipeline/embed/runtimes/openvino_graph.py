"""The 'openvino' runtime: on CPU, the encoder and every pooling it can make run as one compiled OpenVINO graph.

Why not PyTorch eager there: a small encoder (MiniLM: 384 wide) spends a third of its CPU time outside the matmuls,
in dozens of small kernels per layer (attention, GELU, layer norm, casts) and in the poolings' reductions. OpenVINO
fuses them; on a quiet AMD EPYC Zen 4 it ran MiniLM with all poolings 1.35x faster than PyTorch in bf16 and 1.3x
in fp32 (README, "Speed"). torch.compile fuses too, but costs 20-30 s of compile per run and per new shape.

The graph is converted from the same torch modules the 'torch' runtime runs (pooled_model.PooledModel: the model,
then POOLINGS' functions), so a pooling is still defined once. Converted graphs are kept between runs
(kept_graphs.py); a run that finds its graph kept imports neither torch nor transformers.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.embed.batching import pad_ids, token_batches
from pipeline.embed.device import cpu_runs_bf16_natively, cpu_threads_cap, device_kind
from pipeline.embed.loading import quiet_conversion, tokenizer_json
from pipeline.embed.pooling import POOLINGS
from pipeline.embed.runtimes import kept_graphs
from pipeline.embed.runtimes.base import Clock, ModelSpec, Put, RuntimeKind, untimed
from pipeline.errors import PipelineError, first_line

if TYPE_CHECKING:
    from pipeline.embed.encoder import Encoder

PRECISION = {"fp32": "f32", "bf16": "bf16"}  # our dtype name -> OpenVINO's element type name
# Its requests run in parallel streams: 1024 tokens measured ~3% faster than 2048 and 7% than 4096 there (quiet Zen 4,
# all six poolings).
BATCH_TOKENS = 1024
# A call of a few texts wanted now (the server, predict --text) runs in batches of at most SOON_TOKENS, and in at
# least as many batches as there are streams: shorter batches of like lengths pad less, and every stream gets one.
# A single text cannot be split: it runs on every core at once (OpenVINO's LATENCY hint) instead of one stream's
# share (THROUGHPUT: a request per stream). Measured on a quiet 2-core AMD EPYC (AVX2, MiniLM fp32), ms a text for
# calls of random SST-2 test sentences in 1024-token / 256-token batches: 30 texts 22.0 / 10.5; 128 texts 10.5 / 9.1;
# 512 texts 9.2 / 8.7; one text 22 ms on one stream, 12-13 ms under LATENCY.
THROUGHPUT, LATENCY = "THROUGHPUT", "LATENCY"
SOON_TOKENS = 256
STEP = "OpenVINO graph (pad, forward, pooling, copy out)"  # its one compute step, as the bench's profile shows it


class OpenVINORuntime:
    """The compiled graphs of one encoder, made on first use and made again after a failure (so that the next call
    starts from a fresh one): one tuned for throughput (a request per CPU stream, batches in parallel) and, for one
    text wanted now, one tuned for latency (one request on every core; see SOON_TOKENS). Both run the same graph
    file."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder, self.graphs = encoder, {}
        self.kept = kept_graphs.find(encoder.ref.identity, encoder.raw_config)

    def model_free(self) -> tuple[ModelSpec, object] | None:
        """With a kept graph the model and tokenizer load only if something asks for them."""
        return (self.kept.info.spec, self.kept.tokenizer()) if self.kept is not None else None

    def encode(self, input_ids: list[list[int]], batches: list[np.ndarray], poolings: list[str], put: Put,
               clock: Clock = untimed, soon: bool = False) -> None:
        rows = sum(map(len, batches)) if soon else 0
        graph = self._graph(LATENCY if rows == 1 else THROUGHPUT)
        if rows > 1:
            batches = _soon_batches(input_ids, np.concatenate(batches), len(graph.queue))
        try:
            clock(STEP, graph.pool, input_ids, poolings, batches, put)
        except PipelineError:
            self.graphs.clear()
            raise

    def _graph(self, hint: str) -> Graph:
        if hint not in self.graphs:
            self.graphs[hint] = Graph(*model_of(self.encoder), self.encoder.pad_id, self.encoder.dtype_name, hint)
        return self.graphs[hint]


def _soon_batches(input_ids: list[list[int]], rows: np.ndarray, streams: int) -> list[np.ndarray]:
    """`rows` in batches of at most SOON_TOKENS, and in at least `streams` batches where there are enough rows."""
    lengths = np.fromiter((len(input_ids[i]) for i in rows), dtype=np.int64, count=len(rows))
    budget = min(SOON_TOKENS, -(-len(rows) // streams) * int(lengths.max()))
    return [rows[group] for group in token_batches(lengths, budget)]


def _supports(device: str, dtype: str, training: bool) -> bool:
    """CPU inference in fp32, or in bf16 on x86 CPUs with native bf16 (OpenVINO's CPU bf16 is x86's)."""
    return device_kind(device) == "cpu" and not training and (
        dtype == "fp32" or (dtype == "bf16" and cpu_runs_bf16_natively()))


class Graph:
    """One compiled form of an encoder's graph, with a queue of its inference requests (one per CPU stream)."""

    def __init__(self, model, names: list[str], kept: kept_graphs.KeptGraph | None, pad_id: int, dtype: str,
                 hint: str = THROUGHPUT) -> None:
        """`dtype`: what its float parts run in (an int8 graph's run in fp32); `hint`: THROUGHPUT or LATENCY."""
        import openvino as ov

        self.names, self.pad_id, precision = names, pad_id, PRECISION[dtype]
        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": hint}
        if (threads := cpu_threads_cap()) is not None:  # a share of the machine: its threads, and no pinning (two
            # processes would pin theirs to the same first cores)
            config.update({"INFERENCE_NUM_THREADS": threads, "ENABLE_CPU_PINNING": False})
        compiled = _compile(model, config, kept)
        got = compiled.get_property("INFERENCE_PRECISION_HINT")
        if got.get_type_name() != precision:
            raise PipelineError(f"OpenVINO would run this CPU in {got.get_type_name()}, not "
                                f"{dtype}: use --runtime torch or --dtype fp32")
        self.queue = ov.AsyncInferQueue(compiled, 0)

    def pool(self, input_ids: list[list[int]], poolings: list[str], batches: list[np.ndarray], put: Put) -> None:
        """All requested poolings of a chunk. Batches run in parallel requests whose callbacks copy results out and
        hand them to `put`, one at a time; an error there is kept and raised here, on the caller's thread, as one
        line."""
        missing = [p for p in poolings if p not in self.names]
        if missing:
            raise PipelineError(f"the OpenVINO graph has no {', '.join(missing)}: use --runtime torch")
        wanted = [self.names.index(p) for p in poolings]
        errors: list[BaseException] = []
        lock = threading.Lock()

        def finished(request, rows: np.ndarray) -> None:
            try:
                arrays = {p: request.get_output_tensor(k).data.copy() for p, k in zip(poolings, wanted, strict=True)}
                with lock:
                    put(rows, arrays)
            except BaseException as exc:  # nothing may escape into OpenVINO's thread: it would abort the process
                errors.append(exc)

        self.queue.set_callback(finished)
        try:
            for rows in batches:
                inputs = pad_ids([input_ids[i] for i in rows], self.pad_id)
                self.queue.start_async({0: inputs["input_ids"], 1: inputs["attention_mask"]}, userdata=rows)
            self.queue.wait_all()
        except RuntimeError as exc:
            errors.append(exc)
        except BaseException:  # Ctrl-C mid-chunk: the requests in flight finish before the stage unwinds
            self.queue.wait_all()
            raise
        if errors:
            raise PipelineError(f"OpenVINO failed on a batch ({type(errors[0]).__name__}: {first_line(errors[0])}):"
                                " use --runtime torch") from None


def model_of(encoder: Encoder):
    """The graph, its output names and its kept copy (None if it could not be kept). The graph is always read back
    from its files: one fresh from the converter can round a last bit differently, and a rerun (which reads the kept
    copy) must give the very same vectors as the first run. The files are the kept copy when there is one, else a new
    conversion, kept for the next run if it can be."""
    import openvino as ov

    identity, config = encoder.ref.identity, encoder.raw_config
    kept = kept_graphs.find(identity, config)
    if kept is not None:
        with contextlib.suppress(RuntimeError):  # removed or replaced meanwhile by another run: convert again
            return ov.Core().read_model(kept.xml), kept.info.names, kept
    info = kept_graphs.GraphInfo([n for n, p in POOLINGS.items() if encoder.has_pooler or not p.needs_pooler],
                                 encoder.spec)
    model = _convert(encoder, info.names)
    folder = kept_graphs.graph_folder(identity, config)
    tokenizer = tokenizer_json(encoder.tokenizer)  # None: not kept; each run converts such a graph again
    if folder is not None and tokenizer is not None:
        with contextlib.suppress(OSError, PipelineError, RuntimeError):  # cannot keep it (full disk...): in memory
            kept = kept_graphs.keep(model, tokenizer, folder, info)
            return ov.Core().read_model(kept.xml), info.names, kept
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ov.save_model(model, Path(tmp) / "model.xml", compress_to_fp16=False)
            return ov.Core().read_model(Path(tmp) / "model.xml", config={"ENABLE_MMAP": False}), info.names, None
    except (OSError, RuntimeError) as exc:
        raise PipelineError(f"cannot write the converted OpenVINO graph ({first_line(exc)}): free disk space in "
                            f"{tempfile.gettempdir()}, or use --runtime torch") from None


def _compile(model, config: dict, kept: kept_graphs.KeptGraph | None):
    """Compile for the CPU. Beside a kept graph, OpenVINO's own cache keeps the compiled form (a few hundred KB; the
    weights stay in the graph's files), which cuts a start-up's compile from about 0.5 s to under 0.1 s."""
    import openvino as ov

    if kept is not None:
        with contextlib.suppress(RuntimeError):  # a cache folder it cannot use: compile without
            return ov.Core().compile_model(model, "CPU", {**config, "CACHE_DIR": str(kept.folder / "compiled")})
    return ov.Core().compile_model(model, "CPU", config)


def _convert(encoder: Encoder, names: list[str]):
    """torch -> OpenVINO (traced on a small batch; batch and token axes stay dynamic)."""
    import openvino as ov

    from pipeline.embed.pooled_model import PooledModel

    example = encoder.prepare(encoder.tokenize(["a short text", "and a somewhat longer second text"]).input_ids)
    module = PooledModel(encoder.model, names, encoder.has_pooler, encoder.token_types).eval()
    with quiet_conversion(f"OpenVINO cannot convert {encoder.ref.name} ({{error}}): use --runtime torch"):
        return ov.convert_model(module, example_input=(example["input_ids"], example["attention_mask"]))


KIND = RuntimeKind("openvino", "encoder and poolings compiled by OpenVINO as one graph (CPU: fp32, or bf16 on x86; "
                   "inference only)", supports=_supports,
                   limits="runs inference on a CPU in fp32 (or bf16 where the CPU has it)",
                   batch_tokens=lambda device: BATCH_TOKENS, start=OpenVINORuntime, package="openvino",
                   auto_rank=0)  # measured faster than PyTorch where it runs (README, "Speed")
