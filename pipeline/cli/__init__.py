"""The command line: thin wrappers that parse options into typed values and call library functions (which tests
and notebooks call too). Heavy modules are imported inside the commands, so `--help` and `train` start fast."""

import atexit
import os
import re
import sys
from pathlib import Path

import click

from pipeline.cli.bench import bench, eval_
from pipeline.cli.finetune import finetune
from pipeline.cli.options import (
    PATH_OR_URI,
    LazyHelpOption,
    data_options,
    embeddings_option,
    encoder_options,
    engines_help,
    find_cache,
    head_option,
    model_option,
    pooling_option,
    progress_option,
    ray_pool_options,
)
from pipeline.cli.serve import serve
from pipeline.cli.use import export, predict
from pipeline.errors import PipelineError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Embed texts once with a BERT-family encoder, then train and compare cheap heads on the cached vectors."""


@cli.command()
@data_options
@model_option
@pooling_option(help_text="Comma list of poolings; P@A folds a long text's windows by aggregation A (token_mean, "
                          "mean, max, first, head_tail), e.g. mean@head_tail; 'windows' adds mean@A for each A.")
@encoder_options
@click.option("--shard-rows", default=4096, show_default=True, type=click.IntRange(min=1),
              help="Rows per Parquet shard (the unit of resume).")
@click.option("--out", default="artifacts/embeddings", show_default=True, type=PATH_OR_URI,
              help="Cache root folder, or an s3://, gs:// or hdfs:// URI.")
@click.option("--engine", default="local", show_default=True, cls=LazyHelpOption, help_text=engines_help(""))
@click.option("--ray-address", default=None, envvar="RAY_ADDRESS",
              help="Join this Ray cluster (or set RAY_ADDRESS); default: start a local Ray quietly.")
@ray_pool_options
@progress_option
def embed(data, model, pooling, options, shard_rows, out, engine, ray_address, pool, progress) -> None:
    """Stage one: embed every text and cache the chosen poolings (one forward pass for all of them)."""
    from pipeline.embed.aggregate import parse_pooling_names
    from pipeline.embed.stage import embed as embed_stage

    result = embed_stage(data, model, parse_pooling_names(pooling), out, options, shard_rows, engine, ray_address,
                         progress, pool)
    click.echo(summary_line(result))
    _warn_cut(result.manifest)


@cli.command()
@data_options
@model_option
@click.option("--cache", type=PATH_OR_URI, default=None,
              help="Train on this cache folder (or URI) instead of finding the one for --data/--model.")
@click.option("--pooling", default="mean", show_default=True,
              help="Comma list of poolings in the cache, 'layerK' for one layer, or 'all'.")
@head_option(lambda: ["logreg"])
@embeddings_option
@click.option("--out", default="artifacts/runs", show_default=True, type=PATH_OR_URI,
              help="Where runs are written (a local folder).")
@progress_option
def train(data, model, cache, pooling, head, embeddings, out, progress) -> None:
    """Stage two: train heads on cached vectors and report test metrics (the encoder is not run)."""
    from pipeline.paths import ensure_writable
    from pipeline.storage import require_local
    from pipeline.train.heads import parse_heads
    from pipeline.train.report import summary_table
    from pipeline.train.stage import train_cache

    heads = parse_heads(head)
    require_local(out, "--out of train (the runs folder)")
    cache = cache or find_cache(embeddings, data, model)
    ensure_writable(out)
    rows = train_cache(cache, pooling, heads, out, data.seed, progress)
    click.echo(summary_table(rows))
    click.echo(f"runs: {Path(out) / cache.name} (runs.csv, and report.md + confusion.png per run)")


def summary_line(result) -> str:
    m, run = result.manifest, result.manifest.last_run
    speed = (f"{run.seconds:.1f}s, {run.texts_per_s:.0f} texts/s, {run.tokens_per_s:.0f} tokens/s"
             f"{f' by {run.workers}' if run.workers else ''}"
             if run.computed_rows else "nothing to compute (cache reused)")
    return (f"embedded {m.rows} rows ({run.computed_rows} computed, {m.rows - run.computed_rows} reused), "
            f"{m.tokens} tokens, {_reading(m)}; {speed}; "
            f"device {m.device}, dtype {m.encoder.dtype}; poolings {','.join(m.poolings)}\n"
            + (f"guard: {m.int8.describe()}\n" if m.int8 is not None else "") + f"cache: {result.path}")


def _reading(m) -> str:
    """How the texts were read (windows or cut), for caches that record it; older ones say how many were cut."""
    if m.long_texts is None:
        return f"{m.truncated} truncated at {m.encoder.max_length}"
    return m.long_texts.describe(m.encoder.max_length)


def _warn_cut(m) -> None:
    from pipeline.embed.windows import warning

    line = warning(m.long_texts, m.encoder.max_length) if m.long_texts is not None else None
    if line:
        click.echo(line, err=True)


cli.add_command(bench)
cli.add_command(eval_)
cli.add_command(finetune)
cli.add_command(predict)
cli.add_command(export)
cli.add_command(serve)


INTERRUPTED = "error: interrupted; finished shards are kept, run the same command to resume"


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2; no tracebacks for them."""
    try:
        cli.main(standalone_mode=False)
    except PipelineError as exc:
        _fail(f"error: {exc}", 2)
    except (click.exceptions.Abort, KeyboardInterrupt):
        _fail(INTERRUPTED, 130)
    except click.ClickException as exc:
        _fail(f"error: {exc.format_message()} (see --help)", exc.exit_code or 2)
    except BrokenPipeError:  # the reader stopped early (`| head`): nothing to say, and nothing more to write
        sys.stdout = open(os.devnull, "w")  # the dead pipe, replaced until the process ends
        sys.exit(141)
    except OSError as exc:  # the machine, not the input: a full disk under `> file`, a folder without write access
        where = f" ({exc.filename})" if exc.filename else ""
        _fail(f"error: cannot write{where}: {exc.strerror or exc}; free disk space or fix permissions, then run the "
              "same command (finished work is kept)", 1)
    except Exception as exc:  # Ctrl-C inside a module's import surfaces as that import's error (e.g. ImportError)
        if not _caused_by_interrupt(exc):
            raise
        _fail(INTERRUPTED, 130)


