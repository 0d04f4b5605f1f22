"""A trained run as a classifier object: the run's encoder settings, pooling and head, applied to texts.

    clf = pipeline.load_classifier("artifacts/runs/<cache>/mean/logreg")
    clf.predict(["a gorgeous, witty, seductive movie"])        # ['positive']
    clf.predict_proba(texts)                                   # (texts, labels), columns in clf.classes_ order

The CLI's `predict` uses this same object; texts are embedded exactly as the run's training vectors were made (same
model files, max length and dtype), in chunks, so memory does not grow with the number of texts.

One object may be shared by several threads (a server does): calls take turns on the encoder. Its tokenizer's
settings and its OpenVINO infer-request queue (whose callback is set per call) are one per encoder, so two calls at
once raised "Infer Request is busy" or, worse, handed one call's rows to the other. A lock costs no throughput worth
having: one call already runs its batches on every core (OpenVINO's parallel streams, torch's threads).
"""

import copy
import threading
from collections.abc import Iterable
from dataclasses import replace
from functools import cached_property
from pathlib import Path

import numpy as np

from pipeline.cache import EncoderSettings, pooling_source
from pipeline.data.tables import is_missing
from pipeline.embed.encoder import Encoder
from pipeline.embed.settings import Calibration, EncoderConfig, EncoderOptions
from pipeline.embed.sources import ModelRef, resolve_model
from pipeline.embed.stage import embed_texts
from pipeline.embed.windows import Reading, describe, long_texts, specials, token_counts
from pipeline.errors import PipelineError
from pipeline.train.head_graph import full_proba
from pipeline.train.runs import Run, load_run, newest_run

CHUNK = 4096  # texts embedded at a time by predict_proba: vectors in memory stay bounded for any number of texts


class Classifier:
    """A run ready to classify texts. `classes_` are the label names, the columns of `predict_proba`. The encoder
    loads on first use; the model's files are checked against the run when the classifier is made."""

    def __init__(self, run: Run, device: str = "auto", encoder: Encoder | None = None) -> None:
        self.run, self.device = run, device
        self.ref = encoder.ref if encoder is not None else checked_model(run)
        self._encoder = encoder
        self._turn = threading.Lock()  # one call at a time on the encoder (see the module's docstring)

    @property
    def path(self) -> Path:
        return self.run.path

    @property
    def label_names(self) -> list[str]:
        return list(self.run.record.label_names)

    @property
    def classes_(self) -> np.ndarray:
        return np.asarray(self.label_names, dtype=object)

    @property
    def pooling(self) -> str:
        return self.run.record.pooling

    @property
    def head(self) -> str:
        return self.run.record.head

    @property
    def source(self) -> tuple[str, int | None]:
        """The cached pooling this run reads, and the layer for 'layerK' (one layer of 'layers')."""
        return pooling_source(self.pooling)

    @cached_property
    def config(self) -> EncoderConfig:
        """The encoder texts are embedded with: the run's settings, with the run's runtime where it can run here
        (else the one 'auto' picks here; vectors then differ as CPU and GPU vectors do, at a cosine of 0.9999 or
        more), reading texts over max length as the run's training texts were (see `reading`). Resolved once per
        classifier."""
        if self._encoder is not None:
            return self._encoder.config
        run, reading = self.run.record.encoder, Reading.of(self.run.record.encoder)
        options = EncoderOptions(max_length=run.max_length, device=self.device, dtype=run.dtype, runtime=run.runtime,
                                 long_texts=reading.mode, window_overlap=reading.overlap,
                                 calibration=Calibration(graph=run.int8_graph))  # an int8 run's very graph
        return options.resolve(self.ref, fallback=True)

    @property
    def settings(self) -> EncoderSettings:
        """What the vectors are made with (the run's key settings, as this machine runs them)."""
        return self.config.settings()

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = Encoder(self.config)
        return self._encoder

    @property
    def reading(self) -> Reading:
        """How texts over max length are read: as the run's training texts were, or in windows (the default) when
        they all fitted."""
        return self.config.reading

    def reading_as(self, reading: Reading) -> "Classifier":
        """This run reading texts over max length another way, on the same loaded model (export checks its graph,
        which cuts them, against the run read with 'truncate')."""
        encoder = copy.copy(self.encoder)
        encoder.config = replace(encoder.config, reading=reading)
        return Classifier(self.run, self.device, encoder)

    def describe_reading(self, texts: list[str], quiet_when_all_fit: bool = False) -> str | None:
        """One line on how `texts` are read: how many are over max length, their token counts, windows or cut (None
        with `quiet_when_all_fit` when every text fits: nothing to tell)."""
        with self._turn:
            fast, max_length = self.encoder.fast_tokenizer, self.encoder.max_length
            counts = token_counts(fast, texts)
            added = sum(specials(fast))
        info = long_texts(counts, max_length, self.reading, added)
        return None if quiet_when_all_fit and not info.over else describe(info, max_length)

    def embed(self, texts: Iterable[str]) -> np.ndarray:
        """The vectors the head reads, one row per text: the run's pooling (for 'layerK', layer K). Thread-safe:
        concurrent calls wait for each other and each gets exactly its sequential answer."""
        texts = check_texts(texts)
        source, layer = self.source
        with self._turn:
            parts = [embed_texts(self.encoder, texts[i:i + CHUNK], [source])[source]
                     for i in range(0, len(texts), CHUNK)]
        vectors = np.vstack(parts)
        return vectors[:, layer] if layer is not None else vectors

    def token_counts(self, texts: list[str]) -> np.ndarray:
        """Tokens per text as the encoder sees them (truncated at the run's max length), e.g. to fill batches."""
        with self._turn:
            return self.encoder.tokenize(texts).lengths

    def predict_proba(self, texts: Iterable[str]) -> np.ndarray:
        """Class probabilities, one row per text, one column per label (`classes_`), rows summing to 1."""
        return self.head_proba(self.embed(texts))

    def predict(self, texts: Iterable[str]) -> list[str]:
        """The most probable label name per text."""
        return self.labels_of(self.predict_proba(texts))

    def proba_of(self, vectors: np.ndarray) -> np.ndarray:
        """Probabilities from vectors of the run's cached pooling (for 'layerK': all layers, this picks K)."""
        _, layer = self.source
        return self.head_proba(vectors[:, layer] if layer is not None else vectors)

    def head_proba(self, X: np.ndarray) -> np.ndarray:
        """Probabilities from the vectors `embed` gives (onnxruntime and scikit-learn heads are thread-safe)."""
        return full_proba(self.run.head, X, len(self.label_names))

    def labels_of(self, proba: np.ndarray) -> list[str]:
        names = self.label_names
        return [names[i] for i in proba.argmax(axis=1)]

    def __repr__(self) -> str:
        return (f"Classifier({self.head} on {self.pooling}, labels {self.label_names}, model "
                f"{self.run.record.encoder.model.name}, long texts: {self.reading.mode}, run {self.path})")


