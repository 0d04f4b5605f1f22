"""Third reliability round: odd but valid input, resource bombs and silent remotes end in a result or one line,
quickly, in-process and as the console script."""

# ruff: noqa: F811 - the fixtures imported from support.reliability are test parameters here

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import sentiment_rows
from support.reliability import closed_port, one_line_error, project, ws  # noqa: F401 - fixtures and helpers

# --- tracebacks on odd but valid input --------------------------------------------------------------------------

def jsonl(path: Path, odd_line: str, at: int) -> Path:
    lines = [json.dumps({"text": t, "label": lab}) for t, lab in sentiment_rows(20)]
    lines.insert(at, odd_line)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("at", [0, 5])
@pytest.mark.parametrize("odd, message", [
    ('{"text": "bad \\ud800 film", "label": "negative"}', "line {n} holds an unpaired UTF-16 surrogate escape"),
    ('{"text": "fine", "label": "positive", "meta": ' + "[" * 5000 + "]" * 5000 + "}", "line {n} nests arrays"),
])
def test_odd_but_valid_json_gets_one_line_naming_the_line(ws, run_cli, tiny_bert, odd, message, at):
    path = jsonl(Path(f"odd{at}.jsonl"), odd, at)
    for args in (["embed", "--data", path, "--model", tiny_bert], ["predict", "--input", path]):
        code, _, err = run_cli(*args, "--no-progress")
        assert message.format(n=at + 1) in one_line_error(code, err)


def test_paired_surrogate_escapes_and_moderate_nesting_read_fine(tmp_path):
    from pipeline.data import read_table

    path = jsonl(tmp_path / "ok.jsonl", '{"text": "smile \\ud83d\\ude00", "label": "positive", "meta": '
                 + "[" * 200 + "]" * 200 + "}", 3)
    assert read_table(path)["text"][3] == "smile \U0001F600"


# --- resource bombs ---------------------------------------------------------------------------------------------

def test_a_parquet_file_that_decodes_beyond_memory_is_refused_before_decoding(ws, run_cli, tiny_bert, monkeypatch):
    """200 rows repeating one 1 MB text: a few kB on disk (dictionary + compression), 200 MB decoded. With 50 MB
    available the read is refused in one line before a value is decoded; the same budget reads a normal file."""
    import pipeline.data.budget as budget

    rows = sentiment_rows(200)
    pq.write_table(pa.table({"text": ["good " * 200_000] * 200, "label": [lab for _, lab in rows]}), "bomb.parquet")
    pq.write_table(pa.table({"text": [t for t, _ in rows], "label": [lab for _, lab in rows]}), "fine.parquet")
    assert Path("bomb.parquet").stat().st_size < 200_000
    monkeypatch.setattr(budget, "available_memory", lambda: 50 * 2**20)
    for args in (["embed", "--data", "bomb.parquet", "--model", tiny_bert], ["predict", "--input", "bomb.parquet"]):
        code, _, err = run_cli(*args, "--no-progress")
        assert "would take about 0.2 GiB of memory once read (191 MiB decoded)" in one_line_error(code, err)
        assert "split it" in err
    from pipeline.data import read_table

    assert len(read_table(Path("fine.parquet"))["text"]) == 200


def test_the_footer_alone_refuses_a_file_larger_than_memory(tmp_path, monkeypatch):
    import pipeline.data.budget as budget
    from pipeline.data import read_table
    from pipeline.errors import PipelineError

    pq.write_table(pa.table({"text": [f"text {i}" for i in range(1000)], "label": ["a", "b"] * 500}),
                   tmp_path / "t.parquet", use_dictionary=False)
    monkeypatch.setattr(budget, "available_memory", lambda: 1000)
    monkeypatch.setattr(pq, "read_table", lambda *a, **k: pytest.fail("pages read before the footer check"))
    with pytest.raises(PipelineError, match="uncompressed"):
        read_table(tmp_path / "t.parquet")


