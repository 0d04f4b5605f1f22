"""What a fine-tune is: the method registry and every setting that changes its result. No torch here, so the CLI
lists and checks methods without loading it."""

import hashlib
import json
from dataclasses import asdict, dataclass, replace

from pipeline.errors import PipelineError


@dataclass(frozen=True)
class Method:
    """A registry entry: what the method trains, and the defaults that reach the target on SST-2 (tuned on dev)."""

    name: str
    description: str
    lr: float
    epochs: int
    head: str  # the run folder's head name, beside the frozen heads in runs.csv
    trainer: str  # "module:function" that trains it (imported when it runs: no torch here)


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("full", "the encoder plus a linear head on the pooling, trained end to end with cross-entropy "
                   "(AdamW, warm-up + linear decay, early stopping on dev)", 5e-5, 3, "finetune",
           "pipeline.finetune.full:train_full"),
    Method("setfit", "SetFit: contrastive fine-tuning of the encoder on sentence pairs (same label positive, "
                     "different label negative; CosineSimilarityLoss), then the logreg head on the tuned vectors",
           2e-5, 1, "setfit", "pipeline.finetune.setfit:train_setfit"),
]}


@dataclass(frozen=True)
class FinetuneSettings:
    """Every setting that changes a fine-tune's result; all of them are part of its key. `None`/0 mean the method's
    or the device's default (filled by `resolved`)."""

    method: str = "full"
    pooling: str = "mean"
    shots: int | None = None  # rows per class drawn from train (seeded, stratified); None: all of train
    epochs: int | None = None
    lr: float | None = None
    batch_tokens: int = 0  # token budget per training batch (rows x longest row); 0: 1024 on CPU, 8192 on GPU
    max_length: int = 128
    dtype: str = "auto"
    seed: int = 0
    warmup: float = 0.1  # share of the steps with a linear warm-up
    weight_decay: float = 0.01
    patience: int = 1  # epochs without a better dev score before stopping
    max_grad_norm: float = 1.0
    min_steps: int = 0  # at least this many optimisation steps: more epochs on small data (the learning curve's k)
    pair_batch: int = 16  # setfit: sentence pairs per step (SetFit's default batch size)
    pairs_per_row: int = 20  # setfit: pairs per training row and epoch (SetFit's num_iterations=10: 2 per iteration)
    max_pairs: int = 20_000  # setfit: hard cap on pairs per epoch (SetFit's O(n^2) pair blow-up)

    def resolved(self, dtype_name: str) -> "FinetuneSettings":
        method = check_method(self.method)
        return replace(self, epochs=self.epochs or method.epochs, lr=self.lr or method.lr, dtype=dtype_name)

    def key(self, data_fingerprint: str, model_identity: dict) -> str:
        """sha256 over the data, the base model's files and every setting (call on resolved settings)."""
        blob = json.dumps({"data": data_fingerprint, "model": model_identity, "settings": asdict(self)},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def head_name(self, key: str) -> str:
        """e.g. 'finetune-1a2b3c4d' or 'setfit-16shot-1a2b3c4d': the run's head name in runs.csv and its folder.
        The key's head names the settings, so fine-tunes that differ in any setting (lr, epochs, seed...) never
        share a run folder or a runs.csv row."""
        base = METHODS[self.method].head
        return f"{base}-{self.shots}shot-{key[:8]}" if self.shots else f"{base}-{key[:8]}"


def check_method(name: str) -> Method:
    if name not in METHODS:
        raise PipelineError(f"unknown method {name!r}: choose from {', '.join(METHODS)}")
    return METHODS[name]
