"""One base for the typed JSON records the product writes (caches' manifests, run records, fine-tune records, metrics,
bench results): a frozen dataclass whose last field is its format version, `schema`, written as plain JSON and read
back with that version checked, so a script or a later release can tell which format a file has."""

from dataclasses import asdict, fields
from pathlib import Path
from typing import ClassVar, TypeVar

from pipeline.errors import PipelineError

SCHEMA_KEY = "schema"  # the key of a record's version, in every record
R = TypeVar("R", bound="JsonRecord")


class JsonRecord:
    """Mixed into a frozen dataclass that declares `schema: int = <current version>`. Subclasses with nested records
    override `parse`; `REWRITE` names the command that writes the record again, for the one-line error."""

    REWRITE: ClassVar[str] = "the command that wrote it again"
    OLDEST: ClassVar[int | None] = None  # the oldest version still read (None: only the current one)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def version(cls) -> int:
        """The version this release writes: the default of the `schema` field."""
        return next(f.default for f in fields(cls) if f.name == SCHEMA_KEY)

    @classmethod
    def parse(cls: type[R], record: dict) -> R:
        """The record from its JSON (nested records are built by the subclass's override)."""
        return cls(**record)

    @classmethod
    def from_json(cls: type[R], record: object, path: Path) -> R:
        """Parse and check a record read from `path`; another version or a damaged record is one line with the fix."""
        check_schema(record, path, cls.REWRITE, cls.version(), cls.OLDEST)
        try:
            return cls.parse(record)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise PipelineError(f"{path} is damaged ({type(exc).__name__}: {exc}): run {cls.REWRITE}") from None


def check_schema(record: object, path: Path, rebuild: str, current: int, oldest: int | None = None) -> None:
    """Refuse a record written by another version of its format (versions `oldest`..`current` are read; a record
    without a version is version 1), saying which way to go."""
    version = record.get(SCHEMA_KEY, 1) if isinstance(record, dict) else None
    if isinstance(version, int) and (oldest or current) <= version <= current:
        return
    if isinstance(version, int) and version > current:
        raise PipelineError(f"{path} has format version {version}, newer than this bert-pipeline reads "
                            f"({current}): upgrade bert-pipeline, or run {rebuild}")
    raise PipelineError(f"{path} is damaged or of an old format (version {version!r}, expected {current}): "
                        f"run {rebuild}")
