"""finetune.json as a typed record: what a finished fine-tune was made from, how, and how well it scored. It crosses
seams (the model card, the CLI's summary, the learning curve, a later run that reuses the fine-tune), so each reads
fields, not dictionary keys; to_json writes the same JSON as before the record was typed, plus its version."""

from dataclasses import dataclass

from pipeline.cache import DataInfo
from pipeline.finetune.settings import FinetuneSettings
from pipeline.records import JsonRecord

RECORD_SCHEMA = 1  # records written before the field existed are version 1 too


@dataclass(frozen=True)
class FinetuneRecord(JsonRecord):
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

    REWRITE = "the same `bert-pipeline finetune` command again"

    @classmethod
    def parse(cls, record: dict) -> "FinetuneRecord":
        return cls(**{**record, "data": DataInfo(**record["data"]), "settings": FinetuneSettings(**record["settings"])})
