"""An encoder's model and the named poolings as one torch module, for the graph converters (the openvino runtime,
the ONNX export), so that a pooling is defined once, in pooling.POOLINGS, whatever runs it."""

import torch

from pipeline.embed.pooling import POOLINGS, EncoderOutput


class PooledModel(torch.nn.Module):
    """input_ids, attention_mask -> the named poolings' vectors, in that order. Hidden states of every layer are
    asked for only when a pooling needs them."""

    def __init__(self, model: torch.nn.Module, names: list[str], has_pooler: bool, token_types: bool) -> None:
        super().__init__()
        self.model, self.names, self.has_pooler, self.token_types = model, names, has_pooler, token_types
        self.hidden = any(POOLINGS[name].needs_hidden_states for name in names)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        extra = {"token_type_ids": torch.zeros_like(input_ids)} if self.token_types else {}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=self.hidden,
                         return_dict=True, **extra)
        x = EncoderOutput(out.last_hidden_state, attention_mask, out.hidden_states if self.hidden else None,
                          getattr(out, "pooler_output", None) if self.has_pooler else None)
        return tuple(POOLINGS[name].fn(x) for name in self.names)
