"""Third reliability round: runs of different settings never share a folder, an edited run record is refused like
an edited head, and readers racing a writer see one whole version."""

# ruff: noqa: F811 - the fixtures imported from support.reliability are test parameters here

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import sentiment_rows, write_csv
from support.reliability import one_line_error, project, run_folder, tiny_record, ws  # noqa: F401 - fixtures and helpers

# --- records that change predictions without a check ------------------------------------------------------------


@pytest.mark.parametrize("field, value", [("pooling", "max"), ("label_names", ["positive", "negative"]),
                                          ("encoder.max_length", 8), ("head_classes", [1, 0])])
def test_an_edited_run_record_is_refused_like_an_edited_head(ws, run_cli, field, value):
    path = run_folder() / "run.json"
    original = path.read_bytes()
    record = json.loads(original)
    outer, _, inner = field.partition(".")
    if inner:
        record[outer][inner] = value
    else:
        record[outer] = value
    try:
        path.write_text(json.dumps(record, indent=2))
        code, _, err = run_cli("predict", "--run", run_folder(), "--text", "good fun")
        assert "was changed after training" in one_line_error(code, err) and "retrain" in err
    finally:
        path.write_bytes(original)
    assert run_cli("predict", "--run", run_folder(), "--text", "good fun")[0] == 0


def test_a_run_record_reformatted_but_unchanged_still_loads(ws, run_cli):
    path = run_folder() / "run.json"
    original = path.read_bytes()
    try:
        path.write_text(json.dumps(json.loads(original), sort_keys=True))  # another key order, no indentation
        code, out, err = run_cli("predict", "--run", run_folder(), "--text", "good fun")
        assert code == 0, err
    finally:
        path.write_bytes(original)


# --- races between commands -------------------------------------------------------------------------------------


def test_a_run_being_rewritten_is_read_old_or_new_never_as_damage(tmp_path):
    """A writer alternates two heads in one run folder while a reader loads it: every load succeeds, and its head is
    the one its record names."""
    import hashlib
    import threading

    from sklearn.linear_model import LogisticRegression

    from pipeline.train.runs import load_run, save_run

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 4)), np.arange(40) % 2
    heads = [LogisticRegression(C=c).fit(X, y) for c in (0.1, 10.0)]
    folder = tmp_path / "run"
    save_run(folder, heads[0], tiny_record())
    stop, errors = threading.Event(), []

    def writer() -> None:
        for i in range(30):
            save_run(folder, heads[i % 2], tiny_record())
        stop.set()

    thread = threading.Thread(target=writer)
    thread.start()
    loads = 0
    while not stop.is_set():
        try:
            run = load_run(folder)
            assert hashlib.sha256(run.head_bytes).hexdigest() == run.record.head_sha256
            loads += 1
        except Exception as exc:  # noqa: BLE001 - collected and shown below
            errors.append(repr(exc))
    thread.join()
    assert not errors and loads > 0, errors[:3]


def test_a_damaged_run_with_no_writer_is_still_refused_at_once(tmp_path):
    import time

    from sklearn.linear_model import LogisticRegression

    from pipeline.errors import PipelineError
    from pipeline.train.runs import load_run, save_run

    X, y = np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 2
    save_run(tmp_path / "run", LogisticRegression().fit(X, y), tiny_record())
    (tmp_path / "run" / "head.skops").write_bytes(b"damaged")
    started = time.perf_counter()
    with pytest.raises(PipelineError, match="does not match its recorded sha256"):
        load_run(tmp_path / "run")
    assert time.perf_counter() - started < 5


def test_a_cache_being_rewritten_is_read_when_the_writer_is_done(ws):
    """A reader that meets a shard replaced under an old manifest waits for the writer holding the cache's lock and
    reads the finished version."""
    import shutil
    import threading
    import time

    from pipeline.cache import EmbeddingCache, load_embeddings

    source = next(Path("artifacts/embeddings").glob("train__*"))
    cache = Path("race-cache")
    shutil.rmtree(cache, ignore_errors=True)
    shutil.copytree(source, cache)
    store = EmbeddingCache(cache)
    shard, good = store.shard_path(0), store.shard_path(0).read_bytes()
    want = load_embeddings(cache, "mean").X
    lock, held = store.lock(), threading.Event()

    def writer() -> None:
        with lock:
            shard.write_bytes(good[:-100] + b"x" * 100)  # half-way: the shard no longer matches the manifest
            held.set()
            time.sleep(1.5)
            shard.write_bytes(good)

    thread = threading.Thread(target=writer)
    thread.start()
    held.wait()
    got = load_embeddings(cache, "mean").X
    thread.join()
    np.testing.assert_array_equal(got, want)


