"""Use a trained run: classify texts, score files through the embed stage, export for serving.

classifier (a run as a scikit-learn-style object: `load_classifier(run).predict(texts)`), stage (a file in, the same
file with predictions out: embedded into the cache shard by shard, resumable, with a report when it is labelled),
stream (that output written batch by batch, never whole), output (formats and refusals of an output file), export
(encoder + pooling + head as one ONNX graph, with its tokenizer and label names).
"""

from pipeline.predict.classifier import Classifier, load_classifier, load_encoder_for, predict_texts
from pipeline.predict.stage import PredictResult, predict_file

__all__ = ["Classifier", "PredictResult", "load_classifier", "load_encoder_for", "predict_file", "predict_texts"]
