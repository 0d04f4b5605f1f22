"""Third reliability round: outputs are what their names say, and nothing is written over that should not be
(the input, a run's own files, permissions), with export writing all of its files or none."""

# ruff: noqa: F811 - the fixtures imported from support.reliability are test parameters here

import decimal
import json
import os
import stat
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.paths import atomic_write_bytes

from conftest import sentiment_rows
from support.reliability import ADDED, one_line_error, project, run_folder, snapshot, ws  # noqa: F401 - fixtures and helpers

# --- writing over things ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [0o600, 0o640, 0o444 | 0o200])
def test_a_replaced_file_keeps_its_permissions(tmp_path, mode):
    path = tmp_path / "out.csv"
    path.write_text("old")
    os.chmod(path, mode)
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and stat.S_IMODE(path.stat().st_mode) == mode


def test_a_new_file_gets_the_umask_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "fresh.csv", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "fresh.csv").stat().st_mode) == 0o640


@pytest.mark.parametrize("output", ["new.csv", "./new.csv", "link.csv"])
def test_predict_refuses_to_write_over_its_input(ws, run_cli, output):
    if output == "link.csv" and not Path("link.csv").exists():
        Path("link.csv").symlink_to("new.csv")
    before = Path("new.csv").read_bytes()
    code, _, err = run_cli("predict", "--input", "new.csv", "--output", output, "--no-progress")
    assert "is the input file" in one_line_error(code, err) and "another file" in err
    assert Path("new.csv").read_bytes() == before


def test_a_labelled_predict_refuses_a_report_path_that_is_its_input(ws, run_cli):
    """`new.metrics.json` is a JSON Lines input; `--output new.csv` would put the report's metrics over it."""
    lines = [json.dumps({"text": t, "label": lab}) for t, lab in sentiment_rows(6)]
    Path("new.metrics.json").write_text("\n".join(lines) + "\n")
    before = Path("new.metrics.json").read_bytes()
    code, _, err = run_cli("predict", "--input", "new.metrics.json", "--label-col", "label", "--output", "new.csv",
                           "--no-progress")
    assert "is the input file" in one_line_error(code, err)
    assert Path("new.metrics.json").read_bytes() == before


# --- outputs that are not what they say -------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".txt", ".xlsx", ".csv.gz", ""])
def test_an_output_suffix_naming_no_format_is_refused_before_any_work(ws, run_cli, suffix):
    for args in (["--input", "new.csv"], ["--text", "good fun"]):
        code, _, err = run_cli("predict", *args, "--output", f"out/x{suffix}", "--no-progress")
        assert "names no format" in one_line_error(code, err) and ".parquet" in err
        assert not Path(f"out/x{suffix}").exists()


@pytest.mark.parametrize("suffix, reader", [
    (".tsv", lambda p: __import__("pandas").read_csv(p, sep="\t")),
    (".jsonl", lambda p: __import__("pandas").read_json(p, lines=True)),
    (".parquet", lambda p: __import__("pandas").read_parquet(p)),
    (".csv", lambda p: __import__("pandas").read_csv(p))])
def test_the_output_suffix_decides_the_format(ws, run_cli, suffix, reader):
    for args in (["--input", "new.csv"], ["--text", "good fun", "--text", "awful, dull"]):
        code, _, err = run_cli("predict", *args, "--output", f"out/f{suffix}", "--no-progress")
        assert code == 0, err
        got = reader(f"out/f{suffix}")
        assert list(got.columns)[-4:] == ADDED and len(got) == (12 if "--input" in args else 2)


def typed_table() -> pa.Table:
    rows = sentiment_rows(6, seed=5)
    n = len(rows)
    return pa.table({
        "text": pa.array([t for t, _ in rows], pa.large_string()),
        "label": pa.array([lab for _, lab in rows]).dictionary_encode(),
        "u8": pa.array(range(n), pa.uint8()), "u64": pa.array([2**64 - 1 - i for i in range(n)], pa.uint64()),
        "i16": pa.array(range(n), pa.int16()), "f32": pa.array([0.5] * n, pa.float32()),
        "when": pa.array([1_700_000_000_000_000_000 + i for i in range(n)], pa.timestamp("ns", tz="Europe/Paris")),
        "day": pa.array([19000 + i for i in range(n)], pa.date32()),
        "price": pa.array([decimal.Decimal(f"{i}.25") for i in range(n)], pa.decimal128(9, 2)),
        "tags": pa.array([[i, i + 1] for i in range(n)], pa.list_(pa.int32())),
        "blob": pa.array([b"\x00\xff"] * n, pa.binary()),
    })


