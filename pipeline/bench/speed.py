"""How fast the embed stage is, side by side with the obvious alternatives, in one process on the same texts.

Contenders: the seed's flow (encode_plus per text, padding to 64, fp32, batches of 64), sentence-transformers'
`encode` with its defaults and at its best on this device, ONNX Runtime on CPU (fp32 and dynamic int8, onnx_peer.py),
and this project's embed stage (all poolings, and mean alone, written to a cache; all poolings on PyTorch when the
chosen runtime is another; mean on long documents read in windows, `ours_long_windows`). Reported per contender:
texts/s, tokens/s (real tokens, no padding) and model GFLOP/s, against this machine's matmul peak measured in the
same run.
"""

import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch

from pipeline.bench.int8_peer import int8_encoder, int8_fields, int8_matmul_peak
from pipeline.bench.onnx_peer import ort_candidates
from pipeline.bench.profile import profile_embed, profile_markdown, sync
from pipeline.data import Dataset, unlabelled
from pipeline.embed.device import dtype_name
from pipeline.embed.encoder import Encoder
from pipeline.embed.pooling import DEFAULT_POOLINGS
from pipeline.embed.runtimes import torch_eager
from pipeline.embed.settings import EncoderOptions
from pipeline.embed.sources import ModelRef
from pipeline.embed.stage import embed_dataset, embed_texts
from pipeline.embed.windows import token_counts
from pipeline.errors import PipelineError
from pipeline.paths import write_record
from pipeline.records import JsonRecord


class ContenderResult(TypedDict):
    seconds: float  # median over the repeats
    texts_per_s: float
    tokens_per_s: float  # real tokens, no padding
    gflops: float  # model FLOPs over real tokens per second
    note: str


@dataclass(frozen=True)
class SpeedRecord(JsonRecord):
    """speed.json: the machine, the settings, every contender's speed, the ratios the README quotes, and where the
    stage's time goes (profile.py)."""

    machine: dict[str, str | int | None]
    model: str
    device: str
    dtype: str
    runtime: str
    texts: int
    tokens: int
    matmul_peak_gflops: dict[str, float]
    fraction_of_peak: float
    fraction_of_best_peak: float
    contenders: dict[str, ContenderResult]
    st_best: str
    speedup_vs_seed: float
    speedup_vs_sentence_transformers_default: float
    speedup_vs_sentence_transformers_best: float
    min_cosine_vs_sentence_transformers: float
    profile: dict
    # where --dtype int8 runs here (int8_peer.py): ours_int8 over ours_all in the same run, the cosines of its `mean`
    # to sentence-transformers fp32, and its share of the int8 matmul peak (matmul_peak_gflops['int8'])
    int8_speedup_vs_ours: float | None = None
    int8_cosine_p1: float | None = None
    int8_cosine_mean: float | None = None
    int8_min_cosine: float | None = None
    fraction_of_int8_peak: float | None = None
    schema: int = 1

    REWRITE = "`bert-pipeline bench speed` again"


