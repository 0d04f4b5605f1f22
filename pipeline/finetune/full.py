"""Full fine-tuning: the encoder plus a linear head on a pooling, trained end to end with cross-entropy.

The head is a linear layer on the same pooled vector the embed stage computes, so after training it is exported as
a scikit-learn LogisticRegression with the same weights: the tuned model folder plus that head is a run like any
other, and `predict` reproduces the fine-tuned model's outputs through the ordinary embed path.
"""

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from pipeline.data import Dataset
from pipeline.embed.batching import token_batches
from pipeline.embed.encoder import Encoder
from pipeline.embed.pooling import POOLINGS, EncoderOutput
from pipeline.embed.stage import embed_texts
from pipeline.finetune.checkpoint import Checkpoints
from pipeline.finetune.data import Rows
from pipeline.finetune.loop import LoopResult, Task, train_loop
from pipeline.finetune.settings import FinetuneSettings
from pipeline.train.head_graph import full_proba

DEFAULT_TRAIN_TOKENS = {"cpu": 1024, "cuda": 8192, "mps": 4096}


@dataclass(frozen=True)
class Outcome:
    """What a method returns: the head (a scikit-learn estimator on the pooled vectors), test probabilities from the
    ordinary embed path, the dev score of the kept weights, and the loop's record."""

    head: object
    proba_test: np.ndarray
    dev_score: float | None
    loop: LoopResult


class Classifier(torch.nn.Module):
    """Encoder -> pooling (the embed stage's registry) -> dropout -> linear layer, the head in fp32."""

    def __init__(self, encoder: Encoder, pooling: str, n_labels: int) -> None:
        super().__init__()
        self.body, self.pooling = encoder.model, POOLINGS[pooling]
        self.dropout = torch.nn.Dropout(float(getattr(encoder.model.config, "hidden_dropout_prob", 0.1)))
        self.head = torch.nn.Linear(encoder.hidden_size, n_labels)
        torch.nn.init.normal_(self.head.weight, std=0.02)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        pooled = pool_batch(self.body, self.pooling, inputs)
        with torch.autocast(pooled.device.type, enabled=False):
            return self.head(self.dropout(pooled.float()))


def pool_batch(body: torch.nn.Module, pooling, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """One pooled vector per row of a padded batch, with gradients (the training twin of Encoder.forward)."""
    out = body(**inputs, output_hidden_states=pooling.needs_hidden_states, return_dict=True)
    return pooling.fn(EncoderOutput(out.last_hidden_state, inputs["attention_mask"],
                                    out.hidden_states if pooling.needs_hidden_states else None,
                                    getattr(out, "pooler_output", None)))


def collate(encoder: Encoder, input_ids: list[list[int]]) -> dict[str, torch.Tensor]:
    """Pad a batch exactly as the embed stage does (same pad id, mask and token types) and move it to the device:
    the Encoder's own helper, so training and embedding can never pad differently."""
    return encoder.prepare(input_ids)


def train_full(encoder: Encoder, ds: Dataset, rows: Rows, settings: FinetuneSettings, checkpoints: Checkpoints,
               progress: bool = True) -> Outcome:
    n_labels = len(ds.label_names)
    model = Classifier(encoder, settings.pooling, n_labels).to(encoder.device)
    ids = encoder.tokenize([ds.texts[i] for i in rows.train]).input_ids
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    labels = torch.as_tensor(ds.labels[rows.train], dtype=torch.long)
    budget = max(settings.batch_tokens or DEFAULT_TRAIN_TOKENS[encoder.device.type], settings.max_length)

    def epoch_batches(epoch: int) -> list[np.ndarray]:
        return token_batches(lengths, budget, np.random.default_rng([settings.seed, epoch]))

    def loss(batch: np.ndarray) -> torch.Tensor:
        logits = model(collate(encoder, [ids[i] for i in batch]))
        return torch.nn.functional.cross_entropy(logits, labels[batch].to(logits.device))

    def score() -> float | None:
        return accuracy(model, encoder, ds, rows.select, settings.pooling)

    result = train_loop(Task(model, epoch_batches, loss, score, f"finetune {settings.method}"), settings,
                        encoder.device, encoder.dtype, checkpoints, progress)
    head = to_logreg(model.head, n_labels)
    proba = full_proba(head, pooled(encoder, ds, rows.test, settings.pooling), n_labels)
    return Outcome(head, proba, result.best_score, result)


def pooled(encoder: Encoder, ds: Dataset, index: np.ndarray, pooling: str) -> np.ndarray:
    """Vectors of some rows through the ordinary embed path (the one predict uses), with the model as it is now."""
    if len(index) == 0:
        return np.zeros((0, encoder.hidden_size), dtype=np.float32)
    return embed_texts(encoder, [ds.texts[i] for i in index], [pooling])[pooling]


def accuracy(model: Classifier, encoder: Encoder, ds: Dataset, index: np.ndarray, pooling: str) -> float | None:
    if len(index) == 0:
        return None
    head = to_logreg(model.head, len(ds.label_names))
    proba = full_proba(head, pooled(encoder, ds, index, pooling), len(ds.label_names))
    return float((proba.argmax(axis=1) == ds.labels[index]).mean())


def to_logreg(linear: torch.nn.Linear, n_labels: int) -> LogisticRegression:
    """The trained linear layer as a fitted LogisticRegression with the same probabilities: softmax over the logits
    (for two classes, the sigmoid of the logit difference, which is the same thing)."""
    weight = linear.weight.detach().float().cpu().numpy().astype(np.float64)
    bias = linear.bias.detach().float().cpu().numpy().astype(np.float64)
    head = LogisticRegression()
    head.classes_ = np.arange(n_labels)
    head.coef_, head.intercept_ = ((weight[1:] - weight[:1], bias[1:] - bias[:1]) if n_labels == 2
                                   else (weight, bias))
    head.n_features_in_ = weight.shape[1]
    head.n_iter_ = np.array([0])
    return head
