"""Resume points of a fine-tune: one file, written atomically (temp file + rename), holding the weights, the
optimizer, the schedule, every RNG and where the loop stood, so a killed run continues instead of restarting.

The file is loaded with torch.load(weights_only=True): tensors and plain containers only, never arbitrary pickles.
"""

import io
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import PipelineError
from pipeline.paths import atomic_write_bytes

STATE_FILE = "state.pt"


class Checkpoints:
    """The checkpoint folder of one fine-tune (None: keep nothing, e.g. for the learning curve's short runs)."""

    def __init__(self, folder: Path | None, key: str) -> None:
        self.folder, self.key = folder, key

    @property
    def path(self) -> Path | None:
        return self.folder / STATE_FILE if self.folder else None

    def save(self, model: torch.nn.Module, optimizer, scheduler, loop: dict, best: dict | None) -> None:
        if self.path is None:
            return
        state = {"key": self.key, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "loop": loop, "best": best, "rng": rng_state()}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(self.path, buffer.getvalue())

    def load(self) -> dict | None:
        """The last checkpoint of this very fine-tune (same key), or None; a damaged one is refused with the fix."""
        if self.path is None or not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file: torch raises many types
            raise PipelineError(f"the checkpoint {self.path} is damaged ({type(exc).__name__}): delete "
                                f"{self.folder} to start over") from None
        return state if state.get("key") == self.key else None

    def clear(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def rng_state() -> dict:
    """torch's generators (dropout); batches and pairs come from numpy generators seeded by (seed, epoch) instead,
    so they need no state of their own."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