def matmul_peak(dtype: torch.dtype, device: torch.device, seconds: float = 1.0) -> float:
    """Best GFLOP/s of a square matmul in `dtype` on `device` within about `seconds`."""
    n = 8192 if device.type == "cuda" else 1024  # a GPU needs large products to reach its peak
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == 0.0:
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def model_flops(lengths: np.ndarray, config) -> float:
    """Forward FLOPs over real tokens: dense layers 2n(4H^2 + 2HI) plus attention 4n^2H, per layer."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    n = lengths.astype(np.float64)
    return float(layers * (2 * n * (4 * h * h + 2 * h * i) + 4 * n * n * h).sum())


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest row-wise cosine between two sets of vectors of the same texts: how far one bends from the other."""
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def time_it(run: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median seconds over `repeats` runs after one warm-up run on the same call."""
    result = run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def seed_flow(encoder: Encoder, texts: list[str]) -> np.ndarray:
    """The original script: one encode_plus per text, padded to 64, fp32, model over fixed batches of 64 (the
    original called the model on all texts at once, which does not fit in memory for real data sets)."""
    model = encoder.model
    encode_plus = getattr(encoder.tokenizer, "encode_plus", encoder.tokenizer)  # transformers 5 dropped the name
    encoded = [encode_plus(t, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
               for t in texts]
    ids = torch.cat([e["input_ids"] for e in encoded])
    mask = torch.cat([e["attention_mask"] for e in encoded])
    outs = []
    with torch.inference_mode():
        for s in range(0, len(texts), 64):
            batch = {"input_ids": ids[s:s + 64].to(encoder.device), "attention_mask": mask[s:s + 64].to(encoder.device)}
            outs.append(model(**batch).last_hidden_state[:, 0].float().cpu())
    return torch.cat(outs).numpy()


LONG_DOC_TOKENS = 512  # the long-text row's documents: four windows' worth of text at the default max length

# Batch sizes tried for sentence-transformers' best, per device type: a GPU wants far larger batches than a CPU.
ST_BATCHES = {"cpu": {"fp32": (64, 128), "low": (64,)}, "cuda": {"fp32": (128,), "low": (64, 256, 1024)}}


def st_candidates(ref: ModelRef, device: torch.device, fast_dtype: torch.dtype) -> dict[str, Callable]:
    """sentence-transformers with its defaults, and the configurations that could be its best here: fp32 and the
    low-precision dtype (weights cast, as its docs advise) at the batch sizes of ST_BATCHES."""
    from sentence_transformers import SentenceTransformer

    batches = ST_BATCHES.get(device.type, ST_BATCHES["cpu"])
    default = SentenceTransformer(str(ref.folder), device=str(device))
    found = {"st_default": lambda texts: default.encode(texts, convert_to_numpy=True)}
    for batch in batches["fp32"]:
        found[f"st_fp32_bs{batch}"] = lambda texts, b=batch: default.encode(texts, batch_size=b, convert_to_numpy=True)
    if fast_dtype != torch.float32:
        low = SentenceTransformer(str(ref.folder), device=str(device), model_kwargs={"torch_dtype": fast_dtype})
        for batch in batches["low"]:
            found[f"st_{dtype_name(fast_dtype)}_bs{batch}"] = lambda texts, b=batch: low.encode(
                texts, batch_size=b, convert_to_numpy=True)
    return found


def speed_benchmark(ds: Dataset, ref: ModelRef, options: EncoderOptions = EncoderOptions(), repeats: int = 3,
                    log: Callable[[str], None] = print) -> SpeedRecord:
    """Time every contender on the texts of `ds` and return the speed.json record."""
    config = options.resolve(ref)
    if config.dtype == "int8":
        raise PipelineError("bench speed times int8 beside the stage in bf16 or fp32 (ours_int8, where it runs): "
                            "leave --dtype auto, or give fp32 or bf16")
    encoder = Encoder(config)
    fp32 = Encoder(config.variant(dtype="fp32"))
    texts = ds.texts
    lengths = encoder.tokenize(texts).lengths
    flops = model_flops(lengths, encoder.model.config)
    peaks = {name: matmul_peak(dt, encoder.device) for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    results: dict[str, ContenderResult] = {}

    def record(name: str, seconds: float, note: str = "", n: int = len(texts), tokens: float = float(lengths.sum()),
               work: float = flops) -> None:
        results[name] = {"seconds": seconds, "texts_per_s": n / seconds, "tokens_per_s": tokens / seconds,
                         "gflops": work / seconds / 1e9, "note": note}
        log(f"{name:<18} {n / seconds:9.1f} texts/s {work / seconds / 1e9:8.1f} GFLOP/s")

    seconds, _ = time_it(lambda: seed_flow(fp32, texts), max(1, repeats // 2))
    record("seed", seconds, "encode_plus per text, pad to 64, fp32, batches of 64")
    st_vectors = None
    for name, run in st_candidates(ref, encoder.device, encoder.dtype).items():
        seconds, vectors = time_it(lambda run=run: run(texts), repeats)
        record(name, seconds)
        st_vectors = vectors if name == "st_default" else st_vectors
    for name, run in ort_candidates(fp32).items():
        seconds, vectors = time_it(lambda run=run: run(texts), repeats)
        record(name, seconds, f"ONNX Runtime (CPU), same batches; min cosine vs st_default: "
                              f"{min_cosine(vectors, st_vectors):.4f}")
    ours = [("ours_all", encoder, list(DEFAULT_POOLINGS)), ("ours_mean", encoder, ["mean"])]
    on_torch = config.variant(runtime=torch_eager.KIND.name, batch_tokens=options.batch_tokens)
    if on_torch.runtime != config.runtime:  # what the runtime brings: the same stage on PyTorch
        ours.append(("ours_all_torch", Encoder(on_torch), list(DEFAULT_POOLINGS)))
    int8 = int8_encoder(config, ds)
    if int8 is not None:  # fewer bits: the same stage in int8, calibrated before timing
        ours.append(("ours_int8", int8, list(DEFAULT_POOLINGS)))
        peaks["int8"] = int8_matmul_peak()
    with tempfile.TemporaryDirectory() as tmp:
        for name, runner, poolings in ours:
            folders = (Path(tmp) / f"{name}{i}" for i in range(repeats + 1))  # a new cache each run: no reuse
            seconds, _ = time_it(lambda e=runner, p=poolings, f=folders: embed_dataset(ds, e, p, next(f),
                                                                                      progress=False), repeats)
            record(name, seconds, f"embed stage ({runner.config.runtime}) to a Parquet cache, poolings: "
                                  f"{','.join(poolings)}")
        docs = unlabelled(f"{ds.name}-long", long_documents(texts, lengths))
        whole, rows = token_counts(encoder.fast_tokenizer, docs.texts), encoder.read(docs.texts).lengths
        folders = (Path(tmp) / f"long{i}" for i in range(repeats + 1))
        seconds, _ = time_it(lambda: embed_dataset(docs, encoder, ["mean"], next(folders), progress=False), repeats)
        record("ours_long_windows", seconds, f"embed stage, mean, on {len(docs)} documents of about "
               f"{LONG_DOC_TOKENS} tokens (these texts joined in order) read in {len(rows)} windows; texts/s counts "
               "documents, tokens/s each text token once", len(docs), float(whole.sum()),
               model_flops(rows, encoder.model.config))
    ours_mean = embed_texts(encoder, texts, ["mean"])["mean"]
    profile = profile_embed(ds, encoder, list(DEFAULT_POOLINGS))
    speed = speed_record(results, ours_mean, st_vectors, encoder, peaks, len(texts), int(lengths.sum()), profile)
    if int8 is not None:
        fields = int8_fields(embed_texts(int8, texts, ["mean"])["mean"], st_vectors, results["ours_int8"]["seconds"],
                             results["ours_all"]["seconds"])
        speed = replace(speed, **fields, fraction_of_int8_peak=results["ours_int8"]["gflops"] / peaks["int8"])
    return speed


def long_documents(texts: list[str], lengths: np.ndarray, target: int = LONG_DOC_TOKENS) -> list[str]:
    """The texts joined in order into documents of at least `target` tokens (the last one may be shorter): the same
    words read as long texts, so that the long row's tokens/s compares with the short rows'."""
    docs, current, size = [], [], 0
    for text, n in zip(texts, lengths, strict=True):
        current.append(text)
        size += int(n)
        if size >= target:
            docs.append(" ".join(current))
            current, size = [], 0
    return docs + ([" ".join(current)] if current else [])


def speed_record(results: dict[str, ContenderResult], ours_mean, st_vectors, encoder: Encoder, peaks: dict, n: int,
                 tokens: int, profile: dict) -> SpeedRecord:
    st_best = max((k for k in results if k.startswith("st_")), key=lambda k: results[k]["texts_per_s"])
    ours = results["ours_all"]["texts_per_s"]
    used_peak = peaks[dtype_name(encoder.dtype)] if dtype_name(encoder.dtype) in peaks else peaks["fp32"]
    return SpeedRecord(
        machine={"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                 "threads": torch.get_num_threads(),
                 "gpu": torch.cuda.get_device_name() if encoder.device.type == "cuda" else None},
        model=encoder.ref.name, device=str(encoder.device), dtype=dtype_name(encoder.dtype),
        runtime=encoder.config.runtime, texts=n, tokens=tokens, matmul_peak_gflops=peaks,
        fraction_of_peak=results["ours_all"]["gflops"] / used_peak,
        fraction_of_best_peak=results["ours_all"]["gflops"] / max(peaks.values()),
        contenders=results, st_best=st_best,
        speedup_vs_seed=ours / results["seed"]["texts_per_s"],
        speedup_vs_sentence_transformers_default=ours / results["st_default"]["texts_per_s"],
        speedup_vs_sentence_transformers_best=ours / results[st_best]["texts_per_s"],
        min_cosine_vs_sentence_transformers=min_cosine(ours_mean, st_vectors), profile=profile,
    )


def write_speed(folder: Path, record: SpeedRecord) -> list[Path]:
    """speed.json and speed.md under `folder`."""
    return write_record(folder, "speed", record.to_json(), speed_markdown(record))


def speed_markdown(r: SpeedRecord) -> str:
    lines = [f"Model {r.model}. Device {r.device} ({r.machine['gpu'] or r.machine['processor']}, "
             f"{r.machine['threads']} threads), dtype {r.dtype}, runtime {r.runtime}, "
             f"{r.texts} texts, {r.tokens} tokens. "
             f"Matmul peak measured in the same run: fp32 {r.matmul_peak_gflops['fp32']:.0f} GFLOP/s, bf16 "
             f"{r.matmul_peak_gflops['bf16']:.0f} GFLOP/s.", "",
             "| contender | texts/s | tokens/s | model GFLOP/s | note |", "|---|---|---|---|---|"]
    for name, c in r.contenders.items():
        lines.append(f"| {name} | {c['texts_per_s']:.1f} | {c['tokens_per_s']:.0f} | {c['gflops']:.1f} | "
                     f"{c['note']} |")
    lines += ["", f"ours_all vs seed: **{r.speedup_vs_seed:.2f}x**; vs sentence-transformers default: "
              f"**{r.speedup_vs_sentence_transformers_default:.2f}x**; vs its best ({r.st_best}): "
              f"**{r.speedup_vs_sentence_transformers_best:.2f}x**; share of the {r.dtype} matmul peak: "
              f"{r.fraction_of_peak:.0%} (of the best peak: {r.fraction_of_best_peak:.0%}); min cosine of our "
              f"`mean` vs sentence-transformers: {r.min_cosine_vs_sentence_transformers:.6f}.", ""]
    if r.int8_speedup_vs_ours is not None:
        lines += [f"ours_int8 vs ours_all: **{r.int8_speedup_vs_ours:.2f}x**; share of the int8 matmul peak "
                  f"({r.matmul_peak_gflops['int8']:.0f} GOP/s): {r.fraction_of_int8_peak:.0%}; cosine of its "
                  f"`mean` vs sentence-transformers fp32: mean {r.int8_cosine_mean:.5f}, 1st percentile "
                  f"{r.int8_cosine_p1:.5f}, min {r.int8_min_cosine:.5f}.", ""]
    return "\n".join(lines) + ("\n" + profile_markdown(r.profile) if r.profile else "")