# --- runs that share a folder -----------------------------------------------------------------------------------

FT = ["--method", "setfit", "--shots", "4", "--epochs", "1", "--max-length", "16", "--dtype", "fp32", "--no-progress"]


def test_fine_tunes_of_different_settings_never_share_a_run_folder_or_reuse_each_other(ws, run_cli, tiny_bert):
    outs = {}
    for lr in ("1e-3", "2e-3"):
        code, out, err = run_cli("finetune", "--data", "train.csv", "--model", tiny_bert, *FT, "--lr", lr,
                                 "--out", "ft-models", "--runs", "ft-runs")
        assert code == 0 and not out.startswith("reused"), err
        outs[lr] = out.splitlines()[-1].removeprefix("run: ")
    assert outs["1e-3"] != outs["2e-3"]
    for lr, run in outs.items():
        record = json.loads((Path(run) / "metrics.json").read_text())
        assert record["finetune"]["settings"]["lr"] == float(lr)
    csv_rows = (Path(outs["1e-3"]).parent.parent / "runs.csv").read_text().splitlines()
    assert len(csv_rows) == 3, "one runs.csv row per fine-tune"
    code, out, _ = run_cli("finetune", "--data", "train.csv", "--model", tiny_bert, *FT, "--lr", "1e-3",
                           "--out", "ft-models", "--runs", "ft-runs")
    assert code == 0 and out.startswith("reused") and out.splitlines()[-1] == f"run: {outs['1e-3']}"


def test_a_finished_fine_tune_whose_run_folder_was_replaced_is_not_reused(ws, run_cli, tiny_bert):
    """A fine-tune made before run folders carried the key (or copied over by hand) left another key's run in the
    folder its record names: the rerun computes again rather than report another fine-tune's scores."""
    args = ["finetune", "--data", "train.csv", "--model", tiny_bert, *FT, "--lr", "3e-3", "--out", "ft2-models",
            "--runs", "ft2-runs"]
    code, out, err = run_cli(*args)
    assert code == 0, err
    run = Path(out.splitlines()[-1].removeprefix("run: "))
    record = json.loads((run / "run.json").read_text())
    record["cache_key"] = "0" * 64
    from pipeline.train.runs import record_digest

    (run / "run.json").write_text(json.dumps({**record, "record_sha256": record_digest(record)}))
    code, out, err = run_cli(*args)
    assert code == 0 and not out.startswith("reused"), err


def test_train_with_another_seed_gets_its_own_run_folder(ws, run_cli, tiny_bert):
    rows = [(t, lab, "test" if i % 4 == 0 else "train") for i, (t, lab) in enumerate(sentiment_rows(60))]
    write_csv(Path("split.csv"), rows, ("text", "label", "split"))
    base = ["--data", "split.csv", "--split-col", "split", "--model", tiny_bert, "--no-progress"]
    assert run_cli("embed", *base, "--dtype", "fp32", "--out", "seed-emb")[0] == 0
    for seed in ("0", "1"):
        code, _, err = run_cli("train", *base, "--head", "mlp", "--seed", seed, "--embeddings", "seed-emb",
                               "--out", "seed-runs")
        assert code == 0, err
    folders = sorted(p.parent for p in Path("seed-runs").glob("*/mean/*/run.json"))
    assert [p.name for p in folders] == ["mlp", "mlp-seed1"]
    assert [json.loads((p / "run.json").read_text())["seed"] for p in folders] == [0, 1]


def test_two_commands_updating_one_runs_csv_keep_each_others_rows(tmp_path, monkeypatch):
    """Each writer reads runs.csv, adds its row and writes it back; without the lock, one row would be lost."""
    import threading

    from pipeline.train import report

    path = tmp_path / "runs.csv"
    real_write = report.write_csv

    def slow_write(*args):  # widen the window between a writer's read and its write
        import time

        time.sleep(0.2)
        real_write(*args)

    row = {f: 0 for f in report.SUMMARY_FIELDS}
    rows = [{**row, "pooling": "mean", "head": f"head{i}", "accuracy": 0.5} for i in range(4)]
    monkeypatch.setattr(report, "write_csv", slow_write)
    threads = [threading.Thread(target=report.update_summary, args=(path, [r])) for r in rows]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(line.split(",")[1] for line in path.read_text().splitlines()[1:]) == [f"head{i}" for i in range(4)]
