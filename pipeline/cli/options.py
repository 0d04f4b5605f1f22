"""Options shared by the CLI's commands. Each group of options becomes one typed value (DataSpec, EncoderOptions)
with the same names as the library's parameters, so a message that names a parameter fits both."""

import functools
from collections.abc import Callable
from pathlib import Path

import click

SEEDS = click.IntRange(0, 2**32 - 1)


class PathOrUri(click.ParamType):
    """A local path (a Path, as click.Path gives) or a storage URI (s3://, gs://, hdfs://, file://) resolved by
    pipeline.storage. Only a URI imports the storage layer (and pyarrow), so plain paths start as fast as before."""

    name = "path|uri"

    def convert(self, value, param, ctx):
        if not isinstance(value, str) or "://" not in value:
            return Path(value) if isinstance(value, str) else value
        from pipeline.storage import location

        return location(value)


PATH_OR_URI = PathOrUri()


class RegistryOption(click.Option):
    """An option whose default and help list come from a registry, read only when needed: `train --help` must not
    import torch to list the poolings, and a new registry entry shows up here without an edit."""

    def __init__(self, *args, names: Callable[[], list[str]], choices: Callable[[], list[str]], **kwargs) -> None:
        super().__init__(*args, default=lambda: ",".join(names()), **kwargs)
        self.names, self.choices = names, choices

    def get_help_record(self, ctx: click.Context):
        self.help = f"{self.help} Known: {', '.join(self.choices())}; or 'all'."
        self.show_default = ",".join(self.names())
        return super().get_help_record(ctx)


