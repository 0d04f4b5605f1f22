"""The runtime seam: what every runtime is (a registry entry, RuntimeKind) and does (a Runtime per encoder).

An encoder's text path is the same whatever runs it: tokenise, group rows into token-budget batches, then the
runtime turns each batch into the poolings' float32 vectors and hands them to the caller's sink (batching.InOrder
puts them back in input order). What differs between runtimes lives behind `Runtime.encode`; nothing outside this
package asks which runtime it has.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from pipeline.embed.encoder import Encoder

Clock = Callable[..., Any]  # clock(step name, work, *args) -> work(*args), timing it under the step's name
Put = Callable[[np.ndarray, dict[str, np.ndarray]], None]  # put(row indices, {pooling: float32 array}): one batch


def untimed(step: str, work: Callable, *args) -> Any:
    """The clock of a normal run: just the work."""
    return work(*args)


@dataclass(frozen=True)
class ModelSpec:
    """What the encoder needs of a model besides its weights: read from the loaded model and tokenizer, or from what
    a runtime kept of them (a kept OpenVINO graph stands in for both)."""

    has_pooler: bool
    position_limit: int
    num_layers: int
    hidden_size: int
    pad_id: int
    token_types: bool  # the model takes token_type_ids (all zeros for one-segment texts)
    truncation_side: str
    split_special_tokens: bool  # special tokens typed in a text are split like words (tokenizer_config.json)


class Runtime(Protocol):
    """One encoder's runtime: made once per encoder by the factory (runtimes.start_runtime)."""

    def model_free(self) -> tuple[ModelSpec, Any] | None:
        """The model's spec and fast tokenizer (`tokenizers.Tokenizer`) when this runtime has them without loading
        the model (a kept graph); None: the encoder loads the model and reads them off it."""

    def encode(self, input_ids: list[list[int]], batches: list[np.ndarray], poolings: list[str], put: Put,
               clock: Clock = untimed, soon: bool = False) -> None:
        """Every pooling of the rows, batch by batch (`batches` hold row indices): each batch's float32 vectors go
        to `put`, one call at a time (in any order of batches). `clock` times each step (the bench's profile).
        `soon`: a few texts wanted now (the server, predict --text): the runtime may batch and run them its fastest
        way for that, with the same vectors (to float rounding)."""


@dataclass(frozen=True)
class RuntimeKind:
    """A registry entry: a runtime's name (what the cache key records), what it is, where it runs, and the factory
    of its per-encoder Runtime.

    `supports(device, dtype, training)` takes names ('cpu', 'bf16'); `limits` says the same in words for the error
    when it is asked for where it cannot run; `package` is what it needs installed (None: nothing beyond torch);
    `auto_rank`: 'auto' picks the lowest-ranked runtime that runs here (None: only by name, as a runtime whose vectors
    differ should be); `batch_tokens(device kind)` is its default token
    budget per batch."""

    name: str
    description: str
    supports: Callable[[str, str, bool], bool]
    limits: str
    batch_tokens: Callable[[str], int]
    start: Callable[[Encoder], Runtime]
    package: str | None = None
    auto_rank: int | None = None

