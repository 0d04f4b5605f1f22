"""SetFit's recipe (Tunstall et al. 2022): contrastive fine-tuning of the encoder on sentence pairs, then a
logistic-regression head on the tuned vectors.

Pairs: same label = target 1, different labels = target 0, half and half; the loss is sentence-transformers'
CosineSimilarityLoss, MSE(cos(u, v), target), on the pooled vectors. The head is this tool's `logreg`
(pipeline.train.heads.fit_head) fitted on the training rows only, so it is the same head as `make train`'s.

Why not the setfit library (it installs cleanly here): it enumerates every pair index of the training rows before
it samples (np.triu_indices(n): 24M pairs, ~380 MB at SST-2's 6920 rows, 36 GB at 67k; setfit#472/#628) and
shuffles them with a fixed seed (42) whatever the run's seed; here pairs are drawn directly, O(pairs) in memory,
capped by max_pairs, seeded by (seed, epoch). Training then shares the full method's loop: token budget, bf16,
atomic checkpoints and resume. Measured comparison: README "Fine-tuning".
"""

import numpy as np
import torch

from pipeline.data import Dataset
from pipeline.embed.encoder import Encoder
from pipeline.embed.pooling import POOLINGS
from pipeline.finetune.checkpoint import Checkpoints
from pipeline.finetune.data import Rows, sample_pairs
from pipeline.finetune.full import Outcome, collate, pool_batch, pooled
from pipeline.finetune.loop import Task, train_loop
from pipeline.finetune.settings import FinetuneSettings
from pipeline.train.head_graph import full_proba
from pipeline.train.heads import fit_head


def n_pairs(n_rows: int, settings: FinetuneSettings) -> int:
    """Pairs per epoch: pairs_per_row per training row (SetFit's num_iterations=10: 20 per row), capped."""
    return max(2, min(settings.max_pairs, settings.pairs_per_row * n_rows))


def train_setfit(encoder: Encoder, ds: Dataset, rows: Rows, settings: FinetuneSettings, checkpoints: Checkpoints,
                 progress: bool = True) -> Outcome:
    body, pooling = encoder.model, POOLINGS[settings.pooling]
    ids = encoder.tokenize([ds.texts[i] for i in rows.train]).input_ids
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    labels = ds.labels[rows.train]
    count = n_pairs(len(rows.train), settings)

    def epoch_batches(epoch: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """pair_batch pairs a step, as SetFit; pairs of similar length share a batch (less padding: random pairs
        padded together cost about twice the compute on SST-2), and the batch order is shuffled."""
        rng = np.random.default_rng([settings.seed, epoch])
        pairs, targets = sample_pairs(labels, count, rng)
        order = np.argsort(lengths[pairs].max(axis=1), kind="stable")
        step = settings.pair_batch
        chunks = [order[i:i + step] for i in range(0, len(order), step)]
        return [(pairs[c], targets[c]) for c in (chunks[i] for i in rng.permutation(len(chunks)))]

    def loss(batch: tuple[np.ndarray, np.ndarray]) -> torch.Tensor:
        pairs, targets = batch
        vectors = pool_batch(body, pooling, collate(encoder, [ids[i] for i in pairs.ravel()])).float()
        u, v = vectors[0::2], vectors[1::2]
        cosine = torch.nn.functional.cosine_similarity(u, v)
        return torch.nn.functional.mse_loss(cosine, torch.as_tensor(targets, device=cosine.device))

    def score() -> float | None:
        if len(rows.select) == 0:
            return None
        head = fit_logreg(encoder, ds, rows.train, settings)
        X = pooled(encoder, ds, rows.select, settings.pooling)
        return float((full_proba(head, X, len(ds.label_names)).argmax(axis=1) == ds.labels[rows.select]).mean())

    result = train_loop(Task(body, epoch_batches, loss, score, "finetune setfit"), settings, encoder.device,
                        encoder.dtype, checkpoints, progress)
    head = fit_logreg(encoder, ds, rows.train, settings)
    proba = full_proba(head, pooled(encoder, ds, rows.test, settings.pooling), len(ds.label_names))
    return Outcome(head, proba, result.best_score, result)


def fit_logreg(encoder: Encoder, ds: Dataset, train: np.ndarray, settings: FinetuneSettings):
    """The `logreg` head on the tuned vectors of the training rows only (C by CV on them): with a few shots, a dev
    split must not become training data, as it would in a train + dev refit."""
    return fit_head("logreg", pooled(encoder, ds, train, settings.pooling), ds.labels[train], seed=settings.seed)
