"""finetune.json as a typed record: what a finished fine-tune was made from, how, and how well it scored. It crosses
seams (the model card, the CLI's summary, the learning curve, a later run that reuses the fine-tune), so each reads
fields, not dictionary keys; to_json writes the same JSON as before the record was typed, plus its version."""

from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.cache import DataInfo, check_schema
from pipeline.errors import PipelineError
from pipeline.finetune.settings import FinetuneSettings

RECORD_SCHEMA = 1  # records written before the field existed are version 1 too


@dataclass(frozen=True)
class FinetuneRecord:
    key: str
    name: str
    created: str
    base_model: dict  # the base model's name and --model spec, then its ModelIdentity's fields
    data: DataInfo
    method: str
    method_description: str
    settings: FinetuneSettings  # resolved: every default filled in
    device: str
    label_names: list[str]
    rows: dict[str, int]  # train, select, test
    selection: str
    epochs: int
    best_epoch: int | None
    steps: int
    seconds: float
    resumed_at_step: int
    history: list[dict]  # per epoch: epoch, loss, dev
    dev_accuracy: float | None
    test_accuracy: float
    run: str | None = None  # the run folder, beside the frozen runs of the same data and base model
    schema: int = RECORD_SCHEMA

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, record: object, path: Path) -> "FinetuneRecord":
        """Parse and check finetune.json; a damaged one gets a one-line error (PipelineError)."""
        check_schema(record, path, "the same `bert-pipeline finetune` command again", current=RECORD_SCHEMA)
        try:
            return cls(**{**record, "data": DataInfo(**record["data"]),
                          "settings": FinetuneSettings(**record["settings"])})
        except (KeyError, TypeError, ValueError) as exc:
            raise PipelineError(f"{path} is damaged ({type(exc).__name__}: {exc}): run the same "
                                "`bert-pipeline finetune` command again") from None
