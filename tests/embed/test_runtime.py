"""The runtimes: which one 'auto' picks, that OpenVINO's vectors are PyTorch's, that each has its own cache, and that
the converted graph is kept, checked and reused."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from pipeline.cache import EncoderSettings, ModelIdentity, cache_key
from pipeline.data import load_dataset
from pipeline.embed import device as dev
from pipeline.embed import encoder as encoder_module
from pipeline.embed import runtimes
from pipeline.embed.encoder import Encoder, load_encoder
from pipeline.embed.pooling import POOLINGS
from pipeline.embed.runtimes import kept_graphs, openvino_graph
from pipeline.embed.settings import EncoderOptions
from pipeline.embed.sources import resolve_model
from pipeline.embed.stage import embed_dataset, embed_texts
from pipeline.errors import PipelineError

from conftest import sentiment_rows, write_csv, write_tiny_bert

TEXTS = ["the movie was great fun", "bad", "a very very slow and dull film, but the actor is witty"]


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A graph cache of this test's own, so conversions and reuse are counted from empty."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "bert-pipeline" / "openvino"


@pytest.fixture
def conversions(monkeypatch):
    calls = []
    original = openvino_graph._convert

    def counting(encoder, names):
        calls.append(encoder.ref.name)
        return original(encoder, names)

    monkeypatch.setattr(openvino_graph, "_convert", counting)
    return calls


def load(folder, runtime="auto", dtype="fp32") -> Encoder:
    return load_encoder(str(folder), EncoderOptions(max_length=32, device="cpu", dtype=dtype, runtime=runtime))


@pytest.mark.parametrize(("device", "dtype", "training", "want"), [
    ("cpu", "fp32", False, "openvino"), ("cpu", "fp32", True, "torch"),
    (torch.device("cpu"), torch.float32, False, "openvino"), ("cuda:1", "bf16", False, "torch"),
    ("cpu", "fp16", False, "torch")])
def test_auto_takes_openvino_for_cpu_inference_only(device, dtype, training, want):
    assert runtimes.pick_runtime("auto", device, dtype, training) == want


def test_auto_bf16_on_cpu_follows_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: False)
    assert runtimes.pick_runtime("auto", "cpu", "bf16") == "torch"
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: True)
    assert runtimes.pick_runtime("auto", "cpu", "bf16") == "openvino"


def test_auto_falls_back_to_torch_without_openvino_and_asking_for_it_says_how_to_install(monkeypatch):
    monkeypatch.setattr(runtimes, "find_spec", lambda name: None)
    assert runtimes.pick_runtime("auto", "cpu", "fp32") == "torch"
    with pytest.raises(PipelineError, match="pip install openvino"):
        runtimes.pick_runtime("openvino", "cpu", "fp32")


@pytest.mark.parametrize(("requested", "device", "training", "message"), [
    ("onnx", "cpu", False, "unknown --runtime 'onnx'"), ("openvino", "cuda", False, "not cuda bf16"),
    ("openvino", "cpu", True, "not training")])
def test_a_runtime_that_cannot_run_is_refused_with_the_fix(requested, device, training, message):
    with pytest.raises(PipelineError, match=message) as caught:
        runtimes.pick_runtime(requested, device, "bf16" if device == "cuda" else "fp32", training)
    assert "\n" not in str(caught.value)


def test_auto_device_asks_torch_only_where_a_gpu_driver_is(monkeypatch, tmp_path):
    """No GPU driver node on Linux: the CPU, decided without importing torch; with one, torch is asked."""
    monkeypatch.setattr(dev.platform, "system", lambda: "Linux")
    monkeypatch.setattr(dev, "GPU_NODES", (tmp_path / "nvidiactl",))
    monkeypatch.setattr(dev, "PCI_DEVICES", tmp_path / "pci")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    network = tmp_path / "pci" / "0000:00:03.0"
    network.mkdir(parents=True)
    (network / "vendor").write_text("0x10de\n")
    (network / "class").write_text("0x020000\n")  # an NVIDIA network card is not a GPU
    assert dev.pick_device_name("auto") == "cpu" and dev.pick_device_name("cpu") == "cpu"
    (network / "class").write_text("0x030200\n")  # a GPU whose driver has not loaded yet
    assert dev.pick_device_name("auto") == "cuda"
    (network / "vendor").write_text("0x8086\n")
    assert dev.pick_device_name("auto") == "cpu"
    (tmp_path / "nvidiactl").touch()
    assert dev.pick_device_name("auto") == "cuda" and dev.pick_dtype_name("auto", "cuda") == "bf16"


def test_runtime_here_keeps_a_runs_runtime_only_where_it_runs(monkeypatch):
    assert runtimes.runtime_here("openvino", "cpu", "fp32") == "openvino"
    assert runtimes.runtime_here("torch", "cpu", "fp32") == "torch"
    monkeypatch.setattr(runtimes, "find_spec", lambda name: None)  # a machine without OpenVINO
    assert runtimes.runtime_here("openvino", "cpu", "fp32") == "torch"


def test_openvino_gives_pytorchs_vectors_for_every_pooling(tiny_bert):
    torch_run, ov_run = load(tiny_bert, "torch"), load(tiny_bert, "openvino")
    want, got = embed_texts(torch_run, TEXTS, list(POOLINGS)), embed_texts(ov_run, TEXTS, list(POOLINGS))
    for name in POOLINGS:
        np.testing.assert_allclose(got[name], want[name], atol=2e-5, rtol=1e-4, err_msg=name)


def test_a_few_texts_wanted_now_fill_every_stream_one_text_runs_on_every_core_and_vectors_stay(tiny_bert, monkeypatch):
    """Predict's and the server's few texts run in short batches, at least one per OpenVINO stream; one text runs as
    one request on every core (the LATENCY hint); the cached stage's batches stay as they were; same vectors."""
    from pipeline.embed.runtimes import openvino_graph

    ov_run, texts = load(tiny_bert, "openvino"), TEXTS * 4
    seen = []
    monkeypatch.setattr(openvino_graph.Graph, "pool", lambda self, ids, poolings, batches, put, pool=
                        openvino_graph.Graph.pool: seen.append((self, [len(b) for b in batches])) or
                        pool(self, ids, poolings, batches, put))
    soon = embed_texts(ov_run, texts, ["mean", "max"])
    plain = ov_run.encode(ov_run.read(texts), ["mean", "max"])
    one = embed_texts(ov_run, texts[:1], ["mean"])
    graphs = ov_run.runtime.graphs
    streams = len(graphs["THROUGHPUT"].queue)
    assert [graph for graph, _ in seen] == [graphs["THROUGHPUT"], graphs["THROUGHPUT"], graphs["LATENCY"]]
    assert len(seen[1][1]) == 1 and len(seen[0][1]) >= streams > 1 and seen[2][1] == [1]
    assert len(graphs["LATENCY"].queue) == 1
    for name in plain:
        np.testing.assert_allclose(soon[name], plain[name], atol=1e-6, rtol=0, err_msg=name)
    np.testing.assert_allclose(one["mean"], plain["mean"][:1], atol=1e-6, rtol=0)


