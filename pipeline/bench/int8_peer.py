"""The int8 side of `bench speed`: this project's stage with --dtype int8 (`ours_int8`), the int8 matmul peak, and
how far int8 bends the vectors, all measured in the same run as the other contenders.

ours_int8 is calibrated once, before timing (calibration.calibrated: a seeded sample of the timed texts, since the
bench reads one split; the guard checks other texts of it), so each timed run only embeds, as a later embed of the
user's data does with its kept graph. The peak is an OpenVINO int8 MatMul (u8 activations x i8 weights, quantized by
NNCF the way the encoder's are): VNNI where the CPU has it, so "share of the int8 peak" is against what this CPU
does in int8, not against a bf16 or fp32 figure.
"""

import time
from dataclasses import replace

import numpy as np

from pipeline.data import Dataset
from pipeline.embed.calibration import calibrated, cosines
from pipeline.embed.encoder import Encoder
from pipeline.embed.pooling import DEFAULT_POOLINGS
from pipeline.embed.runtimes import runtime_supported
from pipeline.embed.settings import Calibration, EncoderConfig

PEAK_N = 1024  # the square MatMul the peaks are measured on (as matmul_peak on a CPU)


def int8_encoder(config: EncoderConfig, ds: Dataset) -> Encoder | None:
    """The int8 encoder of this model calibrated on `ds`'s texts (all taken as train texts); None where int8 does not
    run here (a GPU, or NNCF not installed)."""
    if not runtime_supported("openvino-int8", config.device, "int8"):
        return None
    int8 = replace(config.variant(dtype="int8", runtime="auto"), calibration=Calibration(min_p1=-1.0, min_mean=-1.0))
    calibrating = replace(ds, splits=np.full(len(ds), "train", dtype=object))
    encoder, _ = calibrated(Encoder(int8), calibrating, list(DEFAULT_POOLINGS))  # bench: measure, never refuse
    return encoder


def int8_fields(ours_int8: np.ndarray, st_vectors: np.ndarray, seconds: float, ours_all: float) -> dict:
    """speed.json's int8 fields: speed over ours_all in the same run, and the cosines of its `mean` to
    sentence-transformers fp32 over every timed text."""
    found = cosines(ours_int8, st_vectors)
    return {"int8_speedup_vs_ours": ours_all / seconds, "int8_cosine_p1": float(np.percentile(found, 1)),
            "int8_cosine_mean": float(found.mean()), "int8_min_cosine": float(found.min())}


def int8_matmul_peak(seconds: float = 1.0) -> float:
    """Best GOP/s of a PEAK_N-square MatMul quantized to int8 by NNCF and compiled by OpenVINO for this CPU."""
    import logging

    import nncf
    import openvino as ov
    import openvino.opset13 as ops

    logging.getLogger("nncf").setLevel(logging.ERROR)
    rng = np.random.default_rng(0)
    x = ops.parameter([PEAK_N, PEAK_N], np.float32)
    weights = ops.constant(rng.standard_normal((PEAK_N, PEAK_N)).astype(np.float32))
    model = ov.Model([ops.matmul(x, weights, False, True)], [x])
    sample = rng.standard_normal((PEAK_N, PEAK_N)).astype(np.float32)
    quantized = nncf.quantize(model, nncf.Dataset([sample]), subset_size=1)
    request = ov.Core().compile_model(quantized, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == 0.0:
        start = time.perf_counter()
        request.infer([sample])
        best = max(best, 2 * PEAK_N**3 / (time.perf_counter() - start) / 1e9)
    return best
