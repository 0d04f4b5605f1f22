"""One classifier object shared by several threads, as a server shares it: every call gives exactly the answer it
gives alone, on both runtimes, including the first calls that race to load the encoder."""

import threading
from pathlib import Path

import numpy as np
import pytest

from pipeline.predict import load_classifier

from conftest import sentiment_rows, train_once, write_csv

THREADS, ROUNDS = 8, 6


@pytest.fixture(scope="module")
def projects(tmp_path_factory):
    """A folder per runtime, each with the training data."""
    folders = {}
    for runtime in ("openvino", "torch"):
        folders[runtime] = tmp_path_factory.mktemp(f"threads-{runtime}")
        write_csv(folders[runtime] / "train.csv", sentiment_rows(120))
    return folders


@pytest.fixture(params=["openvino", "torch"])
def run(request, projects, tiny_bert, run_cli, monkeypatch) -> Path:
    """A trained fp32 run whose vectors the given runtime made (and predict therefore uses)."""
    if request.param == "openvino":
        pytest.importorskip("openvino")
    args = ("--dtype", "fp32", "--pooling", "mean", "--runtime", request.param)
    train_once(projects[request.param], run_cli, monkeypatch, tiny_bert, "train.csv", args)
    path = next(Path("artifacts/runs").glob("*/mean/logreg"))
    assert load_classifier(path, "cpu").settings.runtime == request.param
    return path


def hammer(call, groups: list[list[str]]) -> tuple[list[str], list[tuple[int, np.ndarray]]]:
    """Every group from its own thread, ROUNDS times, all started together; the errors and (group, answer) pairs."""
    errors, answers, start = [], [], threading.Barrier(len(groups))

    def work(k: int) -> None:
        start.wait(timeout=30)
        for _ in range(ROUNDS):
            try:
                answers.append((k, call(groups[k])))
            except Exception as exc:  # the defect this file guards against: record it, do not kill the thread
                errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(groups))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a call never returned"
    return errors, answers


def test_concurrent_calls_give_the_sequential_answers(run):
    texts = [text for text, _ in sentiment_rows(240, seed=3)]
    groups = [texts[k::THREADS] for k in range(THREADS)]  # different texts and lengths per thread
    shared = load_classifier(run, "cpu")
    want = [shared.predict_proba(g) for g in groups]  # one after another, before any thread
    errors, answers = hammer(shared.predict_proba, groups)
    assert errors == [], errors[:3]
    assert len(answers) == THREADS * ROUNDS
    for k, got in answers:
        np.testing.assert_allclose(got, want[k], rtol=0, atol=1e-6)


def test_threads_racing_to_load_the_encoder_share_one(run):
    """The encoder loads on first use: threads that all call first must not each build one, nor fail."""
    texts = [text for text, _ in sentiment_rows(64, seed=4)]
    groups = [texts[k::THREADS] for k in range(THREADS)]
    fresh = load_classifier(run, "cpu")
    errors, answers = hammer(fresh.embed, groups)
    assert errors == [], errors[:3]
    alone = load_classifier(run, "cpu")
    for k, got in answers:
        np.testing.assert_allclose(got, alone.embed(groups[k]), rtol=0, atol=1e-6)
