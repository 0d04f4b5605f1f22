"""The training loop both methods share: AdamW with warm-up and linear decay, gradient clipping, bf16 autocast
where the device's dtype says so, early stopping on a dev score, a progress bar, and checkpoints to resume from.

Why not transformers' Trainer (or setfit's, which wraps sentence-transformers' Trainer): measured on this project's
2-core CPU, README "Fine-tuning". Its batches have a fixed row count (`group_by_length` sorts, it has no token
budget), so the embed stage's token-budget batches need a replaced dataloader; its checkpoints are written into
`checkpoint-N/` file by file (a kill while saving leaves a folder that resume then picks up); and it needs
accelerate. This loop is short, and every line of the resume path is tested.
"""

import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from tqdm import tqdm

from pipeline.errors import PipelineError
from pipeline.finetune.checkpoint import Checkpoints, restore_rng, seed_everything
from pipeline.finetune.settings import FinetuneSettings

SAVE_EVERY_S = 300.0  # a checkpoint at least this often within an epoch, and at every epoch's end


@dataclass
class Task:
    """What a method trains: the module, the batches of epoch e (the same for the same seed and epoch), the loss of
    one batch, and the dev score after an epoch (higher is better; None: no early stopping)."""

    model: torch.nn.Module
    epoch_batches: Callable[[int], list]
    loss: Callable[[object], torch.Tensor]
    score: Callable[[], float | None]
    desc: str


@dataclass(frozen=True)
class LoopResult:
    epochs: int  # epochs run
    best_epoch: int | None
    best_score: float | None
    steps: int
    seconds: float  # training time, summed over resumed runs
    resumed_at: int  # the step this process started from (0: a fresh start)
    history: list[dict]


def train_loop(task: Task, settings: FinetuneSettings, device: torch.device, dtype: torch.dtype,
               checkpoints: Checkpoints, progress: bool = True) -> LoopResult:
    """Train `task.model` for settings.epochs (more if that is fewer than settings.min_steps steps; fewer if the dev
    score stops improving for settings.patience epochs), resuming from the last checkpoint of the same key; ends
    with the best epoch's weights loaded."""
    seed_everything(settings.seed)
    model = task.model
    optimizer = torch.optim.AdamW(_param_groups(model, settings.weight_decay), lr=settings.lr)
    n_batches = len(task.epoch_batches(0))
    epochs = max(settings.epochs, -(-settings.min_steps // n_batches))
    total = n_batches * epochs
    warmup = max(1, round(settings.warmup * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))
    loop = {"epoch": 0, "batch": 0, "step": 0, "best_score": None, "best_epoch": None, "bad_epochs": 0,
            "stopped": False, "seconds": 0.0, "history": []}
    best = None
    state = checkpoints.load()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        loop, best = state["loop"], state["best"]
        restore_rng(state["rng"])
    resumed_at, started, last_save = loop["step"], time.perf_counter(), time.perf_counter()
    bar = tqdm(total=total, initial=loop["step"], unit="step", desc=task.desc, disable=not progress,
               file=sys.stderr, dynamic_ncols=True, smoothing=0.05)
    _postfix(bar, loop, None)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 and device.type == "cuda" else None

    def save() -> None:
        checkpoints.save(model, optimizer, scheduler, {**loop, "seconds": loop["seconds"] + time.perf_counter()
                                                       - started}, best)

    while loop["epoch"] < epochs and not loop["stopped"]:
        batches, losses = task.epoch_batches(loop["epoch"]), []
        model.train()
        for index in range(loop["batch"], len(batches)):
            losses.append(_step(task, batches[index], model, optimizer, scheduler, scaler, device, dtype, settings))
            loop["batch"], loop["step"] = index + 1, loop["step"] + 1
            bar.update()
            _postfix(bar, loop, sum(losses[-20:]) / len(losses[-20:]))
            if time.perf_counter() - last_save > SAVE_EVERY_S and index + 1 < len(batches):
                save()
                last_save = time.perf_counter()
        model.eval()
        score = task.score()
        _end_epoch(loop, score, losses, settings.patience)
        if loop["best_epoch"] == loop["epoch"]:
            best = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        _postfix(bar, loop, None)
        save()
        last_save = time.perf_counter()
    bar.close()
    if best is not None:
        model.load_state_dict(best)
    model.eval()
    seconds = loop["seconds"] + time.perf_counter() - started
    return LoopResult(loop["epoch"], loop["best_epoch"], loop["best_score"], loop["step"], seconds, resumed_at,
                      loop["history"])


def _step(task: Task, batch, model, optimizer, scheduler, scaler, device, dtype, settings) -> float:
    """One optimisation step; running out of GPU memory becomes one line that names the fix."""
    autocast = (torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 and device.type != "mps"
                else nullcontext())
    try:
        with autocast:
            loss = task.loss(batch)
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    except torch.OutOfMemoryError:
        budget = settings.batch_tokens or "the default"
        raise PipelineError(f"out of {device.type.upper()} memory in a training batch (token budget {budget}): "
                            "lower --batch-tokens (e.g. half of it) or --max-length and run the same command; it "
                            "resumes from the last checkpoint") from None
    return float(loss.detach())


def _end_epoch(loop: dict, score: float | None, losses: list[float], patience: int) -> None:
    """Record the epoch; the best epoch is the one with the highest dev score (the last one when there is none)."""
    loop["epoch"] += 1
    loop["batch"] = 0
    loop["history"].append({"epoch": loop["epoch"], "loss": sum(losses) / max(1, len(losses)), "dev": score})
    if score is None or loop["best_score"] is None or score > loop["best_score"]:
        loop["best_score"], loop["best_epoch"], loop["bad_epochs"] = score, loop["epoch"], 0
    else:
        loop["bad_epochs"] += 1
        loop["stopped"] = loop["bad_epochs"] >= patience


def _postfix(bar: tqdm, loop: dict, loss: float | None) -> None:
    last = loop["history"][-1]["dev"] if loop["history"] else None
    parts = [f"epoch {max(1, loop['epoch'] + (1 if loop['batch'] else 0))}"]
    parts += [f"loss {loss:.3f}"] if loss is not None else []
    parts += [f"dev {last:.4f}"] if last is not None else []
    bar.set_postfix_str(", ".join(parts), refresh=False)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and LayerNorm weights (the usual BERT recipe)."""
    decay, plain = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (plain if param.ndim < 2 or "LayerNorm" in name or "norm" in name.lower() else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
