"""Run a BERT-family encoder over texts: batched fast tokenisation, token-budget batches, one forward pass each.

The encoder knows nothing of poolings or caches: it yields, per batch, the row indices and the raw outputs that a
pooling needs (hidden states of every layer only when asked for).
"""

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch

from pipeline.cache import EncoderSettings
from pipeline.embed import kept_graphs
from pipeline.embed.device import dtype_name, pick_device, pick_dtype, pick_runtime
from pipeline.embed.models import ModelRef, custom_code_error, first_line, read_config
from pipeline.errors import PipelineError

# Token budget per batch by device (cpu: small batches stay in cache) and for the openvino runtime, whose requests run
# in parallel streams (1024 measured ~3% faster than 2048 and 7% than 4096 there, quiet Zen 4, all six poolings).
DEFAULT_BATCH_TOKENS = {"cpu": 2048, "cuda": 65536, "mps": 16384, "openvino": 1024}
PLACEHOLDER_TOKENS, REAL_VOCAB = 100, 1000  # a tokenizer under 100 tokens for a model of over 1000 is a stand-in


@dataclass(frozen=True)
class EncoderOutput:
    """One batch's outputs; hidden_states is None unless asked for, pooler_output None if the model has none."""

    last_hidden: torch.Tensor
    mask: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None
    pooler_output: torch.Tensor | None


@dataclass(frozen=True)
class Tokenized:
    input_ids: list[list[int]]
    truncated: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self.input_ids))


class Encoder:
    """A loaded model and tokenizer on one device, with the settings that change its vectors."""

    def __init__(self, ref: ModelRef, device: str = "auto", dtype: str = "auto", max_length: int = 128,
                 batch_tokens: int = 0, training: bool = False, runtime: str = "auto") -> None:
        """`training` keeps fp32 weights everywhere (low precision then comes from autocast); for inference on a GPU
        the weights themselves are cast to the low-precision dtype, which runs faster there than autocast.
        `runtime` says what runs the poolings' batches (device.RUNTIMES); forward() is always PyTorch's."""
        self.ref = ref
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.runtime = pick_runtime(runtime, self.device, self.dtype, training)
        self.config, self._training = _load_config(ref), training
        self.tokenizer = _load_tokenizer(ref)
        _check_vocab(ref, self.tokenizer, self.config)
        openvino = self.runtime == "openvino"
        kept = kept_graphs.find(ref.identity.weights_sha256, self.config.to_dict()) if openvino else None
        self._model: torch.nn.Module | None = None
        if kept is None:
            self.has_pooler, limit = self._load(), position_limit(self.model)
        else:  # the kept graph stands in for the model, which loads only if something asks for it
            self.has_pooler, limit = kept.info.has_pooler, kept.info.position_limit
        self.max_length = _check_max_length(max_length, limit, ref.name)
        default = DEFAULT_BATCH_TOKENS["openvino" if self.runtime == "openvino" else self.device.type]
        self.batch_tokens = max(batch_tokens or default, self.max_length)
        self.num_layers = int(self.config.num_hidden_layers)
        self.hidden_size = int(self.config.hidden_size)
        self.token_types = "token_type_ids" in self.tokenizer.model_input_names  # one-segment texts: all zeros

    @property
    def model(self) -> torch.nn.Module:
        """The PyTorch model, loaded on first use when a kept OpenVINO graph made it unneeded at start-up."""
        if self._model is None:
            self._load()
        return self._model

    def _load(self) -> bool:
        """Load the weights (see _load_model); for inference on a GPU cast them to the low-precision dtype."""
        self._model, has_pooler = _load_model(self.ref, self.config, self.device)
        if not self._training and self.device.type != "cpu" and self.dtype != torch.float32:
            self._model.to(self.dtype)
        return has_pooler

    def settings(self) -> EncoderSettings:
        """Everything about the encoder that changes the vectors: model, tokenizer, max length, dtype, runtime."""
        return EncoderSettings(self.ref.identity, self.max_length, dtype_name(self.dtype), self.runtime)

    def tokenize(self, texts: list[str]) -> Tokenized:
        """Batched fast tokenisation with truncation; a text is 'truncated' when tokens overflowed max_length."""
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length, add_special_tokens=True)
        truncated = np.array([len(e.overflowing) > 0 for e in encoded.encodings], dtype=bool)
        return Tokenized(encoded["input_ids"], truncated)

    def batches(self, lengths: np.ndarray) -> list[np.ndarray]:
        """Row indices grouped longest-first so that rows x longest length stays within the token budget."""
        order = np.argsort(-lengths, kind="stable")
        groups, start = [], 0
        while start < len(order):
            rows = max(1, self.batch_tokens // int(lengths[order[start]]))
            groups.append(order[start:start + rows])
            start += rows
        return groups

    def forward(self, input_ids: list[list[int]], hidden_states: bool = False) -> EncoderOutput:
        """One forward pass over a padded batch, in the chosen dtype; outputs stay on the device."""
        inputs = self.prepare(input_ids)
        use_autocast = self.dtype != next(self.model.parameters()).dtype  # CPU: bf16 autocast over fp32 weights
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.dtype, enabled=use_autocast):
            out = self.model(**inputs, output_hidden_states=hidden_states, return_dict=True)
        pooler = getattr(out, "pooler_output", None) if self.has_pooler else None
        return EncoderOutput(out.last_hidden_state, inputs["attention_mask"],
                             out.hidden_states if hidden_states else None, pooler)

    def prepare(self, input_ids: list[list[int]]) -> dict[str, torch.Tensor]:
        """A batch of token ids as the model's padded inputs, on the device."""
        return self._to_device(self.pad(input_ids))

    def pad(self, input_ids: list[list[int]]) -> dict[str, np.ndarray]:
        return pad_ids(input_ids, self.pad_id)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id or 0

    def _to_device(self, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """The batch on the device; token type ids (all zeros for one-segment texts) are made there, not copied."""
        tensors = {k: torch.from_numpy(v).to(self.device, non_blocking=True) for k, v in arrays.items()}
        if self.token_types:
            tensors["token_type_ids"] = torch.zeros_like(tensors["input_ids"])
        return tensors


def pad_ids(input_ids: list[list[int]], pad_id: int) -> dict[str, np.ndarray]:
    """Right-padded ids and mask, built in numpy without a loop over rows (a GPU eats batches faster than a Python
    loop over thousands of rows fills them)."""
    lengths = np.fromiter(map(len, input_ids), dtype=np.int64, count=len(input_ids))
    mask = np.arange(int(lengths.max())) < lengths[:, None]
    ids = np.full(mask.shape, pad_id, dtype=np.int64)
    ids[mask] = np.fromiter(chain.from_iterable(input_ids), dtype=np.int64, count=int(lengths.sum()))
    return {"input_ids": ids, "attention_mask": mask.astype(np.int64)}


@contextmanager
def _quiet() -> Iterator[None]:
    """transformers talks through its logger and through warnings.warn, both on stderr; while it loads a model, only
    our own one-line PipelineError may reach the user."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _load_config(ref: ModelRef):
    """The model's config, never with remote code: a model_type transformers does not know needs custom code."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = read_config(ref.folder, ref.name).get("model_type")
    if isinstance(model_type, str) and model_type not in CONFIG_MAPPING:
        raise custom_code_error(ref.name)
    with _quiet():
        try:
            return AutoConfig.from_pretrained(ref.folder, trust_remote_code=False)
        except Exception as exc:
            raise PipelineError(f"cannot read the config of {ref.name} in {ref.folder} ({first_line(exc)}): restore "
                                "the model's original config.json") from None


def _load_tokenizer(ref: ModelRef):
    from transformers import AutoTokenizer

    with _quiet():
        try:
            tokenizer = AutoTokenizer.from_pretrained(ref.folder, use_fast=True, trust_remote_code=False)
        except Exception as exc:
            raise PipelineError(f"cannot load the tokenizer of {ref.name} from {ref.folder} "
                                f"({first_line(exc)})") from None
    if not tokenizer.is_fast:
        raise PipelineError(f"{ref.name} has no fast tokenizer (tokenizer.json): add one to the model folder")
    return tokenizer


def _check_vocab(ref: ModelRef, tokenizer, config) -> None:
    """Refuse a tokenizer that cannot be the model's own. The rule, with N = config.json's vocab_size (the rows of
    the embedding matrix): every token id must be below N, else some token has no embedding (an index error
    mid-run, or the wrong rows); fewer tokens than N is fine (many models pad the matrix, e.g. to a multiple of 8);
    and fewer than 100 tokens while N > 1000 is a placeholder, not a real vocabulary (every word would be [UNK])."""
    rows = getattr(config, "vocab_size", None)
    if not isinstance(rows, int) or rows <= 0:
        return
    vocab = tokenizer.get_vocab()
    needed = max(vocab.values(), default=-1) + 1
    fix = "put the tokenizer files the model was trained with in its folder"
    if needed > rows:
        raise PipelineError(f"the tokenizer of {ref.name} has token ids up to {needed - 1}, but the model has "
                            f"embeddings for only {rows} (vocab_size in config.json): the tokenizer belongs to "
                            f"another model; {fix}")
    if len(vocab) < PLACEHOLDER_TOKENS and rows > REAL_VOCAB:
        raise PipelineError(f"the tokenizer of {ref.name} has only {len(vocab)} tokens for a model with {rows}: it "
                            f"is a placeholder, not the model's vocabulary; {fix}")


def _load_model(ref: ModelRef, config, device: torch.device) -> tuple[torch.nn.Module, bool]:
    """Load safetensors weights only, never remote code; refuse a checkpoint whose encoder weights are missing."""
    from transformers import AutoModel

    with _quiet():
        try:
            model, info = AutoModel.from_pretrained(ref.folder, config=config, use_safetensors=True,
                                                    trust_remote_code=False, output_loading_info=True)
        except Exception as exc:
            raise PipelineError(f"cannot load model {ref.name} from {ref.folder} ({type(exc).__name__}: "
                                f"{first_line(exc)})") from None
    missing = [k for k in info.get("missing_keys", []) if not k.startswith("pooler")]
    if missing:
        raise PipelineError(f"{ref.name} lacks trained weights for {len(missing)} tensors (e.g. {missing[0]}): "
                            "it would run with random weights; use a complete checkpoint")
    has_pooler = getattr(model, "pooler", None) is not None and not any(
        k.startswith("pooler") for k in info.get("missing_keys", []))
    return model.eval().to(device), has_pooler


def position_limit(model) -> int:
    """Tokens per text the model has position embeddings for. RoBERTa-style models (RoBERTa, XLM-R, MPNet) number
    positions from padding_idx + 1, so 514 embeddings hold 512 tokens; BERT-style models use all of them."""
    limit = int(getattr(model.config, "max_position_embeddings", None) or 512)
    embeddings = getattr(model, "embeddings", None)
    pad = getattr(embeddings, "padding_idx", None)
    if isinstance(pad, int) and getattr(embeddings, "position_embeddings", None) is not None:
        limit -= pad + 1
    return limit


def _check_max_length(max_length: int, limit: int, name: str) -> int:
    if not 2 <= max_length <= limit:
        raise PipelineError(f"--max-length {max_length} is out of range: use 2..{limit} for this model ({name} has "
                            f"position embeddings for {limit} tokens)")
    return max_length


def iter_outputs(encoder: Encoder, tokens: Tokenized,
                 hidden_states: bool) -> Iterator[tuple[np.ndarray, EncoderOutput]]:
    """(row indices, outputs) for every batch of an already tokenised chunk of texts."""
    for rows in encoder.batches(tokens.lengths):
        yield rows, encoder.forward([tokens.input_ids[i] for i in rows], hidden_states)