def load_classifier(run: str | Path | None = None, device: str = "auto",
                    runs: Path = Path("artifacts/runs")) -> Classifier:
    """The run at `run` (a run folder: <runs>/<cache>/<pooling>/<head>), or the newest under `runs`, as a
    Classifier. Its head is loaded only if it hashes to the value recorded at training time."""
    return Classifier(load_run(Path(run) if run is not None else newest_run(runs)), device)


def checked_model(run: Run) -> ModelRef:
    """The run's model files; a model whose weights or tokenizer changed since training is refused."""
    settings = run.record.encoder
    ref = resolve_model(run.record.model_ref or settings.model.name)
    ours, theirs = ref.identity, settings.model
    changed = [part for part, a, b in (("weights", ours.weights_sha256, theirs.weights_sha256),
                                       ("tokenizer", ours.tokenizer_sha256, theirs.tokenizer_sha256)) if a != b]
    if changed:
        raise PipelineError(f"the model at {ref.folder} is not the one run {run.path} was trained with "
                            f"({changed[0]} differ): predict with the original model or retrain")
    return ref


def load_encoder_for(run: Run, device: str = "auto") -> Encoder:
    """The run's model, max length and dtype; a model whose weights or tokenizer changed since training is refused."""
    return Classifier(run, device).encoder


def check_texts(texts: Iterable[str], column: str | None = None) -> list[str]:
    """The texts as a list of non-empty strings. Empty ones are named by row, like the data loader does: one blank
    line in a long file must not look like an empty input; numbers or other values are refused, not converted."""
    if isinstance(texts, str):
        raise PipelineError("give a list of texts, not one string: clf.predict([text])")
    texts = list(texts)
    if not texts:
        raise PipelineError("nothing to predict: give non-empty texts with --text or --input")
    typed = next(((i, t) for i, t in enumerate(texts) if not isinstance(t, str) and not is_missing(t)), None)
    if typed:
        where = f"column '{column}'" if column else "the texts"
        raise PipelineError(f"{where} holds {type(typed[1]).__name__} values (row {typed[0] + 1}), not strings: "
                            "give texts as strings, or pick the text column with --text-col")
    bad = [str(i + 1) for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise PipelineError(f"{len(bad)} empty or whitespace-only text(s) among {len(texts)} to predict (rows "
                            f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}): remove or fill them")
    return texts


def predict_texts(run: Run, encoder: Encoder, texts: list[str]) -> tuple[list[str], np.ndarray]:
    """Predicted label names and class probabilities of `texts` with `run` on `encoder` (kept for callers that load
    the two apart; `load_classifier` does both)."""
    texts = check_texts(texts)
    clf = Classifier(run, encoder=encoder)
    proba = clf.predict_proba(texts)
    return clf.labels_of(proba), proba