def test_a_parquet_output_keeps_every_input_column_type_exactly(ws, run_cli):
    source = typed_table()
    pq.write_table(source, "typed.parquet")
    code, _, err = run_cli("predict", "--input", "typed.parquet", "--output", "out/typed.parquet", "--no-progress")
    assert code == 0, err
    got = pq.read_table("out/typed.parquet")
    assert got.schema.names == [*source.schema.names, *ADDED]
    for field in source.schema:
        assert got.schema.field(field.name).type == field.type, field.name
        assert got.column(field.name).to_pylist() == source.column(field.name).to_pylist(), field.name


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_typed_parquet_columns_also_write_as_text_formats(ws, run_cli, suffix):
    pq.write_table(typed_table().drop_columns(["tags", "blob"]), "typed-flat.parquet")
    code, _, err = run_cli("predict", "--input", "typed-flat.parquet", "--output", f"out/t{suffix}", "--no-progress")
    assert code == 0, err
    assert len(Path(f"out/t{suffix}").read_text().strip().splitlines()) == 6 + (suffix != ".jsonl")


@pytest.mark.parametrize("drop, suffix, named, fix", [("blob", ".csv", "tags", ".jsonl"),
                                                     ("tags", ".tsv", "blob", ".parquet"),
                                                     ("tags", ".jsonl", "blob", ".parquet")])
def test_values_a_text_format_cannot_hold_are_refused_naming_the_column(ws, run_cli, drop, suffix, named, fix):
    pq.write_table(typed_table().drop_columns([drop]), "typed-odd.parquet")
    code, _, err = run_cli("predict", "--input", "typed-odd.parquet", "--output", f"out/odd{suffix}", "--no-progress")
    assert named in one_line_error(code, err) and fix in err and not Path(f"out/odd{suffix}").exists()


# --- export: the run's own files, all or none, the way out ------------------------------------------------------


@pytest.mark.parametrize("name", ["run.onnx", "head.onnx", "metrics.onnx"])
def test_export_never_writes_over_the_runs_own_files(ws, run_cli, name):
    before = snapshot(run_folder())
    code, _, err = run_cli("export", "--run", run_folder(), "--out", run_folder() / name)
    assert "a file of the run or its model" in one_line_error(code, err) and "another name" in err
    assert snapshot(run_folder()) == before


@pytest.mark.parametrize("name", ["run.json", "metrics.json"])
def test_predict_never_writes_over_the_runs_own_files(ws, run_cli, name):
    """--output <run>/run.json is a JSON Lines output by its suffix: it would replace the run's record."""
    before = snapshot(run_folder())
    for args in (["--text", "good fun"], ["--input", "new.csv"]):
        code, _, err = run_cli("predict", "--run", run_folder(), *args, "--output", run_folder() / name,
                               "--no-progress")
        assert "a file of the run or its model" in one_line_error(code, err)
    assert snapshot(run_folder()) == before


def test_export_writes_all_of_its_files_or_none(ws, run_cli, monkeypatch):
    import pipeline.paths as paths

    code, _, err = run_cli("export", "--run", run_folder(), "--out", "exp/m.onnx")
    assert code == 0, err
    real = os.replace

    def failing(src, dst):
        if str(dst).endswith("m.json") and ".m.onnx." in str(src):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(paths.os, "replace", failing)
    Path("exp/m.tokenizer/extra.txt").write_text("kept as it was")
    before = snapshot(Path("exp"))
    code, _, err = run_cli("export", "--run", run_folder(), "--out", "exp/m.onnx")
    assert "No space left on device" in one_line_error(code, err) and "unchanged" in err
    assert snapshot(Path("exp")) == before, "the first export is whole, the second left nothing"
    assert sorted(p.name for p in Path("exp").iterdir()) == ["m.json", "m.onnx", "m.tokenizer"]


def test_a_fine_tuned_run_exports(ws, run_cli, tiny_bert):
    code, out, err = run_cli("finetune", "--data", "train.csv", "--model", tiny_bert, "--epochs", "1", "--lr", "1e-3",
                             "--max-length", "16", "--dtype", "fp32", "--no-progress", "--out", "ex-models",
                             "--runs", "ex-runs")
    assert code == 0, err
    run = out.splitlines()[-1].removeprefix("run: ")
    code, out, err = run_cli("export", "--run", run, "--out", "ft-export/m.onnx")
    assert code == 0, err
    meta = json.loads(Path("ft-export/m.json").read_text())
    assert meta["check"]["max_abs_diff"] <= 1e-4 and meta["head"].startswith("finetune-")
