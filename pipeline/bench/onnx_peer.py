"""ONNX Runtime as a peer of the embed stage in `bench speed`: the same encoder and `mean` pooling exported to ONNX
(the export `bert-pipeline export` uses), run on the same token-budget batches, in fp32 and with onnxruntime's
dynamic int8 quantization (the cheap quantized path an informed user would try first).

Only on CPU: the onnxruntime wheel this project installs has no GPU provider.
"""

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.embed.encoder import Encoder

Contender = Callable[[list[str]], np.ndarray]


def ort_candidates(fp32: Encoder) -> dict[str, Contender]:
    """{name: texts -> mean vectors} for ONNX Runtime in fp32 and int8; empty where onnxruntime is missing or the
    device is not a CPU. `fp32` must be an fp32 encoder (its model is exported as is)."""
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        return {}
    if fp32.device.type != "cpu":
        return {}
    from pipeline.predict.export import encoder_onnx

    with tempfile.TemporaryDirectory() as tmp:
        plain, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        plain.write_bytes(encoder_onnx(fp32, "mean"))
        quantize_dynamic(plain, int8, weight_type=QuantType.QInt8)
        sessions = {name: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                    for name, path in (("ort_fp32", plain), ("ort_int8_dynamic", int8))}
    return {name: lambda texts, s=session: _run(s, fp32, texts) for name, session in sessions.items()}


def _run(session, encoder: Encoder, texts: list[str]) -> np.ndarray:
    """Tokenise, batch and pad as the embed stage does; the session computes the pooled vectors."""
    tokens = encoder.tokenize(texts)
    out = np.empty((len(texts), encoder.hidden_size), dtype=np.float32)
    for rows in encoder.batches(tokens.lengths):
        out[rows] = session.run(None, encoder.pad([tokens.input_ids[i] for i in rows]))[0]
    return out
