"""The command line: thin wrappers that parse options and call library functions (which tests call too)."""

import sys
from pathlib import Path

import click

from pipeline.cli.bench import bench, eval_
from pipeline.cli.options import POOLING_HELP, data_options, find_cache_or_fail, load_data
from pipeline.errors import PipelineError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Embed texts once with a BERT-family encoder, then train and compare cheap heads on the cached vectors."""


@cli.command()
@data_options
@click.option("--pooling", default="cls,mean,max,pooler,last4_mean,first_last_mean", show_default=True,
              help=POOLING_HELP)
@click.option("--max-length", default=128, show_default=True, type=click.IntRange(min=2),
              help="Tokens per text; longer texts are truncated and counted.")
@click.option("--device", default="auto", show_default=True,
              help="auto (CUDA, then MPS, then CPU), cpu, cuda[:N], mps.")
@click.option("--dtype", default="auto", show_default=True,
              help="auto (bf16/fp16 on GPU; bf16 on CPU only where it measures faster), fp32, bf16, fp16.")
@click.option("--batch-tokens", default=0, type=click.IntRange(min=0),
              help="Token budget per batch (rows x longest row); 0 picks one per device.")
@click.option("--shard-rows", default=4096, show_default=True, type=click.IntRange(min=1),
              help="Rows per Parquet shard (the unit of resume).")
@click.option("--out", default="artifacts/embeddings", show_default=True, type=click.Path(path_type=Path),
              help="Cache root folder.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process; ray: a Ray Data actor pool (pip install 'bert-pipeline[distributed]').")
@click.option("--ray-address", default=None, envvar="RAY_ADDRESS",
              help="Join this Ray cluster (or set RAY_ADDRESS); default: start a local Ray quietly.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar on stderr.")
def embed(data, text_col, label_col, id_col, split_col, test_size, seed, model, pooling, max_length, device, dtype,
          batch_tokens, shard_rows, out, engine, ray_address, progress) -> None:
    """Stage one: embed every text and cache the chosen poolings (one forward pass for all of them)."""
    from pipeline.embed.stage import embed_dataset
    from pipeline.embed.encoder import Encoder
    from pipeline.embed.models import resolve_model
    from pipeline.paths import ensure_writable
    from pipeline.embed.pooling import parse_poolings

    names = parse_poolings(pooling)
    data_args = (data, text_col, label_col, id_col, split_col, test_size, seed)
    if engine == "ray":
        from pipeline.embed.ray_engine import embed_with_ray, ray_session, read_table_ray

        ensure_writable(out)
        with ray_session(out, ray_address):  # Ray Data reads the file, actors embed the shards
            ds = load_data(*data_args, reader=read_table_ray)
            encoder = Encoder(resolve_model(model), device, dtype, max_length, batch_tokens)
            result = embed_with_ray(ds, encoder, names, out, shard_rows, ray_address, progress)
    else:
        ds = load_data(*data_args)
        ensure_writable(out)
        encoder = Encoder(resolve_model(model), device, dtype, max_length, batch_tokens)
        result = embed_dataset(ds, encoder, names, out, shard_rows, progress)
    click.echo(summary_line(result))


@cli.command()
@data_options
@click.option("--cache", type=click.Path(path_type=Path), default=None,
              help="Train on this cache folder instead of finding the one for --data/--model.")
@click.option("--pooling", default="mean", show_default=True,
              help="Comma list of poolings in the cache, 'layerK' for one layer, or 'all'.")
@click.option("--head", default="logreg", show_default=True,
              help="Comma list of heads (logreg, linear-svm, rbf-svm, mlp, knn) or 'all'.")
@click.option("--embeddings", default="artifacts/embeddings", show_default=True, type=click.Path(path_type=Path),
              help="Cache root to search for --data/--model.")
@click.option("--out", default="artifacts/runs", show_default=True, type=click.Path(path_type=Path),
              help="Where runs are written.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar on stderr.")
def train(data, text_col, label_col, id_col, split_col, test_size, seed, model, cache, pooling, head, embeddings, out,
          progress) -> None:
    """Stage two: train heads on cached vectors and report test metrics (the encoder is not run)."""
    from pipeline.train.heads import parse_heads
    from pipeline.paths import ensure_writable
    from pipeline.train.report import summary_table
    from pipeline.train.stage import train_cache

    heads = parse_heads(head)
    if cache is None:
        ds = load_data(data, text_col, label_col, id_col, split_col, test_size, seed)
        cache = find_cache_or_fail(embeddings, ds, model, data)
    ensure_writable(out)
    rows = train_cache(cache, pooling, heads, out, seed, progress)
    click.echo(summary_table(rows))
    click.echo(f"runs: {Path(out) / cache.name} (runs.csv, and report.md + confusion.png per run)")


@cli.command()
@click.option("--run", "run_path", type=click.Path(path_type=Path), default=None,
              help="Run folder (artifacts/runs/<cache>/<pooling>/<head>); default: the newest run.")
@click.option("--text", "texts", multiple=True, help="A text to classify (repeatable).")
@click.option("--input", "input_path", type=click.Path(path_type=Path), default=None,
              help="A CSV/TSV/JSONL/Parquet file of texts to classify.")
@click.option("--text-col", default="text", show_default=True, help="Text column of --input.")
@click.option("--output", type=click.Path(path_type=Path), default=None,
              help="Write predictions here (.csv or .parquet) instead of printing them.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda[:N] or mps.")
@click.option("--runs", default="artifacts/runs", show_default=True, type=click.Path(path_type=Path),
              help="Where to look for the newest run.")
def predict(run_path, texts, input_path, text_col, output, device, runs) -> None:
    """Classify new texts with a trained run (same model, max length and pooling as in training)."""
    from pipeline.predict import load_encoder_for, predict_texts, write_predictions
    from pipeline.train.runs import load_run, newest_run

    texts = list(texts) + (read_texts(input_path, text_col) if input_path else [])
    run = load_run(run_path or newest_run(runs))
    labels, proba = predict_texts(run, load_encoder_for(run, device), texts)
    names = run.record["label_names"]
    if output:
        write_predictions(output, texts, labels, proba, names)
        click.echo(f"wrote {len(texts)} predictions to {output}")
        return
    for text, label, p in zip(texts, labels, proba):
        probs = ", ".join(f"{n}={v:.3f}" for n, v in zip(names, p))
        click.echo(f"{label}\t{probs}\t{text}")


def read_texts(path: Path, column: str) -> list[str]:
    from pipeline.data.tables import read_table

    table = read_table(path)
    if column not in table:
        raise PipelineError(f"no text column '{column}' in {path} (columns: {', '.join(table)}): use --text-col")
    return table[column]


def summary_line(result) -> str:
    m, run = result.manifest, result.manifest["last_run"]
    speed = (f"{run['seconds']:.1f}s, {run['texts_per_s']:.0f} texts/s, {run['tokens_per_s']:.0f} tokens/s"
             if run["computed_rows"] else "nothing to compute (cache reused)")
    return (f"embedded {m['rows']} rows ({run['computed_rows']} computed, {m['rows'] - run['computed_rows']} reused), "
            f"{m['tokens']} tokens, {m['truncated']} truncated at {m['encoder']['max_length']}; {speed}; "
            f"device {m['device']}, dtype {m['encoder']['dtype']}; poolings {','.join(m['poolings'])}\n"
            f"cache: {result.path}")


cli.add_command(bench)
cli.add_command(eval_)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2; no tracebacks for them."""
    try:
        cli.main(standalone_mode=False)
    except PipelineError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("error: interrupted; finished shards are kept, run the same command to resume", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()} (see --help)", err=True)
        sys.exit(exc.exit_code or 2)
    except KeyboardInterrupt:
        click.echo("error: interrupted; finished shards are kept, run the same command to resume", err=True)
        sys.exit(130)
