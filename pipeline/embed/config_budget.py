"""A model's size from its config.json, checked before transformers allocates it: an edited or hostile config
(vocab_size 10^9, 10^5 layers) would otherwise take all memory building the model, long before the weights file is
found not to match. The estimate is the BERT-family count (embeddings, per-layer attention and feed-forward), in
fp32, as the model is built; it names the field that makes it large, so the refusal says what to fix."""

from pipeline.data.budget import available_memory
from pipeline.errors import PipelineError

SIZE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "max_position_embeddings",
               "type_vocab_size")
FP32 = 4


def check_config_size(name: str, config: dict) -> None:
    """Refuse a config whose model would not fit in the memory available now (or whose size fields are not
    positive whole numbers, which transformers reports as a deep error, or not at all)."""
    sizes = {field: _size(name, config, field) for field in SIZE_FIELDS if config.get(field) is not None}
    heads = _size(name, config, "num_attention_heads") if config.get("num_attention_heads") is not None else None
    if heads and sizes.get("hidden_size", heads) % heads:
        raise PipelineError(f"config.json of {name} has hidden_size={sizes['hidden_size']}, not a multiple of "
                            f"num_attention_heads={heads}: restore the model's original config.json")
    need = FP32 * model_parameters(sizes)
    have = available_memory()
    if need > have:
        fields = ", ".join(f"{k}={v}" for k, v in sorted(sizes.items(), key=lambda kv: -kv[1]))
        raise PipelineError(f"config.json of {name} describes a model of about {need / 2**30:.1f} GiB ({fields}), "
                            f"more than the {have / 2**30:.1f} GiB of memory available: restore the model's original "
                            "config.json, or use a smaller model")


def model_parameters(sizes: dict[str, int]) -> int:
    """Parameters of a BERT-style encoder with these sizes (missing fields: BERT-base's)."""
    h = sizes.get("hidden_size", 768)
    inner = sizes.get("intermediate_size", 4 * h)
    layers = sizes.get("num_hidden_layers", 12)
    embeddings = (sizes.get("vocab_size", 30522) + sizes.get("max_position_embeddings", 512)
                  + sizes.get("type_vocab_size", 2)) * h
    per_layer = 4 * h * h + 2 * h * inner + 9 * h + inner
    return embeddings + layers * per_layer


def _size(name: str, config: dict, field: str) -> int:
    value = config[field]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise PipelineError(f"config.json of {name} has {field}={value!r}, which must be a positive whole number: "
                            "restore the model's original config.json")
    return value
