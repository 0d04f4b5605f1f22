"""Readers for the classic sentence-classification benchmark layouts (SentEval's MR, CR, SUBJ, MPQA, SST, TREC;
TweetEval). They work on any folder laid out the same way, so users can point them at their own copies.

Files are split on '\\n' only: some are latin-1, where byte 0x85 (NEL) would be a line break for str.splitlines().
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data.dataset import Dataset, encode_labels
from pipeline.data.sniff import not_utf8
from pipeline.errors import PipelineError


def read_lines(path: Path, encoding: str = "utf-8") -> list[str]:
    """Non-blank lines of a benchmark file, without their line ends."""
    return [line for _, line in numbered_lines(path, encoding)]


def numbered_lines(path: Path, encoding: str = "utf-8") -> list[tuple[int, str]]:
    """Non-blank lines with their line numbers in the file, so a bad line can be named."""
    if not path.exists():
        raise PipelineError(f"benchmark file not found: {path} (is the folder laid out like ../shared/data?)")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PipelineError(f"cannot read {path}: {exc.strerror or exc} (check that it is a readable file)") from None
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise not_utf8(path, raw, exc) from None
    return [(number, line.rstrip("\r")) for number, line in enumerate(text.split("\n"), start=1) if line.strip()]


def bad_line(path: Path, number: int, line: str, expected: str) -> PipelineError:
    """One message for every malformed benchmark line: where it is, what was expected, and the fix."""
    return PipelineError(f"{path} line {number} is not {expected} (got {line[:60]!r}): fix or delete that line")


def detect_task(folder: Path) -> Task:
    """The task whose files the folder holds (by file names, so any copy of the layout works)."""
    for task in TASKS.values():
        if (folder / task.marker).exists():
            return task
    raise PipelineError(f"{folder} is a folder but not a known benchmark layout (one of {', '.join(TASKS)}): "
                        "pass a CSV/TSV/JSONL/Parquet file instead")


def load_task(folder: Path) -> Dataset:
    """Read a benchmark folder into a Dataset; CV tasks put every row in 'train' (the protocol makes the folds)."""
    folder = Path(folder)
    task = detect_task(folder)
    texts, raw, splits = task.reader(folder, task)
    if task.label_names:
        labels = np.asarray(raw, dtype=np.int64)
        names = list(task.label_names)
    else:
        labels, names = encode_labels(raw)
        if task.name_labels:
            names = task.name_labels(folder, names)
    return Dataset(task.name, [str(i) for i in range(len(texts))], texts, labels, names,
                   np.asarray(splits, dtype=object), f"benchmark layout '{task.name}' ({task.protocol})")


def _read_pair(folder: Path, task: Task):
    """Two files of sentences; the first file holds label 1 (positive / subjective)."""
    pos, neg = (read_lines(folder / f, task.encoding) for f in task.files)
    return pos + neg, [1] * len(pos) + [0] * len(neg), ["train"] * (len(pos) + len(neg))


def _read_label_first(folder: Path, task: Task):
    texts, labels, splits = [], [], []
    for file, split in zip(task.files, ("train", "dev", "test"), strict=True):
        for number, line in numbered_lines(folder / file, task.encoding):
            label, text = _label_first(folder / file, number, line, len(task.label_names))
            texts.append(text)
            labels.append(label)
            splits.append(split)
    return texts, labels, splits


def _label_first(path: Path, number: int, line: str, n_labels: int) -> tuple[int, str]:
    """'<label> <sentence>' with an integer label below `n_labels` (an index into the task's label names)."""
    label, _, text = line.partition(" ")
    expected = f"'<label> <sentence>' with an integer label 0..{n_labels - 1}"
    try:
        value = int(label)
    except ValueError:
        raise bad_line(path, number, line, expected) from None
    if not text.strip() or not 0 <= value < n_labels:
        raise bad_line(path, number, line, expected)
    return value, text


def _read_trec(folder: Path, task: Task):
    texts, labels, splits = [], [], []
    for file, split in zip(task.files, ("train", "test"), strict=True):
        for number, line in numbered_lines(folder / file, task.encoding):
            label, _, text = line.partition(" ")
            coarse, colon, fine = label.partition(":")
            if not (coarse and colon and fine and text.strip()):
                raise bad_line(folder / file, number, line, "'COARSE:fine question' (e.g. 'NUM:date When ...?')")
            texts.append(text)
            labels.append(coarse)
            splits.append(split)
    return texts, labels, splits


def _read_aligned(folder: Path, task: Task):
    texts, labels, splits = [], [], []
    for part in task.files:
        part_texts = read_lines(folder / f"{part}_text.txt")
        part_labels = [_int_line(folder / f"{part}_labels.txt", number, line)
                       for number, line in numbered_lines(folder / f"{part}_labels.txt")]
        if len(part_texts) != len(part_labels):
            raise PipelineError(f"{folder}/{part}_text.txt and {part}_labels.txt differ in length")
        texts += part_texts
        labels += part_labels
        splits += ["train"] * len(part_texts)
    return texts, labels, splits


def _int_line(path: Path, number: int, line: str) -> int:
    try:
        return int(line)
    except ValueError:
        raise bad_line(path, number, line, "an integer label") from None


def _tweet_names(folder: Path, numeric_names: list[str]) -> list[str]:
    path = folder / "mapping.txt"
    if not path.exists():
        return numeric_names
    mapping = dict(_mapping_line(path, number, line) for number, line in numbered_lines(path))
    return [mapping.get(n, n) for n in numeric_names]


def _mapping_line(path: Path, number: int, line: str) -> tuple[str, str]:
    label, tab, name = line.partition("\t")
    if not (tab and name.strip()):
        raise bad_line(path, number, line, "'<label><TAB><name>'")
    return label, name


@dataclass(frozen=True)
class Task:
    """A benchmark folder: how to read it, and whether it has its own train/test split or is scored by CV."""

    name: str
    reader: Callable[[Path, Task], tuple[list[str], list, list[str]]]
    files: tuple
    label_names: tuple = ()
    encoding: str = "utf-8"
    protocol: str = "split"
    probe: str = ""  # the file whose presence identifies the layout (default: the first of `files`)
    name_labels: Callable[[Path, list[str]], list[str]] | None = None  # turns raw label values into names

    @property
    def marker(self) -> str:
        return self.probe or self.files[0]


TASKS = {t.name: t for t in [
    Task("mr", _read_pair, ("rt-polarity.pos", "rt-polarity.neg"), ("negative", "positive"), "latin-1", "cv"),
    Task("cr", _read_pair, ("custrev.pos", "custrev.neg"), ("negative", "positive"), "latin-1", "cv"),
    Task("subj", _read_pair, ("subj.subjective", "subj.objective"), ("objective", "subjective"), "latin-1", "cv"),
    Task("mpqa", _read_pair, ("mpqa.pos", "mpqa.neg"), ("negative", "positive"), "latin-1", "cv"),
    Task("sst2", _read_label_first, ("stsa.binary.train", "stsa.binary.dev", "stsa.binary.test"),
         ("negative", "positive")),
    Task("sst5", _read_label_first, ("stsa.fine.train", "stsa.fine.dev", "stsa.fine.test"),
         ("very negative", "negative", "neutral", "positive", "very positive")),
    Task("trec", _read_trec, ("TREC.train", "TREC.test"), encoding="latin-1"),
    Task("tweet_eval_sentiment", _read_aligned, ("val", "test"), protocol="cv", probe="val_text.txt",
         name_labels=_tweet_names),
]}