class LazyHelpOption(click.Option):
    """An option whose help text is made only when help is shown (from a registry that would import torch)."""

    def __init__(self, *args, help_text: Callable[[], str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.help_text = help_text

    def get_help_record(self, ctx: click.Context):
        self.help = self.help_text()
        return super().get_help_record(ctx)


class NamesInHelpCommand(click.Command):
    """A command whose help names registry entries, filled in only when the help is shown: `{names}` in its
    docstring becomes `names()` (the registry would load scikit-learn at every start-up)."""

    def __init__(self, *args, names: Callable[[], list[str]], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.names = names

    def format_help_text(self, ctx: click.Context, formatter) -> None:
        *others, last = self.names()
        self.help = (self.help or "").replace("{names}", f"{', '.join(others)} or {last}")
        super().format_help_text(ctx, formatter)


def known(text: str, names: Callable[[], list[str]]) -> Callable[[], str]:
    """A help text ending with a registry's names, made when help is shown (for LazyHelpOption)."""
    return lambda: f"{text} Known: {', '.join(names())}."


def sources_help(text: str) -> Callable[[], str]:
    """`text`, then what --model takes, from the model-source registry (the first source that matches is used)."""

    def made() -> str:
        from pipeline.embed.sources import SOURCES

        return f"{text} {'; '.join(f'{name}: {s.description}' for name, s in SOURCES.items())}."

    return made


def engines_help(text: str) -> Callable[[], str]:
    """`text`, then each engine of the registry with what it is."""

    def made() -> str:
        from pipeline.embed.stage import ENGINES

        return f"{text}{'; '.join(f'{name}: {what}' for name, what in ENGINES.items())}."

    return made


def runtimes_help() -> str:
    from pipeline.embed.runtimes import RUNTIMES

    listed = "; ".join(f"{name}: {kind.description}" for name, kind in RUNTIMES.items())
    return f"What runs the encoder: auto (openvino for CPU inference where it can, else torch); {listed}."


def poolings() -> list[str]:
    from pipeline.embed.pooling import POOLINGS

    return list(POOLINGS)


def _default_poolings() -> list[str]:
    from pipeline.embed.pooling import DEFAULT_POOLINGS

    return list(DEFAULT_POOLINGS)


def heads() -> list[str]:
    from pipeline.train.heads import HEADS

    return list(HEADS)


def tasks() -> list[str]:
    from pipeline.data.benchmarks import TASKS

    return list(TASKS)


def onnx_heads() -> list[str]:
    from pipeline.train.heads import onnx_heads

    return onnx_heads()


def pooling_option(default: Callable[[], list[str]] = _default_poolings, help_text: str = "Comma list of poolings."):
    return click.option("--pooling", cls=RegistryOption, names=default, choices=poolings, help=help_text)


def head_option(default: Callable[[], list[str]]):
    return click.option("--head", cls=RegistryOption, names=default, choices=heads, help="Comma list of heads.")


def data_options(func):
    """--data and the options that decide how it is read and split, handed to the command as `data: DataSpec`
    (shared by embed, train, bench and finetune)."""
    options = [
        click.option("--data", default="rotten_tomatoes", show_default=True,
                     help="A CSV/TSV/JSONL/Parquet file, a benchmark folder (e.g. ../shared/data/sst2), or "
                          "'rotten_tomatoes' for the built-in demo set."),
        click.option("--text-col", default="text", show_default=True, help="Column holding the texts."),
        click.option("--label-col", default="label", show_default=True, help="Column holding the labels."),
        click.option("--id-col", default=None, help="Optional column of unique row ids (default: row numbers)."),
        click.option("--split-col", default=None, help="Optional column with train / dev (validation) / test."),
        click.option("--test-size", default=0.2, show_default=True,
                     type=click.FloatRange(0, 1, min_open=True, max_open=True),
                     help="Share held out as test when there is no split column (stratified, seeded)."),
        click.option("--seed", default=0, show_default=True, type=SEEDS, help="Seed for the split and the heads."),
    ]

    @functools.wraps(func)
    def wrapper(*args, data, text_col, label_col, id_col, split_col, test_size, seed, **kwargs):
        from pipeline.data import ColumnSpec, DataSpec

        spec = DataSpec(data, ColumnSpec(text_col, label_col, id_col, split_col), test_size, seed)
        return func(*args, data=spec, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def model_option(func):
    return click.option("--model", default="default", show_default=True, cls=LazyHelpOption,
                        help_text=sources_help("The model, as the first of these that matches:"))(func)


def encoder_options(func):
    """--max-length, --long-texts, --window-overlap, --device, --dtype (with int8's calibration and guard),
    --batch-tokens and --runtime, handed to the command as `options: EncoderOptions`."""
    options = [
        click.option("--max-length", default=128, show_default=True, type=click.IntRange(min=2),
                     help="Tokens per model input; longer texts are read in windows of this length, or cut."),
        click.option("--long-texts", default="window", show_default=True,
                     help="window: a text over --max-length tokens is read whole, in overlapping windows whose "
                          "vectors are averaged (max for 'max'); truncate: it is cut at --max-length."),
        click.option("--window-overlap", default=None, type=click.IntRange(min=0),
                     help="Tokens shared by consecutive windows [default: 32, or a third of a shorter window]."),
        click.option("--device", default="auto", show_default=True,
                     help="auto (CUDA, then MPS, then CPU), cpu, cuda[:N], mps."),
        click.option("--dtype", default="auto", show_default=True,
                     help="auto (bf16/fp16 on GPU; on CPU bf16 where the CPU has bf16 instructions), fp32, bf16, "
                          "fp16, or int8 (CPU; calibrated on the train texts, checked by a guard: docs/int8.md)."),
        click.option("--calibration-size", default=300, show_default=True, type=click.IntRange(min=1),
                     help="--dtype int8: seeded train texts it is calibrated on (at most half the train split)."),
        click.option("--int8-min-p1", default=0.99, show_default=True, type=click.FloatRange(-1, 1),
                     help="--dtype int8: the guard refuses a 1st-percentile cosine to fp32 below this."),
        click.option("--int8-min-mean", default=0.995, show_default=True, type=click.FloatRange(-1, 1),
                     help="--dtype int8: the guard refuses a mean cosine to fp32 below this."),
        click.option("--batch-tokens", default=0, type=click.IntRange(min=0),
                     help="Token budget per batch (rows x longest row); 0 picks one per device."),
        click.option("--runtime", default="auto", show_default=True, cls=LazyHelpOption, help_text=runtimes_help),
    ]

    @functools.wraps(func)
    def wrapper(*args, max_length, long_texts, window_overlap, device, dtype, calibration_size, int8_min_p1,
                int8_min_mean, batch_tokens, runtime, **kwargs):
        from pipeline.embed.settings import Calibration, EncoderOptions

        calibration = Calibration(calibration_size, int8_min_p1, int8_min_mean)
        options = EncoderOptions(max_length, device, dtype, batch_tokens, runtime, long_texts, window_overlap,
                                 calibration)
        return func(*args, options=options, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def embeddings_option(func):
    return click.option("--embeddings", default="artifacts/embeddings", show_default=True, type=PATH_OR_URI,
                        help="Root folder (or s3://, gs://, hdfs:// URI) of the embedding caches.")(func)


def progress_option(func):
    return click.option("--progress/--no-progress", default=True, help="Show a progress bar on stderr.")(func)


def find_cache(embeddings, data, model: str):
    """The cache of `data` made by this very `model` (matched on its weights and tokenizer hashes)."""
    from pipeline.cache import require_cache
    from pipeline.embed.sources import resolve_model

    ds, identity = data.load(), resolve_model(model).identity
    model_arg = "" if model == "default" else f" MODEL={model}"
    return require_cache(embeddings, ds.name, ds.fingerprint, identity, f"make embed {data.make_args()}{model_arg}")


def ray_pool_options(func):
    """--ray-actors and --ray-cpus-per-actor, handed to the command as `pool: RayPool` (used by --engine ray)."""
    options = [
        click.option("--ray-actors", default=None, metavar="N|MIN-MAX",
                     help="--engine ray: N actors, or autoscale between MIN and MAX [default: as many as the "
                          "cluster's CPUs fit, GPUs one each]."),
        click.option("--ray-cpus-per-actor", default=None, type=click.IntRange(min=1),
                     help="--engine ray: CPUs each actor asks for [default: the smallest node's CPUs, so one actor "
                          "per node]; no node may have fewer than this for an actor to start there."),
    ]

    @functools.wraps(func)
    def wrapper(*args, ray_actors, ray_cpus_per_actor, **kwargs):
        from pipeline.embed.remote import RayPool, parse_actors

        return func(*args, pool=RayPool(*parse_actors(ray_actors), ray_cpus_per_actor), **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper
