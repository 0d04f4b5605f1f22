"""bert-pipeline: embed texts once with a BERT-family encoder, cache several poolings, train cheap heads on them.

The flow runs one way: data -> encoder -> pooling -> cache -> heads -> metrics -> report. The names below are the
public API for notebooks; each is imported on first use, so `import pipeline.train` never loads torch.

    import pipeline
    ds = pipeline.DataSpec("reviews.csv").load()
    encoder = pipeline.load_encoder("default", pipeline.EncoderOptions(max_length=128))
    result = pipeline.embed_dataset(ds, encoder, ["mean", "cls"], Path("artifacts/embeddings"))
    rows = pipeline.train_cache(result.path, "all", ["logreg"], Path("artifacts/runs"))
    clf = pipeline.load_classifier(Path("artifacts/runs") / result.path.name / "mean" / "logreg")
    clf.predict(["a gorgeous, witty, seductive movie"]), clf.predict_proba(["dull"])
"""

from importlib import import_module

__version__ = "0.1.0"

_API = {
    "pipeline.data": ["ColumnSpec", "DataSpec", "Dataset", "load_dataset", "resolve_data"],
    "pipeline.cache": ["EmbeddingCache", "Embeddings", "Manifest", "load_embeddings"],
    "pipeline.embed.sources": ["resolve_model"],
    "pipeline.embed.settings": ["EncoderConfig", "EncoderOptions"],
    "pipeline.embed.encoder": ["Encoder", "load_encoder"],
    "pipeline.embed.pooling": ["POOLINGS", "DEFAULT_POOLINGS"],
    "pipeline.embed.stage": ["embed_dataset", "embed_texts"],  # `pipeline.embed` is the package
    "pipeline.train.heads": ["HEADS", "fit_head"],
    "pipeline.train.metrics": ["classification_metrics"],
    "pipeline.train.runs": ["RunRecord", "load_run"],
    "pipeline.train.stage": ["train_cache"],
    "pipeline.predict": ["Classifier", "load_classifier", "load_encoder_for", "predict_file", "predict_texts"],
    "pipeline.bench.leaderboard": ["leaderboard", "layer_probe"],
    "pipeline.errors": ["PipelineError"],
}
_WHERE = {name: module for module, names in _API.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    return getattr(import_module(_WHERE[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
