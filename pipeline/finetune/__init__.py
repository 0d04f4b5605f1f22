"""Fine-tuning: train the encoder itself, then hand the result to the rest of the tool as a model folder and a run.

A stage that joins embed and train (like predict): settings (the method registry and every setting in the key, no
torch), data (token-budget batches, per-class draws, capped sentence pairs), loop (the training loop: AdamW,
warm-up + linear decay, clipping, early stopping, bf16 autocast, progress), checkpoint (atomic resume points), full
(encoder + linear head), setfit (contrastive pairs + the logreg head), stage (read data, run a method, write the
model folder and the run folder).
"""
