"""Load a model's config, tokenizer and weights from its folder: safetensors only, never remote code, and one line
of error (not transformers' logs and warnings) when something is wrong."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from pipeline.embed.config_budget import check_config_size
from pipeline.embed.sources import ModelRef
from pipeline.embed.sources.files import custom_code_error, read_config
from pipeline.errors import PipelineError, first_line

if TYPE_CHECKING:
    import torch

PLACEHOLDER_TOKENS, REAL_VOCAB = 100, 1000  # a tokenizer under 100 tokens for a model of over 1000 is a stand-in


def tokenizer_json(tokenizer) -> str | None:
    """A transformers fast tokenizer's backend as one tokenizer.json (what a kept graph and an export ship); None for
    one with parts written in Python (RoFormer's pre-tokenizer), which that file cannot hold."""
    try:
        return tokenizer.backend_tokenizer.to_str()
    except Exception:  # the tokenizers library raises a bare Exception for custom components
        return None


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


@contextmanager
def quiet_conversion(failure: str) -> Iterator[None]:
    """A graph converter at work (OpenVINO's, torch's ONNX exporter): no autograd, its warnings and prints kept off
    the terminal, and its error (pages long) as one line: `failure` with {error} filled by the error's first line."""
    import torch

    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            yield
        except Exception as exc:
            raise PipelineError(failure.format(error=f"{type(exc).__name__}: {first_line(exc)}")) from None


def load_config(ref: ModelRef):
    """The model's config, never with remote code: a model_type transformers does not know needs custom code."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    raw = read_config(ref.folder, ref.name)
    check_config_size(ref.name, raw)
    model_type = raw.get("model_type")
    if isinstance(model_type, str) and model_type not in CONFIG_MAPPING:
        raise custom_code_error(ref.name)
    with _quiet():
        try:
            return AutoConfig.from_pretrained(ref.folder, trust_remote_code=False)
        except Exception as exc:
            raise PipelineError(f"cannot read the config of {ref.name} in {ref.folder} ({first_line(exc)}): restore "
                                "the model's original config.json") from None


def load_tokenizer(ref: ModelRef):
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


def check_vocab(ref: ModelRef, tokenizer, config) -> None:
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


def load_model(ref: ModelRef, config, device: torch.device) -> tuple[torch.nn.Module, bool]:
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
