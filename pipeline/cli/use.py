"""Using a trained run: `predict` (texts or a file, scored when labelled) and `export` (one ONNX graph)."""

from pathlib import Path

import click

from pipeline.cli import options as opt
from pipeline.errors import PipelineError

RUN_HELP = "Run folder (artifacts/runs/<cache>/<pooling>/<head>); default: the newest run under --runs."


def run_options(func):
    func = click.option("--runs", default="artifacts/runs", show_default=True, type=click.Path(path_type=Path),
                        help="Where to look for the newest run.")(func)
    return click.option("--run", "run_path", type=click.Path(path_type=Path), default=None, help=RUN_HELP)(func)


@click.command()
@run_options
@click.option("--text", "texts", multiple=True, help="A text to classify (repeatable).")
@click.option("--input", "input_path", type=opt.PATH_OR_URI, default=None,
              help="A CSV/TSV/JSONL/Parquet file (or s3://, gs://, hdfs:// URI) to classify: every column and row is "
                   "kept, predictions added.")
@click.option("--text-col", default="text", show_default=True, help="Text column of --input.")
@click.option("--label-col", default=None,
              help="Label column of --input: also score the run on it (report beside --output).")
@click.option("--output", type=opt.PATH_OR_URI, default=None,
              help="Write the predictions here (a path, or an s3://, gs:// or hdfs:// URI); the suffix picks the "
                   "format (.csv, .tsv, .jsonl, .parquet).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda[:N] or mps.")
@opt.embeddings_option
@click.option("--engine", default="local", show_default=True, cls=opt.LazyHelpOption,
              help_text=opt.engines_help("What embeds --input: "))
@click.option("--ray-address", default=None, envvar="RAY_ADDRESS", help="Join this Ray cluster (or RAY_ADDRESS).")
@click.option("--shard-rows", default=4096, show_default=True, type=click.IntRange(min=1),
              help="Rows per cache shard of --input (the unit of resume).")
@opt.progress_option
def predict(run_path, runs, texts, input_path, text_col, label_col, output, device, embeddings, engine, ray_address,
            shard_rows, progress) -> None:
    """Classify texts with a trained run (same model, max length, dtype and pooling as in training).

    A file goes through the embed stage (cached, resumable, --engine ray) and comes back with every input column
    plus predicted_label, confidence and p_<label>; with --label-col the run is also scored on it, and a report
    (.report.md, .metrics.json, .confusion.png) is written beside --output."""
    from pipeline.predict import load_classifier

    if texts and input_path:
        raise PipelineError("give texts with --text or a file with --input, not both")
    if label_col and not input_path:
        raise PipelineError("--label-col scores a labelled file: give it with --input (and --output)")
    clf = load_classifier(run_path, device, runs)
    if input_path:
        _predict_file(clf, input_path, output, text_col, label_col, embeddings, engine, ray_address, shard_rows,
                      progress)
    else:
        _predict_texts(clf, list(texts), output)


def _predict_texts(clf, texts: list[str], output: Path | None) -> None:
    from pipeline.predict.output import output_format, refuse_run_files, write_table
    from pipeline.predict.stage import output_table

    if output:
        output_format(output)
        refuse_run_files(clf.path, clf.run.record.model_ref, [output], "--output")
    proba = clf.predict_proba(texts)
    reading = clf.describe_reading(texts, quiet_when_all_fit=True)  # a short text gets its answer and nothing else
    if reading:
        click.echo(f"read: {reading}", err=True)
    if output:
        write_table(output, output_table({"text": texts}, clf.label_names, proba))
        click.echo(f"wrote {len(texts)} predictions to {output}")
        return
    _print(clf, texts, proba)


def _predict_file(clf, input_path, output, text_col, label_col, embeddings, engine, ray_address, shard_rows,
                  progress) -> None:
    from pipeline.predict import predict_file

    result = predict_file(clf, input_path, output, text_col, label_col, embeddings, engine, ray_address, shard_rows,
                          progress)
    table = result.table
    _say_reading(result.cache)
    if table is not None:  # no --output: printed
        _print(clf, table.column(text_col).to_pylist(), _proba(table, clf.label_names))
        return
    reused = result.rows - result.computed_rows
    click.echo(f"wrote {result.rows} predictions to {output} ({result.computed_rows} texts embedded, {reused} "
               f"reused from the cache {result.cache})")
    if result.metrics is not None:
        m = result.metrics
        click.echo(f"accuracy {m.accuracy:.4f} (95% CI {m.accuracy_ci95[0]:.3f}-{m.accuracy_ci95[1]:.3f}), "
                   f"macro-F1 {m.macro_f1:.4f} on {m.n_test} labelled rows; report: "
                   f"{', '.join(str(p) for p in result.reports)}")


def _say_reading(cache: Path) -> None:
    """How the file's texts were read (windows or cut), from its cache's manifest, on stderr."""
    from pipeline.cache import EmbeddingCache

    m = EmbeddingCache(cache).manifest()
    if m.long_texts is not None:
        click.echo(f"read: {m.long_texts.describe(m.encoder.max_length)}", err=True)


def _proba(table, names: list[str]):
    import numpy as np

    from pipeline.predict.stream import PROBA_PREFIX

    return np.column_stack([table.column(PROBA_PREFIX + n).to_numpy() for n in names])


def _print(clf, texts: list[str], proba) -> None:
    """One line per text: label, every class's probability, the text."""
    names = clf.label_names
    for text, label, p in zip(texts, clf.labels_of(proba), proba, strict=True):
        probs = ", ".join(f"{n}={v:.3f}" for n, v in zip(names, p, strict=True))
        click.echo(f"{label}\t{probs}\t{text}")


@click.command(cls=opt.NamesInHelpCommand, names=opt.onnx_heads)
@run_options
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="The .onnx file; <name>.json (labels, settings) and <name>.tokenizer/ are written beside it.")
def export(run_path, runs, out) -> None:
    """Export a run for serving: one ONNX graph (input_ids, attention_mask -> class probabilities) holding the
    encoder, the run's pooling and its head ({names}), plus its tokenizer and label names."""
    from pipeline.predict import load_classifier
    from pipeline.predict.export import PROBES, export_onnx

    clf = load_classifier(run_path, "cpu", runs)
    done = export_onnx(clf, out)
    click.echo(f"wrote {done.onnx} ({done.bytes / 2**20:.1f} MiB: {clf.head} on {clf.pooling}, labels "
               f"{', '.join(clf.label_names)}), {done.meta} and {done.tokenizer}/; onnxruntime matches predict "
               f"within {done.max_abs_diff:.1e} on {len(PROBES)} texts")
