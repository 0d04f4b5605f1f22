"""Encoders of a named size with random weights, for timing only.

The time of a forward pass depends on the model's shape (layers, width, heads, vocabulary), not on its weights, so a
bert-base-sized encoder can be timed without downloading one. The folder is complete (config, safetensors weights,
the tokenizer of a real model), so the embed stage and sentence-transformers both load it as they would a real one.
"""

from pathlib import Path

SHAPES = {
    "minilm-l6": {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536},
    "bert-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "bert-large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                   "intermediate_size": 4096},
}


def random_model(tokenizer_folder: Path, shape: str, out: Path, seed: int = 0) -> Path:
    """Write a BertModel of `shape` with seeded random weights and the tokenizer of `tokenizer_folder` to `out`."""
    import torch  # here, not at the top: the CLI lists SHAPES without loading torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder, use_fast=True)
    config = BertConfig(vocab_size=len(tokenizer), max_position_embeddings=512, **SHAPES[shape])
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return Path(out)
