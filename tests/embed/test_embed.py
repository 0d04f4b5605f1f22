"""The embed stage on a tiny random BERT: poolings, one forward pass, batching independence, cache and resume."""

import json

import numpy as np
import pytest
import torch

from pipeline.cache import cache_key, load_embeddings
from pipeline.data import load_dataset
from pipeline.embed.encoder import load_encoder
from pipeline.embed.pooling import POOLINGS, parse_poolings
from pipeline.embed.settings import EncoderOptions
from pipeline.embed.sources import resolve_model
from pipeline.embed.stage import embed_dataset, embed_texts
from pipeline.errors import PipelineError

from conftest import sentiment_rows, write_csv, write_tiny_bert

ALL = list(POOLINGS)


@pytest.fixture(scope="module", params=["torch", "openvino"])
def encoder(tiny_bert, request):
    """Every test of this module runs on both runtimes: they must give the same vectors."""
    options = EncoderOptions(max_length=16, device="cpu", dtype="fp32", batch_tokens=64, runtime=request.param)
    return load_encoder(str(tiny_bert), options)


@pytest.fixture
def toy(tmp_path):
    return load_dataset(write_csv(tmp_path / "toy.csv", sentiment_rows(60)))


def reference(encoder, text):
    """The model run on one text alone, with no padding at all."""
    ids = encoder.tokenize([text]).input_ids
    with torch.inference_mode():
        out = encoder.model(input_ids=torch.tensor(ids), output_hidden_states=True)
    return out


def test_poolings_match_their_definitions_on_an_unpadded_text(encoder):
    text = "the movie was great fun"
    out = reference(encoder, text)
    vec = embed_texts(encoder, [text], ALL)
    hs = out.hidden_states
    np.testing.assert_allclose(vec["cls"][0], out.last_hidden_state[0, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(vec["mean"][0], out.last_hidden_state[0].mean(0).numpy(), atol=1e-6)
    np.testing.assert_allclose(vec["max"][0], out.last_hidden_state[0].max(0).values.numpy(), atol=1e-6)
    np.testing.assert_allclose(vec["pooler"][0], out.pooler_output[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(vec["last4_mean"][0], torch.stack(hs[-4:]).mean(0)[0].mean(0).numpy(), atol=1e-6)
    np.testing.assert_allclose(vec["first_last_mean"][0], ((hs[1][0].mean(0) + hs[-1][0].mean(0)) / 2).numpy(),
                               atol=1e-6)
    assert vec["layers"].shape == (1, 3, 32)
    np.testing.assert_allclose(vec["layers"][0, 2], vec["mean"][0], atol=1e-6)


def test_a_vector_does_not_depend_on_its_batch_mates(encoder):
    short = "good"
    alone = embed_texts(encoder, [short], ALL)
    mixed = embed_texts(encoder, [short, "the plot was very very slow and the actor was dull and boring " * 3,
                                  "fine film"], ALL)
    for name in ALL:
        np.testing.assert_allclose(mixed[name][0], alone[name][0], atol=1e-5, err_msg=name)


def test_all_poolings_come_from_one_forward_pass_per_batch(encoder, monkeypatch):
    if encoder.config.runtime != "torch":
        pytest.skip("one compiled graph per batch by construction; this counts PyTorch forward calls")
    calls = []
    original = encoder.model.forward

    def counting(*args, **kwargs):
        calls.append(kwargs.get("output_hidden_states"))
        return original(*args, **kwargs)

    monkeypatch.setattr(encoder.model, "forward", counting)
    texts = ["good movie", "bad film", "fine"]
    embed_texts(encoder, texts, ALL)
    assert len(calls) == len(encoder.batches(encoder.tokenize(texts).lengths)) == 1
    assert calls == [True]
    calls.clear()
    embed_texts(encoder, texts, ["cls", "mean", "max", "pooler"])
    assert calls == [False], "hidden states of every layer are asked for only when a pooling needs them"


def test_batches_respect_the_token_budget_and_keep_input_order(encoder):
    texts = [("good " * n).strip() for n in (1, 9, 3, 12, 2, 7)]
    tokens = encoder.tokenize(texts)
    groups = encoder.batches(tokens.lengths)
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(texts)))
    assert all(len(g) * tokens.lengths[g].max() <= encoder.batch_tokens for g in groups)
    vec = embed_texts(encoder, texts, ["mean"])["mean"]
    for i, text in enumerate(texts):
        np.testing.assert_allclose(vec[i], embed_texts(encoder, [text], ["mean"])["mean"][0], atol=1e-5)


def test_truncation_is_counted(encoder):
    tokens = encoder.tokenize(["good " * 40, "good"])
    assert tokens.truncated.tolist() == [True, False]
    assert tokens.lengths.tolist() == [16, 3]


def test_unknown_pooling_lists_the_known_ones():
    with pytest.raises(PipelineError, match="unknown pooling 'meen'.*cls, mean"):
        parse_poolings("cls,meen")
    assert parse_poolings("all") == ALL


def test_cache_round_trip_and_manifest(encoder, toy, tmp_path):
    result = embed_dataset(toy, encoder, ALL, tmp_path / "emb", shard_rows=25, progress=False)
    manifest = json.loads((result.path / "_manifest.json").read_text())
    assert manifest["rows"] == 60 and len(manifest["shards"]) == 3
    assert manifest["poolings"]["layers"]["shape"] == [3, 32]
    emb = load_embeddings(result.path, "mean")
    assert emb.X.shape == (60, 32) and emb.X.dtype == np.float32
    assert emb.ids.tolist() == toy.ids and (emb.y == toy.labels).all()
    np.testing.assert_allclose(emb.X, embed_texts(encoder, toy.texts, ["mean"])["mean"], atol=1e-5)
    np.testing.assert_allclose(load_embeddings(result.path, "layer2").X, emb.X, atol=1e-6)
    test = load_embeddings(result.path, "cls", split="test")
    assert set(test.splits) == {"test"} and len(test.y) == (toy.splits == "test").sum()
    import pandas as pd

    frame = pd.read_parquet(result.path)
    assert len(frame) == 60 and len(frame["emb_mean"].iloc[0]) == 32


def test_resume_recomputes_only_missing_shards_and_gives_the_same_cache(encoder, toy, tmp_path):
    full = embed_dataset(toy, encoder, ["mean", "cls"], tmp_path / "a", shard_rows=20, progress=False)
    (full.path / "shard-00001.parquet").unlink()
    (full.path / "_manifest.json").unlink()
    again = embed_dataset(toy, encoder, ["mean", "cls"], tmp_path / "a", shard_rows=20, progress=False)
    assert again.computed_shards == [1] and again.computed_rows == 20
    fresh = embed_dataset(toy, encoder, ["mean", "cls"], tmp_path / "b", shard_rows=20, progress=False)
    np.testing.assert_array_equal(load_embeddings(again.path, "mean").X, load_embeddings(fresh.path, "mean").X)


def test_an_interrupted_run_resumes_from_its_finished_shards(encoder, toy, tmp_path, monkeypatch):
    from pipeline.embed import shards

    original, writes = shards.write_shard, []

    def dying(store, index, *args):
        if index == 2:
            raise KeyboardInterrupt
        writes.append(index)
        original(store, index, *args)

    monkeypatch.setattr(shards, "write_shard", dying)
    with pytest.raises(KeyboardInterrupt):
        embed_dataset(toy, encoder, ["mean"], tmp_path / "c", shard_rows=15, progress=False)
    monkeypatch.setattr(shards, "write_shard", original)
    resumed = embed_dataset(toy, encoder, ["mean"], tmp_path / "c", shard_rows=15, progress=False)
    assert writes == [0, 1] and resumed.computed_shards == [2, 3]
    fresh = embed_dataset(toy, encoder, ["mean"], tmp_path / "d", shard_rows=15, progress=False)
    np.testing.assert_array_equal(load_embeddings(resumed.path, "mean").X, load_embeddings(fresh.path, "mean").X)


def test_asking_for_a_new_pooling_adds_it_without_losing_the_old_ones(encoder, toy, tmp_path):
    first = embed_dataset(toy, encoder, ["mean"], tmp_path / "e", progress=False)
    before = load_embeddings(first.path, "mean").X
    second = embed_dataset(toy, encoder, ["max"], tmp_path / "e", progress=False)
    assert second.path == first.path and set(second.manifest.poolings) == {"mean", "max"}
    np.testing.assert_array_equal(load_embeddings(second.path, "mean").X, before)
    third = embed_dataset(toy, encoder, ["mean"], tmp_path / "e", progress=False)
    assert third.computed_rows == 0


def test_key_changes_with_everything_that_changes_the_vectors(encoder, toy, tmp_path, tiny_bert):
    base = cache_key(encoder.settings(), toy.fingerprint)
    other_len = load_encoder(str(tiny_bert), EncoderOptions(max_length=8, device="cpu", dtype="fp32"))
    other_model = load_encoder(str(write_tiny_bert(tmp_path / "other", seed=1)),
                               EncoderOptions(max_length=16, device="cpu", dtype="fp32"))
    bf16 = load_encoder(str(tiny_bert), EncoderOptions(max_length=16, device="cpu", dtype="bf16"))
    rows = sentiment_rows(60)
    rows[5] = (rows[5][0] + "!", rows[5][1])
    changed_text = load_dataset(write_csv(tmp_path / "toy2.csv", rows))
    keys = {base, cache_key(other_len.settings(), toy.fingerprint), cache_key(other_model.settings(), toy.fingerprint),
            cache_key(bf16.settings(), toy.fingerprint), cache_key(encoder.settings(), changed_text.fingerprint)}
    assert len(keys) == 5


def test_pooler_is_refused_for_a_model_without_one(tmp_path, toy):
    folder = write_tiny_bert(tmp_path / "nopool", pooler=False)
    enc = load_encoder(str(folder), EncoderOptions(max_length=16, device="cpu", dtype="fp32"))
    assert not enc.has_pooler
    with pytest.raises(PipelineError, match="no trained pooler"):
        embed_dataset(toy, enc, ["mean", "pooler"], tmp_path / "f", progress=False)


def test_pickle_only_model_folders_are_refused(tmp_path, tiny_bert):
    import shutil

    folder = tmp_path / "pickle-only"
    shutil.copytree(tiny_bert, folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(PipelineError, match="pickle weights"):
        resolve_model(str(folder))


def test_a_second_writer_is_stopped_by_the_lock(encoder, toy, tmp_path):
    from pipeline.cache import EmbeddingCache, cache_dir

    path = cache_dir(tmp_path / "g", toy.name, encoder.ref.name, cache_key(encoder.settings(), toy.fingerprint))
    path.mkdir(parents=True)
    with EmbeddingCache(path).acquire():
        with pytest.raises(PipelineError, match="another run is writing"):
            embed_dataset(toy, encoder, ["mean"], tmp_path / "g", progress=False)


@pytest.mark.parametrize("flags, machine, bf16", [
    ({"sse4_2", "avx2", "avx512f", "avx512_bf16"}, "x86_64", True),  # AMD Zen 4, Intel Cooper Lake
    ({"sse4_2", "avx2", "fma"}, "x86_64", False),  # AVX2 only: bf16 is emulated, several times slower
    ({"avx2", "avx512f", "amx_tile", "amx_bf16"}, "x86_64", True),  # Intel Sapphire Rapids
    ({"avx2", "avx512f", "avx512_vnni"}, "AMD64", False),
    ({"fp", "asimd", "bf16"}, "aarch64", True),  # Graviton 3, Neoverse V1
    ({"fp", "asimd"}, "aarch64", False),
    ({"avx512_bf16", "bf16"}, "riscv64", False),
])
def test_the_cpu_dtype_rule_reads_flags_not_timings(flags, machine, bf16):
    from pipeline.embed.device import cpu_prefers_bf16

    assert cpu_prefers_bf16(frozenset(flags), machine) is bf16


def test_cpu_flags_are_those_every_core_reports(tmp_path):
    from pipeline.embed.device import cpu_flags

    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu avx2\n")
    assert cpu_flags(x86) == {"fpu", "avx2"}
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd bf16 i8mm\n")
    assert cpu_flags(arm) == {"fp", "asimd", "bf16", "i8mm"}


def test_auto_dtype_on_cpu_is_the_same_every_time_and_follows_the_flags(monkeypatch, tiny_bert):
    from pipeline.embed import device as device_module

    cpu = torch.device("cpu")
    expected = torch.bfloat16 if device_module.cpu_prefers_bf16(device_module.cpu_flags(), __import__(
        "platform").machine()) else torch.float32
    assert {device_module.pick_dtype("auto", cpu) for _ in range(5)} == {expected}
    options = EncoderOptions(max_length=16, device="cpu", dtype="auto")
    keys = {load_encoder(str(tiny_bert), options).settings() for _ in range(2)}
    assert len(keys) == 1 and next(iter(keys)).dtype == device_module.dtype_name(expected)
    for native, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda native=native: native)
        assert device_module.pick_dtype("auto", cpu) == dtype
        assert device_module.pick_dtype("fp32", cpu) == torch.float32


def test_the_manifest_no_longer_records_a_timing_and_old_ones_still_load(encoder, toy, tmp_path):
    result = embed_dataset(toy, encoder, ["mean"], tmp_path / "h", progress=False)
    manifest_path = result.path / "_manifest.json"
    record = json.loads(manifest_path.read_text())
    assert "cpu_bf16_speedup" not in record
    manifest_path.write_text(json.dumps({**record, "cpu_bf16_speedup": 0.72}))  # as written by earlier versions
    assert load_embeddings(result.path, "mean").X.shape == (60, 32)
    again = embed_dataset(toy, encoder, ["mean"], tmp_path / "h", progress=False)
    assert again.computed_rows == 0 and again.path == result.path
