"""An encoder's settings, resolved once: the options as a user gives them (EncoderOptions, 'auto' allowed) become one
frozen EncoderConfig (every choice made: device, dtype, runtime, token budget) that travels as one value to the
encoder, the Ray actors (to_json/from_json) and the manifest. Device, dtype and runtime are picked here and nowhere
else; the code that runs an encoder reads the config. How texts over max length are read (windows.Reading) is one
more field of the config.
"""

from dataclasses import asdict, dataclass, replace

from pipeline.cache import EncoderSettings
from pipeline.embed import device as devices
from pipeline.embed import runtimes
from pipeline.embed.sources import ModelRef, resolve_model
from pipeline.embed.windows import DEFAULT_MODE, Reading


@dataclass(frozen=True)
class Calibration:
    """--dtype int8: how its graph is calibrated (a seeded sample of `size` train texts), when the guard refuses it
    (1st-percentile or mean cosine to fp32 below `min_p1` or `min_mean`), and, once calibrated, the kept graph's key
    (`graph`), which predict and the Ray actors load."""

    size: int = 300
    min_p1: float = 0.99
    min_mean: float = 0.995
    seed: int = 0
    graph: str | None = None


@dataclass(frozen=True)
class EncoderConfig:
    """A resolved encoder: model files, device and dtype by name ('cuda:1', 'bf16'), runtime name, max length, the
    token budget per batch, whether it trains (fp32 weights, PyTorch), and how texts over max length are read (the
    embed stage's rows; tokenize() itself always cuts). Made by EncoderOptions.resolve."""

    model: ModelRef
    device: str
    dtype: str
    runtime: str
    max_length: int
    batch_tokens: int
    training: bool = False
    reading: Reading = Reading()
    calibration: Calibration | None = None  # --dtype int8 only

    def settings(self) -> EncoderSettings:
        """What changes the vectors (the cache key's part): model identity, max length, dtype, runtime, and an int8
        graph's key (its calibration)."""
        graph = self.calibration.graph if self.calibration is not None else None
        return EncoderSettings(self.model.identity, self.max_length, self.dtype, self.runtime, int8_graph=graph)

    def variant(self, device: str | None = None, dtype: str | None = None, runtime: str | None = None,
                batch_tokens: int = 0) -> "EncoderConfig":
        """The same encoder with some choices changed (a Ray actor's device; the bench's fp32 and PyTorch peers),
        checked to run there; the token budget is `batch_tokens`, else the default of the runtime on the device."""
        device, dtype = device or self.device, dtype or self.dtype
        runtime = runtimes.pick_runtime(runtime or self.runtime, device, dtype, self.training)
        budget = runtimes.batch_tokens(runtime, device, batch_tokens, self.max_length)
        return replace(self, device=device, dtype=dtype, runtime=runtime, batch_tokens=budget)

    def for_inference(self) -> "EncoderConfig":
        """This encoder as the embed stage runs it here: not training, the runtime 'auto' picks (a fine-tune's frozen
        peer, whose cache its run sits beside)."""
        return replace(self, training=False).variant(runtime="auto")

    def to_json(self) -> dict:
        """Plain values; the model as its --model spec, which finds the same files on another machine."""
        return {**asdict(self), "model": self.model.spec, "reading": asdict(self.reading)}  # calibration: a dict

    @classmethod
    def from_json(cls, record: dict) -> "EncoderConfig":
        """Back from to_json: the model's files are found again (and hashed, so a changed model is noticed); nothing
        else is picked again."""
        calibration = record.get("calibration")
        return cls(**{**record, "model": resolve_model(record["model"]), "reading": Reading(**record["reading"]),
                      "calibration": Calibration(**calibration) if calibration else None})


@dataclass(frozen=True)
class EncoderOptions:
    """How to run the encoder as asked for (CLI or API): 'auto' and 0 mean "pick one here"."""

    max_length: int = 128
    device: str = "auto"
    dtype: str = "auto"
    batch_tokens: int = 0
    runtime: str = "auto"
    long_texts: str = DEFAULT_MODE
    window_overlap: int | None = None  # None: windows.DEFAULT_OVERLAP
    calibration: Calibration = Calibration()  # used by --dtype int8 only

    def resolve(self, model: "str | ModelRef", training: bool = False, fallback: bool = False) -> EncoderConfig:
        """Every choice made, once: device, then dtype on it, then the runtime for both. `fallback`: a named runtime
        that cannot run here gives way to what 'auto' picks (a run's vectors made again on another machine)."""
        ref = model if isinstance(model, ModelRef) else resolve_model(model)
        device = devices.pick_device_name(self.device)
        dtype = devices.pick_dtype_name(self.dtype, device)
        runtime = (runtimes.runtime_here(self.runtime, device, dtype) if fallback
                   else runtimes.pick_runtime(self.runtime, device, dtype, training))
        budget = runtimes.batch_tokens(runtime, device, self.batch_tokens, self.max_length)
        reading = Reading(self.long_texts, self.window_overlap)
        calibration = self.calibration if dtype == "int8" else None
        return EncoderConfig(ref, device, dtype, runtime, self.max_length, budget, training, reading, calibration)
