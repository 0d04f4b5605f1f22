"""Run a BERT-family encoder over texts: fast tokenisation, token-budget batches, then the runtime.

`Encoder.encode` is the one path every caller takes (the embed stage on any engine, predict, the bench): tokenised
rows -> token-budget batches -> the runtime -> one float32 array per pooling, in input order. The encoder is made
from one resolved EncoderConfig (settings.py) and never picks a setting itself. torch, transformers, the config, the
tokenizer and the model load on first use: a runtime that has what it needs without them (a kept OpenVINO graph)
starts without any of them.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from pipeline.cache import EncoderSettings
from pipeline.embed.aggregate import Gather, split_name
from pipeline.embed.batching import InOrder, Tokenized, pad_ids, token_batches
from pipeline.embed.device import torch_dtype
from pipeline.embed.loading import check_vocab, load_config, load_model, load_tokenizer, position_limit
from pipeline.embed.pooling import EncoderOutput
from pipeline.embed.runtimes import ModelSpec, start_runtime
from pipeline.embed.runtimes.base import Clock, untimed
from pipeline.embed.settings import EncoderConfig, EncoderOptions
from pipeline.embed.sources import ModelRef
from pipeline.embed.sources.files import read_config
from pipeline.embed.windows import Chunk, read_chunk
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    import torch


class Encoder:
    """A model and its tokenizer on one device, with the settings that change its vectors, and its runtime."""

    def __init__(self, config: EncoderConfig) -> None:
        """`config.training` keeps fp32 weights everywhere (low precision then comes from autocast); for inference on
        a GPU the weights themselves are cast to the low-precision dtype, which runs faster there than autocast."""
        self.config, self.ref = config, config.model
        self._hf_config = self._tokenizer = self._model = None
        self.runtime = start_runtime(self)
        known = self.runtime.model_free()
        self.spec, self._fast = known or (self._inspect(), self.tokenizer.backend_tokenizer)
        _check_max_length(config.max_length, self.spec.position_limit, self.ref.name)

    device_name = property(lambda self: self.config.device)
    dtype_name = property(lambda self: self.config.dtype)
    max_length = property(lambda self: self.config.max_length)
    reading = property(lambda self: self.config.reading)
    batch_tokens = property(lambda self: self.config.batch_tokens)
    has_pooler = property(lambda self: self.spec.has_pooler)
    num_layers = property(lambda self: self.spec.num_layers)
    hidden_size = property(lambda self: self.spec.hidden_size)
    pad_id = property(lambda self: self.spec.pad_id)
    token_types = property(lambda self: self.spec.token_types)

    def _inspect(self) -> ModelSpec:
        """Load the config, tokenizer and model (see _load) and read off what the encoder needs of them."""
        config, tokenizer = self.hf_config, self.tokenizer
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
    def hf_config(self):
        """transformers' config of the model (loaded on first use)."""
        if self._hf_config is None:
            self._hf_config = load_config(self.ref)
        return self._hf_config

    @property
    def tokenizer(self):
        """transformers' fast tokenizer of the model (loaded on first use); tokenize() runs its backend (the
        `tokenizers` library) directly, or the copy a runtime kept."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.ref)
        return self._tokenizer

    @property
    def model(self) -> torch.nn.Module:
        """The PyTorch model, loaded on first use when the runtime made it unneeded at start-up."""
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

    def _load(self) -> bool:
        """Load the weights (see loading.load_model); for inference on a GPU cast them to the low-precision dtype."""
        self._model, has_pooler = load_model(self.ref, self.hf_config, self.device)
        if not self.config.training and self.device.type != "cpu" and self.dtype_name != "fp32":
            self._model.to(self.dtype)
        return has_pooler

    def settings(self) -> EncoderSettings:
        """Everything about the encoder that changes the vectors: model, tokenizer, max length, dtype, runtime."""
        return self.config.settings()

    @property
    def fast_tokenizer(self):
        """The `tokenizers` backend that tokenize() runs (windows.py reads long texts whole with it)."""
        return self._fast

    def read(self, texts: list[str]) -> Chunk:
        """The model rows of `texts`: cut at max length, or with long texts in windows (config.reading)."""
        return read_chunk(self._fast, texts, self.tokenize, self.max_length, self.reading)

    def tokenize(self, texts: list[str]) -> Tokenized:
        """Batched fast tokenisation with truncation; a text is 'truncated' when tokens overflowed max_length.
        Truncation and padding are set on every call, as transformers does: its own calls change them."""
        self._fast.enable_truncation(self.max_length, direction=self.spec.truncation_side)
        self._fast.no_padding()
        encoded = self._fast.encode_batch(texts, add_special_tokens=True)
        truncated = np.array([len(e.overflowing) > 0 for e in encoded], dtype=bool)
        return Tokenized([e.ids for e in encoded], truncated)

    def batches(self, lengths: np.ndarray) -> list[np.ndarray]:
        """Row indices in token-budget batches, longest first."""
        return token_batches(lengths, self.batch_tokens)

    def encode(self, tokens: Tokenized | Chunk, poolings: list[str], done: Callable[[int], object] = lambda n: None,
               clock: Clock = untimed, sink=None, soon: bool = False) -> dict:
        """Every requested pooling of tokenised rows, from one forward pass per batch, back in input order: the one
        path from tokens to vectors. A Chunk's windows of a long text are folded into its row (aggregate.Gather).
        `done(n)` after each batch, n texts finished; `clock` (the bench's profile) times each step the runtime
        takes; `sink` (with put(rows, arrays) and result()) replaces the default one (bench long-texts' Fan);
        `soon`: a few texts wanted now (the server, predict --text; see Runtime.encode). The cached stage never
        asks, so its vectors do not depend on how many rows a chunk happens to have."""
        if sink is None:
            sink = Gather(tokens, done) if isinstance(tokens, Chunk) else InOrder(len(tokens.input_ids), done)
        bases = list(dict.fromkeys(split_name(p)[0] for p in poolings))  # mean@head_tail is mean, folded its way
        put = sink.put if bases == poolings else (
            lambda rows, arrays: sink.put(rows, {p: arrays[split_name(p)[0]] for p in poolings}))
        self.runtime.encode(tokens.input_ids, self.batches(tokens.lengths), bases, put, clock, soon)
        return sink.result()

    def forward(self, input_ids: list[list[int]], hidden_states: bool = False) -> EncoderOutput:
        """One forward pass over a padded batch, in the chosen dtype; outputs stay on the device."""
        return self.run(self.prepare(input_ids), hidden_states)

    def run(self, inputs: dict[str, torch.Tensor], hidden_states: bool = False) -> EncoderOutput:
        """The model on a prepared batch (see prepare), in the chosen dtype."""
        import torch

        use_autocast = self.dtype != next(self.model.parameters()).dtype  # CPU: bf16 autocast over fp32 weights
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.dtype, enabled=use_autocast):
            out = self.model(**inputs, output_hidden_states=hidden_states, return_dict=True)
        pooler = getattr(out, "pooler_output", None) if self.has_pooler else None
        return EncoderOutput(out.last_hidden_state, inputs["attention_mask"],
                             out.hidden_states if hidden_states else None, pooler)

    def prepare(self, input_ids: list[list[int]]) -> dict[str, torch.Tensor]:
        """A batch of token ids as the model's padded inputs, on the device; token type ids (all zeros for
        one-segment texts) are made there, not copied."""
        import torch

        tensors = {k: torch.from_numpy(v).to(self.device, non_blocking=True) for k, v in self.pad(input_ids).items()}
        if self.token_types:
            tensors["token_type_ids"] = torch.zeros_like(tensors["input_ids"])
        return tensors

    def pad(self, input_ids: list[list[int]]) -> dict[str, np.ndarray]:
        return pad_ids(input_ids, self.pad_id)


def load_encoder(model: str | ModelRef, options: EncoderOptions = EncoderOptions(), training: bool = False) -> Encoder:
    """The encoder of `model` with `options` resolved here (the API's and tests' one-liner)."""
    return Encoder(options.resolve(model, training))


def _check_max_length(max_length: int, limit: int, name: str) -> None:
    if not 2 <= max_length <= limit:
        raise PipelineError(f"--max-length {max_length} is out of range: use 2..{limit} for this model ({name} has "
                            f"position embeddings for {limit} tokens)")