def _caused_by_interrupt(exc: BaseException | None) -> bool:
    """Whether a KeyboardInterrupt is somewhere in the chain of exceptions that led to `exc`."""
    while exc is not None:
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _fail(line: str, code: int) -> None:
    """The error as the last line on stderr: a progress bar still open when the command stopped is closed first,
    since tqdm would otherwise redraw it at exit, below the error."""
    tqdm = getattr(sys.modules.get("tqdm"), "tqdm", None)
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()
    click.echo(one_line(line), err=True)
    sys.exit(code)


MESSAGE_CHARS = 600  # a message longer than this is cut in its middle: what is wrong comes first, the fix last


def one_line(message: str) -> str:
    """An error as one short line, whatever it quotes (a value with newlines, a library's long text): line breaks
    become spaces, and an overlong middle gives way, keeping the start (what is wrong) and the end (the way out)."""
    flat = re.sub(r"\s*[\r\n]+\s*", " ", message.strip())
    if len(flat) <= MESSAGE_CHARS:
        return flat
    return f"{flat[:MESSAGE_CHARS * 2 // 3]} [...] {flat[-MESSAGE_CHARS // 3:]}"


def run() -> None:
    """The console script: main(), then leave without tearing the interpreter down. Python's final clean-up of the
    torch, transformers and scikit-learn modules takes about a second on a 2-core machine and changes nothing on
    disk: every output is written and closed by then, and the atexit handlers (temporary folders, Ray, joblib's
    workers) still run first. An unexpected exception still ends the normal way, with its traceback."""
    try:
        main()
        code = 0
    except SystemExit as exc:
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:  # a reader that stopped early (`| head`) is no reason to fail
            pass
        except (OSError, ValueError):  # e.g. a full disk under `> file`: the output is incomplete, say so
            code = code or 120  # what Python itself exits with when flushing stdout fails at exit
    os._exit(code)
