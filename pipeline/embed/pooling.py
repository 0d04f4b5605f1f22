"""Named pooling strategies: each turns one forward pass's outputs into one vector per text.

As in sentence-transformers, the pooling that made a vector is recorded as data (its name is the cache column
`emb_<name>` and the manifest describes it), so a vector never loses its meaning. All pooling is done in fp32 and is
mask-aware: padding never reaches a text's vector. torch is imported only when a pooling runs, so that the registry
can be read (CLI help, the openvino runtime's start-up) without it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.errors import PipelineError
from pipeline.registry import parse_names

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class EncoderOutput:
    """What a pooling reads of one batch's forward pass; hidden_states is None unless a pooling needs them,
    pooler_output None if the model has none."""

    last_hidden: torch.Tensor
    mask: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None
    pooler_output: torch.Tensor | None


@dataclass(frozen=True)
class Pooling:
    """A registry entry: what the pooling computes, what it needs from the forward pass, and its output shape.

    `per_layer` poolings give one vector per layer (for the layer probe) rather than one per text; they are not
    embedded by default and not trained on by 'all'."""

    name: str
    description: str
    fn: Callable[[EncoderOutput], torch.Tensor]
    needs_hidden_states: bool = False
    needs_pooler: bool = False
    per_layer: bool = False

    def shape(self, num_layers: int, hidden_size: int) -> list[int]:
        """The shape of one text's output: (hidden,) or (layers + 1, hidden) with the embeddings first."""
        return [num_layers + 1, hidden_size] if self.per_layer else [hidden_size]


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token mean over real tokens only (the sentence-transformers formula, clamp included)."""
    weights = mask.unsqueeze(-1).float()
    return (hidden.float() * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def _max(x: EncoderOutput) -> torch.Tensor:
    hidden = x.last_hidden.float().masked_fill(~x.mask.bool().unsqueeze(-1), float("-inf"))
    return hidden.max(dim=1).values


def _pooler(x: EncoderOutput) -> torch.Tensor:
    if x.pooler_output is None:
        raise PipelineError("this model has no trained pooler: drop 'pooler' from --pooling")
    return x.pooler_output.float()


def _layers(x: EncoderOutput) -> torch.Tensor:
    import torch

    return torch.stack([masked_mean(h, x.mask) for h in x.hidden_states], dim=1)


def _last4_mean(x: EncoderOutput) -> torch.Tensor:
    import torch

    return masked_mean(torch.stack([h.float() for h in x.hidden_states[-4:]]).mean(0), x.mask)


POOLINGS: dict[str, Pooling] = {p.name: p for p in [
    Pooling("cls", "hidden state of the first ([CLS]) token, last layer", lambda x: x.last_hidden[:, 0].float()),
    Pooling("mean", "mask-aware mean of last-layer token states", lambda x: masked_mean(x.last_hidden, x.mask)),
    Pooling("max", "mask-aware max of last-layer token states", _max),
    Pooling("pooler", "the model's pooler output (tanh dense over [CLS])", _pooler, needs_pooler=True),
    Pooling("last4_mean", "token mean of the average of the last four layers", _last4_mean,
            needs_hidden_states=True),
    Pooling("first_last_mean", "average of the token means of the first Transformer layer and the last one",
            lambda x: (masked_mean(x.hidden_states[1], x.mask) + masked_mean(x.hidden_states[-1], x.mask)) / 2,
            needs_hidden_states=True),
    Pooling("layers", "token mean of every layer (embeddings first), shape (layers + 1, hidden)", _layers,
            needs_hidden_states=True, per_layer=True),
]}

DEFAULT_POOLINGS = tuple(name for name, p in POOLINGS.items() if not p.per_layer)


def parse_poolings(spec: str | Iterable[str]) -> list[str]:
    """'mean,cls' or 'all' -> validated names in registry order; unknown names are refused with the known list."""
    return parse_names(spec, POOLINGS, "pooling")


def pool(names: Iterable[str], inputs: EncoderOutput) -> dict[str, torch.Tensor]:
    """Apply each named pooling to the same forward-pass outputs."""
    return {name: POOLINGS[name].fn(inputs) for name in names}
