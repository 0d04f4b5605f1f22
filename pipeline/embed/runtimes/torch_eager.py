"""The 'torch' runtime: PyTorch op by op, on every device; the one that trains. The encoder's own forward pass,
then the poolings of pooling.POOLINGS on its outputs, then one copy to the host per batch."""

import numpy as np

from pipeline.embed.pooling import POOLINGS, pool
from pipeline.embed.runtimes.base import Clock, Put, RuntimeKind, untimed

# Token budget per batch by device: on CPU small batches stay in cache; a GPU wants many rows at once.
BATCH_TOKENS = {"cpu": 2048, "cuda": 65536, "mps": 16384}


class TorchRuntime:
    """The encoder's PyTorch model; every step is the encoder's, so fine-tuning and this runtime share them."""

    def __init__(self, encoder) -> None:
        self.encoder = encoder

    def model_free(self) -> None:
        return None  # PyTorch needs the model itself

    def encode(self, input_ids: list[list[int]], batches: list[np.ndarray], poolings: list[str], put: Put,
               clock: Clock = untimed, soon: bool = False) -> None:
        """Batch after batch (on a CPU, PyTorch's threads share each matmul; `soon` changes nothing)."""
        hidden = any(POOLINGS[p].needs_hidden_states for p in poolings)
        for rows in batches:
            inputs = clock("pad + copy to device", self.encoder.prepare, [input_ids[i] for i in rows])
            outputs = clock("forward (model)", self.encoder.run, inputs, hidden)
            vectors = clock("pooling", pool, poolings, outputs)
            put(rows, clock("copy to host (fp32 numpy)", _to_host, vectors))


def _to_host(vectors: dict) -> dict[str, np.ndarray]:
    import torch

    return {name: v.to(torch.float32).cpu().numpy() for name, v in vectors.items()}


KIND = RuntimeKind("torch", "PyTorch, op by op (every device; the one that trains)",
                   supports=lambda device, dtype, training: dtype != "int8",
                   limits="runs every device in fp32, bf16 or fp16",
                   batch_tokens=BATCH_TOKENS.__getitem__, start=TorchRuntime, auto_rank=1)  # runs everywhere: last
