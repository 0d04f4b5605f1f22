"""Shared by the tests/process/test_reliability_*.py files (the third reliability round): a project with a trained run
on the tiny model, and small helpers."""

import socket
from pathlib import Path

import pytest

from conftest import sentiment_rows, train_once, write_csv

ADDED = ["predicted_label", "confidence", "p_negative", "p_positive"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    write_csv(root / "train.csv", sentiment_rows(80))
    write_csv(root / "new.csv", sentiment_rows(12, seed=3))
    return root


@pytest.fixture
def ws(project, tiny_bert, run_cli, monkeypatch):
    train_once(project, run_cli, monkeypatch, tiny_bert, "train.csv", ("--dtype", "fp32"))
    return project


def one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def run_folder() -> Path:
    return next(Path("artifacts/runs").glob("*/mean/logreg"))


def snapshot(root: Path) -> dict:
    import hashlib

    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_record():
    from pipeline.cache import EncoderSettings
    from pipeline.cache.records import ModelIdentity
    from pipeline.train.runs import RunRecord

    encoder = EncoderSettings(ModelIdentity("m", "folder", None, "0" * 64, "1" * 64), 16, "fp32")
    return RunRecord(cache="c", cache_key="k", pooling="mean", head="logreg", head_description="d",
                     label_names=["negative", "positive"], encoder=encoder, model_ref="m", seed=0, selection="cv",
                     params={}, n_train=40, n_dev=0, train_seconds=0.1)