@pytest.mark.parametrize("edit, message", [
    ({"num_hidden_layers": 10**6}, "describes a model of about"),
    ({"vocab_size": 10**12}, "vocab_size=1000000000000"),
    ({"hidden_size": 30, "num_attention_heads": 4}, "hidden_size=30, not a multiple of num_attention_heads=4"),
    ({"num_attention_heads": 0}, "num_attention_heads=0, which must be a positive whole number"),
    ({"intermediate_size": "big"}, "intermediate_size='big'"),
])
def test_a_model_config_that_cannot_be_built_is_refused_before_it_is_allocated(ws, run_cli, tiny_bert, edit,
                                                                                message):
    import shutil
    import time

    folder = Path(f"bad-config-{len(list(Path('.').glob('bad-config-*')))}")
    shutil.copytree(tiny_bert, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **edit}))
    started = time.perf_counter()
    code, _, err = run_cli("embed", "--data", "train.csv", "--model", folder, "--no-progress")
    assert message in one_line_error(code, err) and "config.json" in err
    assert time.perf_counter() - started < 60


def test_the_default_model_sized_configs_fit():
    from pipeline.embed.config_budget import check_config_size, model_parameters

    minilm = {"vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6, "intermediate_size": 1536,
              "max_position_embeddings": 512, "type_vocab_size": 2, "num_attention_heads": 12}
    assert 22_000_000 < model_parameters(minilm) < 23_000_000  # all-MiniLM-L6-v2 has 22.7M parameters
    check_config_size("minilm", minilm)


# --- waiting on nothing -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("address, message", [
    ("127.0.0.1:{port}", "cannot reach the Ray cluster at 127.0.0.1:{port}"),
    ("ray://127.0.0.1:{port}", "cannot reach the Ray cluster at ray://127.0.0.1:{port}"),
    ("no-port-here", "is not host:port"),
])
def test_an_unreachable_ray_address_fails_in_seconds_with_one_line(ws, run_cli, tiny_bert, address, message):
    import time

    pytest.importorskip("ray")
    port = closed_port()
    started = time.perf_counter()
    for args in (["embed", "--data", "train.csv", "--model", tiny_bert], ["predict", "--input", "new.csv"]):
        code, _, err = run_cli(*args, "--engine", "ray", "--ray-address", address.format(port=port), "--no-progress")
        assert message.format(port=port) in one_line_error(code, err) and "--ray-address" in err
    assert time.perf_counter() - started < 30


def test_an_address_that_never_answers_times_out_within_the_limit(monkeypatch):
    import socket
    import time

    from pipeline.embed import remote
    from pipeline.errors import PipelineError

    def silent(address, timeout):
        time.sleep(timeout)
        raise TimeoutError

    monkeypatch.setattr(socket, "create_connection", silent)
    started = time.perf_counter()
    with pytest.raises(PipelineError, match=r"no answer within 0.2 s"):
        remote.check_ray_address("10.255.255.1:6379", timeout=0.2)
    assert time.perf_counter() - started < 2


def test_a_hub_that_does_not_answer_falls_back_to_the_local_cache_at_once(monkeypatch):
    import huggingface_hub

    from pipeline.embed.sources import files

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **kw: calls.append(kw) or "/nowhere")
    files.from_hub("someorg/some-model")
    assert calls[0]["local_files_only"] is True


# --- as a process: what only the console script shows -----------------------------------------------------------

@pytest.mark.parametrize("case", ["ray", "output-is-input", "odd-suffix"])
def test_the_console_script_fails_fast_with_one_line(ws, tiny_bert, case):
    """The installed console script (its fast exit, Ray's native retries on stderr): exit 2, one line, in seconds."""
    import subprocess
    import sys
    import time

    pytest.importorskip("ray")
    script = Path(sys.executable).parent / "bert-pipeline"
    args = {"ray": ["embed", "--data", "train.csv", "--model", str(tiny_bert), "--engine", "ray", "--ray-address",
                    f"127.0.0.1:{closed_port()}"],
            "output-is-input": ["predict", "--input", "new.csv", "--output", "new.csv"],
            "odd-suffix": ["predict", "--text", "good fun", "--output", "x.xlsx"]}[case]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    done = subprocess.run([str(script), *args, "--no-progress"], capture_output=True, text=True, timeout=120,
                          env=env)
    assert time.perf_counter() - started < 60
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr
