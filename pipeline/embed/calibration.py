"""--dtype int8 in the embed stage: calibrate the int8 graph on a seeded sample of the data's train texts, then the
guard, always on, before any vector is written.

The guard embeds a second seeded sample of train texts, disjoint from the calibration sample, with the int8 graph
and with the fp32 graph it was made from, and refuses (one line, the numbers, nothing written) when the 1st-percentile
cosine or the mean is below the thresholds (Calibration.min_p1, min_mean). Per text it takes the worst cosine of the
poolings asked for, so a cache never holds a pooling bent further than the numbers say. Why always on: int8 done
naively bends a few texts a lot while accuracy holds (docs/int8.md), and a user cannot tell which they got.
"""

from dataclasses import replace

import numpy as np

from pipeline.cache import Int8Check
from pipeline.data import Dataset
from pipeline.embed.encoder import Encoder
from pipeline.embed.runtimes.int8 import quantize
from pipeline.errors import PipelineError

GUARD_TEXTS = 200  # held-out train texts the guard embeds twice: a 1st percentile over 200 is the second worst


def calibrated(encoder: Encoder, ds: Dataset, poolings: list[str]) -> tuple[Encoder, Int8Check | None]:
    """The int8 encoder calibrated on `ds`'s train texts, and the guard's numbers; any other encoder (or an int8 one
    already calibrated: predict's, a Ray actor's) as it is, with None."""
    calibration = encoder.config.calibration
    if calibration is None or calibration.graph is not None:
        return encoder, None
    calibrate, held_out = samples(ds.splits, calibration.size, calibration.seed)
    reference = Encoder(replace(encoder.config, calibration=None).variant(dtype="fp32", runtime="openvino"))
    ids = reference.tokenize([ds.texts[i] for i in calibrate]).input_ids
    key = quantize(reference, ids, encoder.max_length)
    int8 = Encoder(replace(encoder.config, calibration=replace(calibration, graph=key)))
    check = guard(int8, reference, [ds.texts[i] for i in held_out], poolings, len(calibrate))
    if check.p1 < calibration.min_p1 or check.mean < calibration.min_mean:
        raise PipelineError(f"int8 bends the vectors too far, so nothing was written: {check.describe()}; the guard "
                            f"needs a 1st percentile >= {calibration.min_p1} and a mean >= {calibration.min_mean}: "
                            "use --dtype fp32 or bf16, a larger --calibration-size, or lower --int8-min-p1 / "
                            "--int8-min-mean")
    return int8, check


def samples(splits: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the calibration sample (`size` train rows, at most half of them) and of the guard's sample
    (up to GUARD_TEXTS other train rows), drawn with `seed`: the same data always calibrates the same graph."""
    train = np.flatnonzero(np.asarray(splits) == "train")
    if len(train) < 4:
        raise PipelineError(f"--dtype int8 calibrates on the train texts and checks on others, and this data has "
                            f"{len(train)} train rows: use at least 4, or another --dtype")
    order = np.random.default_rng(seed).permutation(train)
    count = min(size, len(order) // 2)
    return order[:count], order[count:count + GUARD_TEXTS]


def guard(int8: Encoder, reference: Encoder, texts: list[str], poolings: list[str], calibrated_on: int) -> Int8Check:
    """The cosines of `texts` between the int8 and the reference encoder: per text the worst over `poolings`."""
    a = int8.encode(int8.read(texts), poolings)
    b = reference.encode(reference.read(texts), poolings)
    worst = np.min([cosines(a[p], b[p]) for p in poolings], axis=0)
    return Int8Check(len(texts), calibrated_on, round(float(worst.mean()), 6), round(float(np.percentile(worst, 1)), 6),
                     round(float(worst.min()), 6))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row by row cosine of two (texts, ...) arrays, each text's vector flattened."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return (a * b).sum(axis=1) / norms
