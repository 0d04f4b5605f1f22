"""The `finetune` command: train the encoder itself (full fine-tuning or SetFit), then report like `train`."""

import sys
from pathlib import Path

import click

from pipeline.cli.options import LazyHelpOption, data_options, known, model_option, poolings, progress_option


def _registry() -> dict:
    from pipeline.finetune.settings import METHODS

    return METHODS


def _methods() -> list[str]:
    return list(_registry())


class MethodChoice(click.ParamType):
    """--method: checked against the registry (unknown names get the one-line error with the known ones)."""

    name = "method"

    def get_metavar(self, param, ctx=None) -> str:
        return "|".join(_methods())


@click.command()
@data_options
@model_option
@click.option("--method", default="full", show_default=True, type=MethodChoice(), cls=LazyHelpOption,
              help_text=lambda: "; ".join(f"{m.name}: {m.description}" for m in _registry().values()) + ".")
@click.option("--pooling", default="mean", show_default=True, cls=LazyHelpOption,
              help_text=known("The pooling the head reads (one name).", poolings))
@click.option("--shots", default=None, type=click.IntRange(min=1),
              help="Train on N rows per class drawn from train (seeded, stratified); default: all of train.")
@click.option("--epochs", default=None, type=click.IntRange(min=1), help="Epochs (default: 3 full, 1 setfit).")
@click.option("--lr", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Peak learning rate (default: 5e-5 full, 2e-5 setfit).")
@click.option("--batch-tokens", default=0, type=click.IntRange(min=0),
              help="Token budget per training batch (rows x longest row); 0: 1024 on CPU, 8192 on a GPU.")
@click.option("--max-length", default=128, show_default=True, type=click.IntRange(min=2),
              help="Tokens per text; longer texts are truncated.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda[:N] or mps.")
@click.option("--dtype", default="auto", show_default=True,
              help="auto (the embed stage's choice: bf16 autocast where it runs fast), fp32, bf16, fp16.")
@click.option("--out", default="artifacts/models", show_default=True, type=click.Path(path_type=Path),
              help="Root folder of tuned model folders.")
@click.option("--runs", default="artifacts/runs", show_default=True, type=click.Path(path_type=Path),
              help="Runs root (the run goes beside the frozen runs of the same data and base model).")
@progress_option
def finetune(data, model, method, pooling, shots, epochs, lr, batch_tokens, max_length, device, dtype, out, runs,
             progress) -> None:
    """Fine-tune the encoder on the train split; write a model folder (usable with --model) and a run."""
    from pipeline.finetune.settings import FinetuneSettings
    from pipeline.finetune.stage import finetune as finetune_stage
    from pipeline.finetune.stage import reuse_line, summary_line

    settings = FinetuneSettings(method=method, pooling=pooling, shots=shots, epochs=epochs, lr=lr,
                                batch_tokens=batch_tokens, max_length=max_length, dtype=dtype, seed=data.seed)
    try:
        result = finetune_stage(data, model, settings, out, runs, device, progress)
    except KeyboardInterrupt:
        click.echo("error: interrupted; the last checkpoint (written every epoch and every 5 minutes) is kept: run "
                   "the same command to resume", err=True)
        sys.exit(130)
    if result.reused:
        click.echo(reuse_line(result))
    click.echo(summary_line(result))
