"""Benchmark and evaluation commands: `bench heads`, `bench speed` and `eval`."""

from pathlib import Path

import click

from pipeline.cli.options import POOLING_HELP, data_options, find_cache_or_fail, load_data, subset
from pipeline.errors import PipelineError


@click.group()
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
    from pipeline.train.heads import parse_heads
    from pipeline.bench.leaderboard import layer_probe, leaderboard, leaderboard_markdown, write_leaderboard

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
    from pipeline.embed.models import resolve_model
    from pipeline.paths import atomic_write_bytes, atomic_write_json

    if sizes:
        from pipeline.bench.scaling import scaling_benchmark, scaling_markdown

        default = "../shared/data/sst2-glue/train.tsv"
        ds = resolve_data(data or default, ColumnSpec(text_col if data else "sentence"))
        rows = scaling_benchmark(ds, [int(s) for s in sizes.split(",")], model, ["--device", device, "--dtype", dtype])
        atomic_write_json(Path(out) / "scaling.json", rows)
        atomic_write_bytes(Path(out) / "scaling.md", scaling_markdown(rows).encode())
        click.echo(scaling_markdown(rows))
        return
    from pipeline.bench.speed import speed_benchmark, speed_markdown

    ds = resolve_data(data or "../shared/data/sst2", ColumnSpec(text_col))
    if not data:
        ds = subset(ds, ds.splits == "test")
    if limit:
        ds = subset(ds, slice(0, limit))
    record = speed_benchmark(ds, resolve_model(model), device, dtype, repeats, log=click.echo)
    atomic_write_json(Path(out) / "speed.json", record)
    atomic_write_bytes(Path(out) / "speed.md", speed_markdown(record).encode())
    click.echo(speed_markdown(record))


@click.command("eval")
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
    from pipeline.embed.encoder import Encoder
    from pipeline.bench.senteval import evaluate, find_tasks, results_markdown, write_results
    from pipeline.embed.models import resolve_model
    from pipeline.paths import safe_name
    from pipeline.embed.pooling import parse_poolings

    names = list(TASKS) if tasks == "all" else [t.strip() for t in tasks.split(",")]
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise PipelineError(f"unknown task {', '.join(unknown)}: choose from {', '.join(TASKS)} or 'all'")
    names = find_tasks(data_dir, names)  # before the model loads: a wrong --data-dir fails fast
    encoder = Encoder(resolve_model(model), device, dtype, max_length)
    record = evaluate(data_dir, encoder, parse_poolings(pooling), embeddings, names, seed, progress)
    folder = Path(out) / safe_name(encoder.ref.name.split("/")[-1])
    write_results(folder, record)
    click.echo(results_markdown(record))
    click.echo(f"written: {folder}/results.json, results.md")
