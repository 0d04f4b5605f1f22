"""The fine-tune stage: read data as embed does, run a method, write the tuned model folder (loadable with --model
by every command) and a run folder in the train stage's format, beside the frozen runs of the same data and model.

Layout of `<out>/<data>__<model>__<method>__<key12>/`:
  config.json, model.safetensors, tokenizer files   the tuned encoder (a Hugging Face model folder)
  README.md                                          the model card: base model, data, method, settings, metrics
  finetune.json                                      the record, written last: its presence means "finished"
  checkpoint/state.pt                                while training only: the resume point
"""

import importlib
import json
import tempfile
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from pipeline.cache import DataInfo, EncoderSettings, cache_dir, cache_key
from pipeline.data import Dataset, DataSpec
from pipeline.embed.encoder import Encoder
from pipeline.embed.pooling import POOLINGS
from pipeline.embed.settings import EncoderConfig, EncoderOptions
from pipeline.embed.sources import ModelRef, resolve_model
from pipeline.errors import PipelineError
from pipeline.finetune.card import model_card
from pipeline.finetune.checkpoint import Checkpoints, seed_everything
from pipeline.finetune.data import Rows, split_rows
from pipeline.finetune.full import Outcome
from pipeline.finetune.record import FinetuneRecord
from pipeline.finetune.settings import METHODS, FinetuneSettings, check_method
from pipeline.paths import atomic_write_bytes, atomic_write_json, ensure_writable, publish, safe_name
from pipeline.train.metrics import classification_metrics
from pipeline.train.report import confusion_png, run_report, summary_row, update_summary
from pipeline.train.runs import RUN_FILE, RunRecord, cache_runs_dir, run_dir, save_run

RECORD_FILE = "finetune.json"


@dataclass(frozen=True)
class FinetuneResult:
    model_dir: Path
    run_dir: Path
    reused: bool
    record: FinetuneRecord


def finetune(data: DataSpec, model: str, settings: FinetuneSettings, out: Path, runs: Path,
             device: str = "auto", progress: bool = True) -> FinetuneResult:
    """The whole stage. A finished fine-tune of the same key (data, base model, every setting) is reused as is."""
    check_method(settings.method)
    ds = data.load()
    ref = resolve_model(model)
    check_pooling(settings.pooling)
    config = EncoderOptions(settings.max_length, device, settings.dtype).resolve(ref, training=True)
    return finetune_with(ds, config, settings, out, runs, progress)


def finetune_with(ds: Dataset, config: EncoderConfig, settings: FinetuneSettings, out: Path, runs: Path,
                  progress: bool = True) -> FinetuneResult:
    """The stage on an encoder already resolved for training (the learning curve resolves it once for all points)."""
    ref = config.model
    settings = settings.resolved(config.dtype)
    rows = split_rows(ds, settings.shots, settings.seed, hold_out=settings.method == "full")
    key = settings.key(ds.fingerprint, asdict(ref.identity))
    folder = Path(out) / f"{safe_name(ds.name)}__{safe_name(ref.name.split('/')[-1])}__{settings.method}__{key[:12]}"
    finished = _finished(folder, key, runs)
    if finished is not None:
        return finished
    ensure_writable(Path(out))
    ensure_writable(Path(runs))
    encoder = Encoder(config)
    checkpoints = Checkpoints(folder / "checkpoint", key)
    outcome = run_method(encoder, ds, rows, settings, checkpoints, progress)
    record = _record(ds, ref, encoder, settings, rows, outcome, key, folder)
    _save_model(encoder, folder)
    frozen = config.for_inference().settings()
    record = replace(record, run=str(_write_run(ds, ref, settings, rows, outcome, key, folder, record, runs,
                                                 frozen)))
    atomic_write_bytes(folder / "README.md", model_card(record).encode())
    atomic_write_json(folder / RECORD_FILE, record.to_json())
    checkpoints.clear()
    return FinetuneResult(folder, Path(record.run), False, record)


def run_method(encoder: Encoder, ds: Dataset, rows: Rows, settings: FinetuneSettings, checkpoints: Checkpoints,
               progress: bool = True) -> Outcome:
    """Train with the method's runner (settings already resolved); the learning curve calls this directly. Seeded
    first: the new head's initial weights come from the seed too. The encoder must be a training one (PyTorch): a
    compiled inference graph would keep the weights it was converted from, not the trained ones."""
    if not encoder.config.training:
        raise PipelineError("fine-tuning needs an encoder resolved with training=True (fp32 weights, the PyTorch "
                            f"runtime), not one for inference on {encoder.config.runtime}")
    seed_everything(settings.seed)
    module, _, function = METHODS[settings.method].trainer.partition(":")
    train = getattr(importlib.import_module(module), function)
    return train(encoder, ds, rows, settings, checkpoints, progress)


def check_pooling(name: str) -> None:
    if name not in POOLINGS or POOLINGS[name].per_layer:
        known = [n for n, p in POOLINGS.items() if not p.per_layer]
        raise PipelineError(f"cannot fine-tune on pooling {name!r}: choose one of {', '.join(known)}")


