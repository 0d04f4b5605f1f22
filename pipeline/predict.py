"""Predict with a trained run: embed new texts exactly as the run's training vectors were made, apply the head."""

from pathlib import Path

import numpy as np

from pipeline.cache import pooling_source
from pipeline.embed.encoder import Encoder
from pipeline.embed.models import resolve_model
from pipeline.embed.stage import embed_texts
from pipeline.errors import PipelineError
from pipeline.paths import atomic_write_bytes
from pipeline.train.heads import full_proba
from pipeline.train.runs import Run


def load_encoder_for(run: Run, device: str = "auto") -> Encoder:
    """The run's model, max length and dtype; a model whose weights or tokenizer changed since training is refused."""
    settings = run.record.encoder
    ref = resolve_model(run.record.model_ref or settings.model.name)
    ours, theirs = ref.identity, settings.model
    changed = [part for part, a, b in (("weights", ours.weights_sha256, theirs.weights_sha256),
                                       ("tokenizer", ours.tokenizer_sha256, theirs.tokenizer_sha256)) if a != b]
    if changed:
        raise PipelineError(f"the model at {ref.folder} is not the one run {run.path} was trained with "
                            f"({changed[0]} differ): predict with the original model or retrain")
    return Encoder(ref, device, settings.dtype, settings.max_length)


def predict_texts(run: Run, encoder: Encoder, texts: list[str]) -> tuple[list[str], np.ndarray]:
    """Predicted label names and class probabilities (columns in the run's label order). Empty texts are named by
    row, like the data loader does: one blank line in a long file must not look like an empty input."""
    if not texts:
        raise PipelineError("nothing to predict: give non-empty texts with --text or --input")
    bad = [str(i + 1) for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise PipelineError(f"{len(bad)} empty or whitespace-only text(s) among {len(texts)} to predict (rows "
                            f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}, counting any --text values "
                            "first): remove or fill them")
    source, layer = pooling_source(run.record.pooling)
    vectors = embed_texts(encoder, texts, [source])[source]
    X = vectors[:, layer] if layer is not None else vectors
    names = run.record.label_names
    proba = full_proba(run.model, X, len(names))
    return [names[i] for i in proba.argmax(axis=1)], proba


def write_predictions(path: Path, texts: list[str], labels: list[str], proba: np.ndarray, names: list[str]) -> None:
    """CSV or Parquet (by suffix) with text, predicted label and one probability column per class."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    columns = {"text": texts, "label": labels, **{f"p_{n}": proba[:, i] for i, n in enumerate(names)}}
    table, sink = pa.table(columns), pa.BufferOutputStream()
    if path.suffix.lower() in (".parquet", ".pq"):
        pq.write_table(table, sink)
    else:
        pacsv.write_csv(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())