def test_a_process_given_a_number_of_threads_runs_its_graph_on_that_many_unpinned(tiny_bert, monkeypatch):
    """OMP_NUM_THREADS (Ray sets it to an actor's CPUs) caps OpenVINO as it caps torch: a 1-CPU actor used every core
    of its node, so a second actor on another local node gained nothing."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ov_run = load(tiny_bert, "openvino")
    embed_texts(ov_run, TEXTS, ["mean"])
    compiled = ov_run.runtime.graphs["THROUGHPUT"].queue
    assert len(compiled) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "not a number")
    assert dev.cpu_threads_cap() is None


@pytest.mark.skipif(not dev.cpu_has_native_bf16(), reason="bf16 on CPU needs AVX512-BF16 or AMX")
def test_openvino_in_bf16_stays_within_bf16_of_pytorch(tiny_bert):
    fp32 = embed_texts(load(tiny_bert, "torch"), TEXTS, ["mean"])["mean"]
    bf16 = embed_texts(load(tiny_bert, "openvino", "bf16"), TEXTS, ["mean"])["mean"]
    cosine = (fp32 * bf16).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert cosine.min() > 0.999


def test_each_runtime_has_its_own_cache_and_the_manifest_says_which(tiny_bert, tmp_path):
    toy = load_dataset(write_csv(tmp_path / "toy.csv", sentiment_rows(40)))
    a = embed_dataset(toy, load(tiny_bert, "torch"), ["mean"], tmp_path / "emb", progress=False)
    b = embed_dataset(toy, load(tiny_bert, "openvino"), ["mean"], tmp_path / "emb", progress=False)
    assert a.path != b.path and b.computed_rows == len(toy)
    assert [r.manifest.encoder.runtime for r in (a, b)] == ["torch", "openvino"]
    assert json.loads((b.path / "_manifest.json").read_text())["encoder"]["runtime"] == "openvino"


def test_records_from_before_runtimes_read_as_torch_and_keep_their_key():
    identity = ModelIdentity("m", "local", None, "w" * 64, "t" * 64)
    old = {"model": identity.__dict__, "max_length": 128, "dtype": "fp32"}
    settings = EncoderSettings.from_json(old)
    assert settings.runtime == "torch"
    assert cache_key(settings, "f") != cache_key(EncoderSettings(identity, 128, "fp32", "openvino"), "f")


def test_the_converted_graph_is_kept_and_reused_by_the_next_run(tiny_bert, own_cache, conversions):
    first = embed_texts(load(tiny_bert), TEXTS, ["mean"])["mean"]
    second = embed_texts(load(tiny_bert), TEXTS, ["mean"])["mean"]
    assert len(conversions) == 1
    [folder] = list(own_cache.iterdir())
    assert (folder / "model.bin").is_file() and any((folder / "compiled").iterdir()), "graph and compiled form kept"
    np.testing.assert_array_equal(first, second)


def test_with_a_kept_graph_the_torch_model_loads_only_when_asked_for(tiny_bert, own_cache, monkeypatch):
    want = embed_texts(load(tiny_bert), TEXTS, list(POOLINGS))
    loads = []
    for name in ("load_model", "load_tokenizer", "load_config"):
        original = getattr(encoder_module, name)
        monkeypatch.setattr(encoder_module, name, lambda *a, f=original, n=name: loads.append(n) or f(*a))
    again = load(tiny_bert)
    got = embed_texts(again, TEXTS, list(POOLINGS))
    assert loads == [] and again.has_pooler and again.num_layers == 2
    for name in POOLINGS:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    with pytest.raises(PipelineError, match="out of range: use 2..128"):
        # the position limit comes from the kept graph
        load_encoder(str(tiny_bert), EncoderOptions(max_length=500, device="cpu", dtype="fp32"))
    assert again.model.config.hidden_size == 32 and loads[-1] == "load_model"  # asked for: now it loads


def test_a_start_up_with_a_kept_graph_imports_neither_torch_nor_transformers(tiny_bert, own_cache):
    """What makes a CPU start-up fast: about 2 s of imports are not paid when the graph is kept."""
    want = embed_texts(load(tiny_bert), TEXTS, ["mean"])["mean"]
    code = ("import sys, numpy as np; from pipeline.embed.encoder import load_encoder; "
            "from pipeline.embed.settings import EncoderOptions; from pipeline.embed.stage import embed_texts; "
            f"e = load_encoder({str(tiny_bert)!r}, EncoderOptions(max_length=32, device='cpu', dtype='fp32')); "
            f"np.save(sys.argv[1], embed_texts(e, {TEXTS!r}, ['mean'])['mean']); "
            "print(e.config.runtime, *[m for m in ('torch', 'transformers', 'sklearn') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code, str(own_cache.parent / "v.npy")], capture_output=True,
                         text=True, check=True)
    assert out.stdout.split() == ["openvino"]
    np.testing.assert_array_equal(np.load(own_cache.parent / "v.npy"), want)


@pytest.mark.parametrize("kept", [False, True], ids=["converted", "kept"])
def test_tokenize_gives_the_ids_and_truncation_of_transformers_tokenizer(tiny_bert, own_cache, kept):
    if kept:
        embed_texts(load(tiny_bert), TEXTS, ["mean"])
    encoder = load(tiny_bert)
    texts = [*TEXTS, " ".join(["the movie"] * 40), "Naïve CAFÉ, déjà-vu!  tabs\tand 🙂 emoji"]
    want = encoder.tokenizer(texts, truncation=True, max_length=encoder.max_length)
    got = encoder.tokenize(texts)
    assert got.input_ids == want["input_ids"]
    assert got.truncated.tolist() == [len(e.overflowing) > 0 for e in want.encodings]
    assert got.truncated.sum() == 1


def test_a_damaged_kept_graph_is_converted_again_not_used(tiny_bert, own_cache, conversions):
    want = embed_texts(load(tiny_bert), TEXTS, ["mean"])["mean"]
    weights = next(own_cache.iterdir()) / "model.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    np.testing.assert_array_equal(embed_texts(load(tiny_bert), TEXTS, ["mean"])["mean"], want)
    assert len(conversions) == 2


def test_an_error_in_a_batch_is_one_line_and_the_next_call_works(tiny_bert):
    class Broken:
        def update(self, n):
            raise ValueError("boom")

    encoder = load(tiny_bert)
    tokens = encoder.tokenize(TEXTS)
    with pytest.raises(PipelineError, match=r"^OpenVINO failed on a batch \(ValueError: boom\): use --runtime torch$"):
        encoder.encode(tokens, ["mean"], Broken().update)
    want = embed_texts(load(tiny_bert, "torch"), TEXTS, ["mean"])["mean"]
    np.testing.assert_allclose(embed_texts(encoder, TEXTS, ["mean"])["mean"], want, atol=2e-5, rtol=1e-4)


def test_a_graph_another_run_kept_meanwhile_is_used_not_replaced(tiny_bert, own_cache, conversions):
    encoder = load(tiny_bert)
    first = embed_texts(encoder, TEXTS, ["mean"])["mean"]
    [folder] = list(own_cache.iterdir())
    before = (folder / "graph.json").stat().st_ino
    other = kept_graphs.GraphInfo(["mean"], encoder.spec)
    kept = kept_graphs.keep(openvino_graph._convert(encoder, ["mean"]), "{}", folder, other)
    assert kept.folder == folder and kept.info.names != ["mean"] and (folder / "graph.json").stat().st_ino == before
    assert not list(own_cache.glob(".tmp-*"))
    np.testing.assert_array_equal(embed_texts(load(tiny_bert), TEXTS, ["mean"])["mean"], first)


def test_only_the_most_recently_used_graphs_are_kept(tmp_path, own_cache, monkeypatch):
    monkeypatch.setattr(kept_graphs, "KEPT_GRAPHS", 2)
    for seed in range(3):
        embed_texts(load(write_tiny_bert(tmp_path / f"m{seed}", seed=seed)), TEXTS[:1], ["mean"])
    assert len(list(own_cache.iterdir())) == 2


def test_without_a_cache_folder_the_graph_is_converted_in_memory(tiny_bert, monkeypatch, conversions):
    monkeypatch.setattr(kept_graphs, "user_cache_dir", lambda: None)
    embed_texts(load(tiny_bert), TEXTS, ["mean"])
    assert len(conversions) == 1


def test_split_special_tokens_holds_on_both_paths_and_added_tokens_change_the_identity(tiny_bert, own_cache, tmp_path):
    """Two tokenizer settings that live outside tokenizer.json: both reach tokenize(), with or without a kept graph."""
    import shutil

    folder = shutil.copytree(tiny_bert, tmp_path / "split")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "split_special_tokens": True}))
    texts = ["the [MASK] movie [SEP] was fun"]
    for _ in ("converted", "kept"):
        encoder = load(folder)
        embed_texts(encoder, texts, ["mean"])
        assert encoder.tokenize(texts).input_ids == encoder.tokenizer(texts)["input_ids"]
    assert encoder.tokenize(texts).input_ids != load(tiny_bert).tokenize(texts).input_ids
    before = resolve_model(str(folder)).identity.tokenizer_sha256
    (folder / "added_tokens.json").write_text(json.dumps({"zzqx": 500}))
    assert resolve_model(str(folder)).identity.tokenizer_sha256 != before


def test_a_tokenizer_with_python_parts_runs_but_its_graph_is_not_kept(tiny_bert, own_cache, conversions):
    """RoFormer's tokenizer has a pre-tokenizer in Python: one tokenizer.json cannot hold it, so nothing is kept."""
    from tokenizers import NormalizedString, PreTokenizedString
    from tokenizers.pre_tokenizers import PreTokenizer

    class OnSpaces:
        def pre_tokenize(self, pretok: PreTokenizedString) -> None:
            pretok.split(lambda i, text: NormalizedString.split(text, " ", "removed"))

    encoder, reference = load(tiny_bert), load(tiny_bert, "torch")
    for each in (encoder, reference):
        each.tokenizer.backend_tokenizer.pre_tokenizer = PreTokenizer.custom(OnSpaces())
    assert encoder.tokenize(TEXTS).input_ids == encoder.tokenizer(TEXTS)["input_ids"]
    want = embed_texts(reference, TEXTS, ["mean"])["mean"]
    np.testing.assert_allclose(embed_texts(encoder, TEXTS, ["mean"])["mean"], want, atol=2e-5, rtol=1e-4)
    assert len(conversions) == 1 and not (own_cache.exists() and any(own_cache.iterdir()))