def _finished(folder: Path, key: str, runs: Path) -> FinetuneResult | None:
    """The finished fine-tune of this key, if its record and its run are both there and the run is this key's own
    (its run.json names the key): a run folder another fine-tune wrote is never reused for this one."""
    try:
        record = FinetuneRecord.from_json(json.loads((folder / RECORD_FILE).read_text()), folder / RECORD_FILE)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, PipelineError):
        return None  # not finished (or its record is damaged): fine-tune again
    run = Path(record.run or "")
    inside = record.key == key and Path(runs).resolve() in run.resolve().parents
    run_record = _json(run / RUN_FILE) if inside else None
    if not isinstance(run_record, dict) or run_record.get("cache_key") != key or not (run / "metrics.json").exists():
        return None
    return FinetuneResult(folder, run, True, record)


def _json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _record(ds: Dataset, ref: ModelRef, encoder: Encoder, settings: FinetuneSettings, rows: Rows, outcome: Outcome,
            key: str, folder: Path) -> FinetuneRecord:
    test_acc = float((outcome.proba_test.argmax(axis=1) == ds.labels[rows.test]).mean())
    loop = outcome.loop
    return FinetuneRecord(
        key=key, name=folder.name, created=datetime.now(timezone.utc).isoformat(),
        base_model={"name": ref.name, "spec": ref.spec, **asdict(ref.identity)},
        data=DataInfo(ds.name, ds.fingerprint, ds.split_origin, ds.split_counts()), method=settings.method,
        method_description=METHODS[settings.method].description, settings=settings, device=str(encoder.device),
        label_names=ds.label_names, rows={"train": len(rows.train), "select": len(rows.select), "test": len(rows.test)},
        selection=rows.select_origin, epochs=loop.epochs, best_epoch=loop.best_epoch, steps=loop.steps,
        seconds=round(loop.seconds, 1), resumed_at_step=loop.resumed_at, history=loop.history,
        dev_accuracy=outcome.dev_score, test_accuracy=test_acc)


def _save_model(encoder: Encoder, folder: Path) -> None:
    """Weights, config and tokenizer via save_pretrained into a temp folder, then each file renamed into place
    (atomic per file). finetune.json, written after the run and the model card, marks the folder finished."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".save-") as tmp:
        encoder.model.save_pretrained(tmp, safe_serialization=True)
        encoder.tokenizer.save_pretrained(tmp)
        for path in sorted(Path(tmp).iterdir()):
            if path.is_file():
                publish(path, folder / path.name)


def _write_run(ds: Dataset, ref: ModelRef, settings: FinetuneSettings, rows: Rows, outcome: Outcome, key: str,
               folder: Path, record: FinetuneRecord, runs: Path, frozen: EncoderSettings) -> Path:
    """A run in the train stage's format, in the runs folder of the frozen cache of the same data, base model and
    settings (`frozen`, as `embed` would make it here), so runs.csv lists frozen and fine-tuned rows side by side and
    `predict --run` uses it as any run. The run itself keeps the 'torch' runtime its test scores were made with."""
    tuned = resolve_model(str(folder))
    cache_name = cache_dir(Path("."), ds.name, ref.name, cache_key(frozen, ds.fingerprint)).name
    y_test, y_train = ds.labels[rows.test], ds.labels[rows.train]
    metrics = classification_metrics(y_test, outcome.proba_test, ds.label_names, y_train, settings.seed)
    params = {"lr": settings.lr, "epochs": record.epochs, "best_epoch": record.best_epoch,
              **({"shots": settings.shots} if settings.shots else {})}
    run_record = RunRecord(cache=cache_name, cache_key=key, pooling=settings.pooling, head=settings.head_name(key),
                           head_description=f"fine-tuned: {METHODS[settings.method].description}",
                           label_names=ds.label_names, encoder=EncoderSettings(tuned.identity, settings.max_length,
                                                                               settings.dtype),
                           model_ref=str(folder.resolve()), seed=settings.seed, selection=rows.select_origin,
                           params=params, n_train=len(rows.train), n_dev=len(rows.select),
                           train_seconds=round(outcome.loop.seconds, 1))
    path = run_dir(runs, cache_name, settings.pooling, settings.head_name(key))
    run_record = save_run(path, outcome.head, run_record)
    atomic_write_json(path / "metrics.json", {**run_record.to_json(), "metrics": metrics.to_json(),
                                                   "finetune": record.to_json()})
    atomic_write_bytes(path / "report.md", run_report(run_record, metrics).encode())
    confusion_png(path / "confusion.png", metrics.confusion, ds.label_names,
                  f"{settings.head_name(key)} / {settings.pooling}: acc {metrics.accuracy:.3f}")
    update_summary(cache_runs_dir(runs, cache_name) / "runs.csv", [summary_row(run_record, metrics)])
    return path


def reuse_line(result: FinetuneResult) -> str:
    return f"reused the finished fine-tune {result.model_dir} (same data, base model and settings): nothing computed"


def summary_line(result: FinetuneResult) -> str:
    r = result.record
    dev = "n/a" if r.dev_accuracy is None else f"{r.dev_accuracy:.4f}"
    best = f" (kept epoch {r.best_epoch})" if r.best_epoch and r.best_epoch != r.epochs else ""
    return (f"fine-tuned {r.method} on {r.data.name}: {r.epochs} epochs{best}, {r.steps} steps, "
            f"{r.seconds:.0f}s on {r.device} ({r.settings.dtype}); dev accuracy {dev}, test accuracy "
            f"{r.test_accuracy:.4f}\nmodel: {result.model_dir}\nrun: {result.run_dir}")
