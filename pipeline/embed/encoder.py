"""Run a BERT-family encoder over texts: batched fast tokenisation, token-budget batches, one forward pass each.

The encoder knows nothing of poolings or caches: it yields, per batch, the row indices and the raw outputs that a
pooling needs (hidden states of every layer only when asked for). torch, transformers, the config, the tokenizer and
the model load on first use: with a kept OpenVINO graph (kept_graphs.py) a CPU run needs none of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from itertools import chain
from typing import TYPE_CHECKING

import numpy as np

from pipeline.cache import EncoderSettings
from pipeline.embed import kept_graphs
from pipeline.embed.device import pick_device_name, pick_dtype_name, pick_runtime, torch_dtype
from pipeline.embed.kept_graphs import ModelSpec
from pipeline.embed.loading import check_vocab, load_config, load_model, load_tokenizer, position_limit
from pipeline.embed.models import ModelRef, read_config
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    import torch

# Token budget per batch by device (cpu: small batches stay in cache) and for the openvino runtime, whose requests run
# in parallel streams (1024 measured ~3% faster than 2048 and 7% than 4096 there, quiet Zen 4, all six poolings).
DEFAULT_BATCH_TOKENS = {"cpu": 2048, "cuda": 65536, "mps": 16384, "openvino": 1024}


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
    """A model and its tokenizer on one device, with the settings that change its vectors."""

    def __init__(self, ref: ModelRef, device: str = "auto", dtype: str = "auto", max_length: int = 128,
                 batch_tokens: int = 0, training: bool = False, runtime: str = "auto") -> None:
        """`training` keeps fp32 weights everywhere (low precision then comes from autocast); for inference on a GPU
        the weights themselves are cast to the low-precision dtype, which runs faster there than autocast.
        `runtime` says what runs the poolings' batches (device.RUNTIMES); forward() is always PyTorch's."""
        self.ref, self._training = ref, training
        self.device_name = pick_device_name(device)
        self.dtype_name = pick_dtype_name(dtype, self.device_name)
        self.runtime = pick_runtime(runtime, self.device_name, self.dtype_name, training)
        self._config = self._tokenizer = self._model = None
        kept = kept_graphs.find(ref.identity, self.raw_config) if self.runtime == "openvino" else None
        if kept is None:  # transformers' own backend, as its __call__ runs it
            self.spec, fast = self._inspect(), self.tokenizer.backend_tokenizer
        else:  # the kept graph stands in for the model and tokenizer, which load only if something asks for them
            self.spec, fast = kept.info.spec, kept.tokenizer()
        self.max_length = _check_max_length(max_length, self.spec.position_limit, ref.name)
        self._fast = fast
        kind = "openvino" if self.runtime == "openvino" else self.device_name.split(":")[0]
        self.batch_tokens = max(batch_tokens or DEFAULT_BATCH_TOKENS[kind], self.max_length)

    def _inspect(self) -> ModelSpec:
        """Load the config, tokenizer and model (see _load) and read off what the encoder needs of them."""
        config, tokenizer = self.config, self.tokenizer
        check_vocab(self.ref, tokenizer, config)
        has_pooler = self._load()
        return ModelSpec(has_pooler, position_limit(self.model), int(config.num_hidden_layers),
                         int(config.hidden_size), tokenizer.pad_token_id or 0,
                         "token_type_ids" in tokenizer.model_input_names, tokenizer.truncation_side,
                         bool(tokenizer.backend_tokenizer.encode_special_tokens))

    @cached_property
    def raw_config(self) -> dict:
        """config.json as it is on disk (checked for custom code): what keys a kept graph."""
        return read_config(self.ref.folder, self.ref.name)

    @property
    def config(self):
        """transformers' config of the model (loaded on first use)."""
        if self._config is None:
            self._config = load_config(self.ref)
        return self._config

    @property
    def tokenizer(self):
        """transformers' fast tokenizer of the model (loaded on first use); tokenize() runs its backend (the
        `tokenizers` library) directly, or the copy kept with the graph."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.ref)
        return self._tokenizer

    @property
    def model(self) -> torch.nn.Module:
        """The PyTorch model, loaded on first use when a kept OpenVINO graph made it unneeded at start-up."""
        if self._model is None:
            self._load()
        return self._model

    @property
    def device(self) -> torch.device:
        import torch

        return torch.device(self.device_name)

    @property
    def dtype(self) -> torch.dtype:
        return torch_dtype(self.dtype_name)

    has_pooler = property(lambda self: self.spec.has_pooler)
    num_layers = property(lambda self: self.spec.num_layers)
    hidden_size = property(lambda self: self.spec.hidden_size)
    pad_id = property(lambda self: self.spec.pad_id)
    token_types = property(lambda self: self.spec.token_types)

    def _load(self) -> bool:
        """Load the weights (see loading.load_model); for inference on a GPU cast them to the low-precision dtype."""
        self._model, has_pooler = load_model(self.ref, self.config, self.device)
        if not self._training and self.device.type != "cpu" and self.dtype_name != "fp32":
            self._model.to(self.dtype)
        return has_pooler

    def settings(self) -> EncoderSettings:
        """Everything about the encoder that changes the vectors: model, tokenizer, max length, dtype, runtime."""
        return EncoderSettings(self.ref.identity, self.max_length, self.dtype_name, self.runtime)

    def tokenize(self, texts: list[str]) -> Tokenized:
        """Batched fast tokenisation with truncation; a text is 'truncated' when tokens overflowed max_length.
        Truncation and padding are set on every call, as transformers does: its own calls change them."""
        self._fast.enable_truncation(self.max_length, direction=self.spec.truncation_side)
        self._fast.no_padding()
        encoded = self._fast.encode_batch(texts, add_special_tokens=True)
        truncated = np.array([len(e.overflowing) > 0 for e in encoded], dtype=bool)
        return Tokenized([e.ids for e in encoded], truncated)

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
        import torch

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

    def _to_device(self, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """The batch on the device; token type ids (all zeros for one-segment texts) are made there, not copied."""
        import torch

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
