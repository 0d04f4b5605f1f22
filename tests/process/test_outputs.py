"""Outputs: the one file writer (devices, links, folders, a full disk), macro averages over the classes with test
rows, plots of bounded size, eval never replacing results with an empty run, and predict naming empty rows."""

import errno
import os
import stat
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.paths import atomic_write_bytes

from conftest import sentiment_rows, train_once, write_csv


def leftovers(folder: Path) -> list[Path]:
    return list(folder.rglob("*.tmp"))


# --- the writer --------------------------------------------------------------------------------------------------

def test_a_device_is_written_in_place_and_stays_a_device():
    atomic_write_bytes(Path("/dev/null"), b"data")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and not os.path.islink("/dev/null")


def test_a_fifo_is_written_in_place(tmp_path):
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    atomic_write_bytes(fifo, b"through the pipe")
    reader.join(10)
    assert got == [b"through the pipe"] and stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_symlink_stays_a_link_and_its_target_gets_the_data(tmp_path):
    target, link = tmp_path / "real" / "target.csv", tmp_path / "link.csv"
    target.parent.mkdir()
    target.write_bytes(b"old")
    link.symlink_to(target)
    atomic_write_bytes(link, b"new")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == b"new" and not leftovers(tmp_path)


def test_a_dangling_symlink_creates_its_target(tmp_path):
    link = tmp_path / "link.csv"
    link.symlink_to(tmp_path / "later.csv")
    atomic_write_bytes(link, b"made")
    assert link.is_symlink() and (tmp_path / "later.csv").read_bytes() == b"made"


def test_a_folder_is_refused_with_one_line(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(PipelineError, match="is a folder: give a file name") as info:
        atomic_write_bytes(tmp_path, b"data")
    assert "\n" not in str(info.value) and tmp_path.is_dir() and (tmp_path / "keep.txt").read_text() == "x"


@pytest.mark.parametrize("code, fix", [("ENOSPC", "free disk space"), ("EROFS", "read-only"),
                                       ("EACCES", "permissions")])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch, code, fix):
    path = tmp_path / "out" / "preds.csv"
    path.parent.mkdir()
    path.write_bytes(b"previous")

    def failing(fd):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(PipelineError) as info:
        atomic_write_bytes(path, b"new contents")
    message = str(info.value)
    assert "\n" not in message and str(path) in message and fix in message
    assert path.read_bytes() == b"previous" and not leftovers(tmp_path)


# --- macro averages over the classes with test rows ----------------------------------------------------------------

# Hand-computed: test rows hold classes a and b only; c occurs in train and is predicted once.
# a: TP 1, FP 1, FN 1 -> F1 2/4 = 0.5; b: TP 2, FP 0, FN 1 -> F1 4/5 = 0.8; macro over {a, b} = 0.65
# (averaging in c as 0 would give 0.4333).
Y_TRUE, Y_PRED = np.array([0, 0, 1, 1, 1]), np.array([0, 2, 1, 1, 0])


def test_macro_f1_covers_only_the_classes_with_test_rows():
    from pipeline.train.metrics import classification_metrics, macro_f1_batch

    m = classification_metrics(Y_TRUE, np.eye(3)[Y_PRED] * 0.9 + 0.1 / 3, ["a", "b", "c"], np.array([0, 1, 2, 2]))
    assert m.macro_f1 == pytest.approx(0.65)
    assert m.macro_classes == ["a", "b"] and m.no_test_rows == {"c": 1}
    assert macro_f1_batch(Y_TRUE, Y_PRED, [0, 1]) == pytest.approx(0.65)
    lo, hi = m.macro_f1_ci95
    assert 0 <= lo <= hi <= 1 and hi > 0.5
    assert m.majority_baseline.macro_f1 == pytest.approx((0 + 0) / 2)  # majority 'c' is never right
    assert m.weighted_f1 == pytest.approx((2 * 0.5 + 3 * 0.8) / 5)


def test_the_leaderboard_ranks_on_the_same_macro_f1():
    from pipeline.bench.leaderboard import rank

    fitted = SimpleNamespace(y_test=Y_TRUE, proba=np.eye(3)[Y_PRED], pooling="mean", head="logreg", seconds=0.1)
    [row] = rank([fitted], seed=0)
    assert row["macro_f1"] == pytest.approx(0.65) and row["f1_lo"] <= row["f1_hi"]


def test_the_report_lists_classes_without_test_rows_apart():
    from pipeline.train.metrics import classification_metrics
    from pipeline.train.report import per_class_lines

    m = classification_metrics(Y_TRUE, np.eye(3)[Y_PRED] * 0.9 + 0.1 / 3, ["a", "b", "c"], np.array([0, 1, 2, 2]))
    text = "\n".join(per_class_lines(m))
    assert "| a | 0.5000 |" in text and "| c |" not in text
    assert "No test rows: c (predicted 1 time). Macro averages cover the 2 classes with test rows only." in text


def test_all_classes_tested_keeps_the_old_numbers_and_tables():
    from pipeline.train.metrics import classification_metrics
    from pipeline.train.report import confusion_lines, per_class_lines

    y = np.array([0, 0, 1, 1, 2, 2])
    m = classification_metrics(y, np.eye(3)[[0, 1, 1, 1, 2, 0]] * 0.8 + 0.2 / 3, ["neg", "neu", "pos"], y)
    assert m.macro_f1 == pytest.approx((0.5 + 0.8 + 2 / 3) / 3) and m.no_test_rows == {}
    assert "No test rows" not in "\n".join(per_class_lines(m)) and len(per_class_lines(m)) == 6
    assert confusion_lines(m.confusion, ["neg", "neu", "pos"])[2:] == [
        "| | neg | neu | pos |", "|---|---|---|---|", "| neg | 1 | 1 | 0 |", "| neu | 0 | 2 | 0 |",
        "| pos | 1 | 0 | 1 |"]


# --- plots and tables of bounded size ------------------------------------------------------------------------------

def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def test_a_200_class_confusion_plot_is_small_and_fast(tmp_path):
    from pipeline.train.report import confusion_png

    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 5, size=(200, 200)).tolist()
    started = time.perf_counter()
    confusion_png(tmp_path / "confusion.png", matrix, [f"class {i}" for i in range(200)], "200 classes")
    width, height = png_size(tmp_path / "confusion.png")
    assert width < 2000 and height < 2000 and time.perf_counter() - started < 20


def test_a_few_classes_keep_the_small_labelled_plot(tmp_path):
    from pipeline.train.report import confusion_png

    confusion_png(tmp_path / "c.png", [[3, 1], [0, 4]], ["neg", "pos"], "two classes")
    assert png_size(tmp_path / "c.png") == (int(110 * 4.0), int(110 * 3.6))


def test_many_classes_get_top_confusions_instead_of_a_full_table():
    from pipeline.train.report import confusion_lines

    names = [f"k{i}" for i in range(40)]
    matrix = np.eye(40, dtype=int) * 5
    matrix[3, 7], matrix[10, 2] = 9, 4
    lines = confusion_lines(matrix.tolist(), names)
    assert "| k3 | k7 | 9 |" in lines and "| k10 | k2 | 4 |" in lines
    assert lines.index("| k3 | k7 | 9 |") < lines.index("| k10 | k2 | 4 |")
    assert len(lines) == 6 and max(len(line) for line in lines) < 200


# --- eval never replaces results with an empty run ------------------------------------------------------------------

def test_eval_on_a_folder_without_tasks_is_one_line_and_keeps_old_results(tmp_path, run_cli):
    old = tmp_path / "out" / "m"
    old.mkdir(parents=True)
    (old / "results.json").write_text('{"tasks": {"mr": {}}}')
    (old / "results.md").write_text("| mr | ... |\n")
    (tmp_path / "wrong").mkdir()
    (tmp_path / "wrong" / "notes.txt").write_text("x")
    code, out, err = run_cli("eval", "--data-dir", tmp_path / "wrong", "--out", tmp_path / "out", "--model", "m",
                             "--no-progress")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"no benchmark task found in {tmp_path / 'wrong'}" in err and "mr/" in err and "trec/" in err
    assert (old / "results.json").read_text() == '{"tasks": {"mr": {}}}'
    assert (old / "results.md").read_text() == "| mr | ... |\n"


def test_write_results_refuses_an_empty_record_and_writes_both_files(tmp_path):
    from pipeline.bench.senteval import EvalRecord, fold_summary, write_results

    (tmp_path / "results.json").write_text("old")
    with pytest.raises(PipelineError, match="no task was evaluated"):
        write_results(tmp_path, EvalRecord({"name": "m"}, {}, 0, {}, {}))
    assert (tmp_path / "results.json").read_text() == "old"
    fold = {"accuracy": 0.8, "macro_recall": 0.8, "n": 10, "C": 1.0}
    rec = EvalRecord({"name": "m"}, {}, 0, {"mr": {"protocol": "10-fold CV",
                                                  "poolings": {"mean": fold_summary([fold], 1.0)}}}, {})
    assert write_results(tmp_path, rec) == [tmp_path / "results.json", tmp_path / "results.md"]
    assert '"mr"' in (tmp_path / "results.json").read_text() and "| mr |" in (tmp_path / "results.md").read_text()


# --- predict -----------------------------------------------------------------------------------------------------

def test_one_empty_text_among_many_is_named_by_row():
    from pipeline.predict import predict_texts

    texts = [f"text {i}" for i in range(41)]
    texts[6] = "  "
    with pytest.raises(PipelineError) as info:
        predict_texts(None, None, texts)
    message = str(info.value)
    assert "1 empty or whitespace-only text(s) among 41" in message and "rows 7" in message
    assert "nothing to predict" not in message and "remove or fill them" in message
    with pytest.raises(PipelineError, match="nothing to predict"):
        predict_texts(None, None, [])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert):
    """A project folder with good.csv; `project` adds a cache and a run through the CLI (as in test_bad_inputs)."""
    root = tmp_path_factory.mktemp("outputs")
    (root / "in").mkdir()
    write_csv(root / "in" / "good.csv", sentiment_rows(40))
    return root


@pytest.fixture
def project(trained, tiny_bert, run_cli, monkeypatch):
    train_once(trained, run_cli, monkeypatch, tiny_bert, "in/good.csv", ("--pooling", "mean"), ("--head", "logreg"))
    return trained


def test_predict_to_dev_null_keeps_the_device(project, run_cli):
    code, out, err = run_cli("predict", "--input", "in/good.csv", "--output", "/dev/null")
    assert code == 0, err
    assert "wrote 40 predictions to /dev/null" in out
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and not os.path.islink("/dev/null")


def test_predict_and_train_on_a_full_disk_keep_earlier_files(project, run_cli, monkeypatch, tiny_bert):
    assert run_cli("predict", "--input", "in/good.csv", "--output", "out/preds.csv")[0] == 0
    before = Path("out/preds.csv").read_bytes()
    report = next(Path("artifacts/runs").rglob("report.md"))
    report_before = report.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    code, out, err = run_cli("predict", "--input", "in/good.csv", "--output", "out/preds.csv")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cannot write out/preds.csv" in err
    assert "free disk space" in err and Path("out/preds.csv").read_bytes() == before
    code, out, err = run_cli("train", "--data", "in/good.csv", "--model", tiny_bert, "--head", "logreg",
                             "--no-progress")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "No space left on device" in err
    assert report.read_bytes() == report_before
    assert not leftovers(project)


def test_report_csv_and_figures_go_through_the_same_writer(tmp_path):
    from pipeline.train import report

    with pytest.raises(PipelineError, match="is a folder"):
        report.write_csv(tmp_path, [{"a": 1}], ["a"])
    with pytest.raises(PipelineError, match="is a folder"):
        report.confusion_png(tmp_path, [[1, 0], [0, 1]], ["a", "b"], "t")


def test_bootstrap_in_blocks_gives_the_same_interval_as_one_draw(monkeypatch):
    from pipeline.train import metrics

    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 900)
    pred = np.where(rng.random(900) < 0.8, y, rng.integers(0, 3, 900))
    whole = metrics.bootstrap_ci(y, pred, metrics.accuracy_batch, seed=3)
    monkeypatch.setattr(metrics, "BLOCK_CELLS", 900 * 7 + 5)  # 7 resamples a block, the last one shorter
    assert metrics.bootstrap_ci(y, pred, metrics.accuracy_batch, seed=3) == whole
