"""The seams of the embed stage: one runtime registry and factory, settings resolved once into one serialisable value,
a model-source registry, and the typed records that cross stages (with their versions)."""

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipeline.cache import EncoderSettings, cache_key
from pipeline.data import load_dataset
from pipeline.embed import device as devices
from pipeline.embed import runtimes, sources
from pipeline.embed.encoder import Encoder, load_encoder
from pipeline.embed.runtimes import torch_eager
from pipeline.embed.settings import EncoderConfig, EncoderOptions
from pipeline.embed.stage import embed_dataset, embed_texts
from pipeline.errors import PipelineError
from pipeline.finetune.record import FinetuneRecord
from pipeline.train.runs import load_run
from pipeline.train.stage import train_cache

from conftest import sentiment_rows, write_csv

TEXTS = ["good fun film", "a dull and slow movie, but the actor is witty", "bad"]
PIPELINE = Path(__file__).resolve().parents[2] / "pipeline"
CPU = EncoderOptions(max_length=32, device="cpu", dtype="fp32")


def test_no_module_outside_the_runtime_package_compares_a_runtime_name():
    compares = re.compile(r"""(==|!=|\bin)\s*[(\[{]?\s*["'](torch|openvino)["']|["'](torch|openvino)["']\s*(==|!=)""")
    found = [f"{path.relative_to(PIPELINE)}:{n}" for path in PIPELINE.rglob("*.py")
             if "runtimes" not in path.parts
             for n, line in enumerate(path.read_text().splitlines(), 1) if compares.search(line)]
    assert found == []


def test_settings_are_resolved_once_and_the_encoder_picks_nothing(tiny_bert, monkeypatch):
    calls = []
    for name in ("pick_device_name", "pick_dtype_name"):
        original = getattr(devices, name)
        monkeypatch.setattr(devices, name, lambda *a, f=original, n=name: calls.append(n) or f(*a))
    config = EncoderOptions(max_length=32, dtype="fp32").resolve(str(tiny_bert))
    encoder = Encoder(config)
    embed_texts(encoder, TEXTS, ["mean"])
    assert calls == ["pick_device_name", "pick_dtype_name"]
    assert (config.device, config.dtype, encoder.config) == ("cpu", "fp32", config)
    assert config.batch_tokens == runtimes.batch_tokens(config.runtime, "cpu", 0, 32) >= 32


def test_the_config_is_one_serialisable_value_that_makes_the_same_vectors_elsewhere(tiny_bert):
    config = CPU.resolve(str(tiny_bert))
    record = json.loads(json.dumps(config.to_json()))  # what a Ray actor receives
    assert record["model"] == str(tiny_bert.resolve()) and EncoderConfig.from_json(record) == config
    np.testing.assert_array_equal(embed_texts(Encoder(EncoderConfig.from_json(record)), TEXTS, ["mean"])["mean"],
                                  embed_texts(Encoder(config), TEXTS, ["mean"])["mean"])


def test_a_variant_is_checked_and_takes_its_runtime_s_token_budget(tiny_bert):
    config = replace(CPU, batch_tokens=512).resolve(str(tiny_bert))
    on_torch = config.variant(runtime="torch")
    assert on_torch.runtime == "torch" and on_torch.batch_tokens == torch_eager.BATCH_TOKENS["cpu"]
    assert config.variant(runtime="torch", batch_tokens=512).batch_tokens == 512
    with pytest.raises(PipelineError, match="not training"):
        replace(config, training=True).variant(runtime="openvino")
    frozen = replace(config, runtime="torch", training=True).for_inference()
    assert not frozen.training and frozen.runtime == runtimes.pick_runtime("auto", "cpu", "fp32")


def test_a_new_runtime_plugs_in_as_one_registry_entry(tiny_bert, tmp_path, monkeypatch):
    """A runtime that runs PyTorch and then halves every vector: chosen by name, run by every caller, keyed apart."""

    class Halved(torch_eager.TorchRuntime):
        def encode(self, input_ids, batches, poolings, put, *clock):
            halve = lambda rows, arrays: put(rows, {name: v / 2 for name, v in arrays.items()})  # noqa: E731
            super().encode(input_ids, batches, poolings, halve, *clock)

    kind = replace(torch_eager.KIND, name="halved", description="test", auto_rank=None, start=Halved)
    monkeypatch.setattr(runtimes, "RUNTIMES", {**runtimes.RUNTIMES, "halved": kind})
    plain, halved = load_encoder(str(tiny_bert), replace(CPU, runtime="torch")), load_encoder(
        str(tiny_bert), replace(CPU, runtime="halved"))
    np.testing.assert_array_equal(embed_texts(halved, TEXTS, ["mean"])["mean"],
                                  embed_texts(plain, TEXTS, ["mean"])["mean"] / 2)
    assert runtimes.pick_runtime("auto", "cpu", "fp32") != "halved", "'auto' never picks an unranked runtime"
    toy = load_dataset(write_csv(tmp_path / "toy.csv", sentiment_rows(20)))
    result = embed_dataset(toy, halved, ["mean"], tmp_path / "emb", progress=False)
    assert result.manifest.encoder.runtime == "halved"
    assert result.manifest.key == cache_key(EncoderSettings(halved.ref.identity, 32, "fp32", "halved"),
                                            toy.fingerprint) != cache_key(plain.settings(), toy.fingerprint)


def test_model_sources_are_a_registry_tried_in_order(tiny_bert, tmp_path):
    assert list(sources.SOURCES) == ["default", "folder", "packaged", "hub"]
    assert sources.find_source(None).name == sources.find_source("default").name == "default"
    assert sources.find_source(str(tiny_bert)).name == "folder" and sources.model_name(str(tiny_bert)) == "tiny-bert"
    assert sources.find_source("all-mpnet-base-v2").name == "packaged"
    assert sources.find_source("bert-base-cased").name == "hub"
    ref = sources.resolve_model(str(tiny_bert))
    assert (ref.name, ref.spec, ref.identity.source, ref.identity.revision) == (
        "tiny-bert", str(tiny_bert.resolve()), "folder", None)
    with pytest.raises(PipelineError, match="model folder not found"):
        sources.resolve_model(str(tmp_path / "nowhere" / "x"))


def test_run_json_has_its_own_version_and_older_runs_still_load(tiny_bert, tmp_path):
    toy = load_dataset(write_csv(tmp_path / "toy.csv", sentiment_rows(60)))
    path = embed_dataset(toy, load_encoder(str(tiny_bert), CPU), ["mean"], tmp_path / "emb", progress=False).path
    train_cache(path, "mean", ["logreg"], tmp_path / "runs", progress=False)
    folder = tmp_path / "runs" / path.name / "mean" / "logreg"
    record = json.loads((folder / "run.json").read_text())
    assert record["schema"] == 2
    older = {k: v for k, v in record.items() if k != "record_sha256"}  # as runs were written before either field
    (folder / "run.json").write_text(json.dumps({**older, "schema": 1}))
    assert load_run(folder).record.schema == 2
    (folder / "run.json").write_text(json.dumps({**record, "schema": 3}))
    with pytest.raises(PipelineError, match="format version 3, newer"):
        load_run(folder)


def test_the_fine_tune_record_round_trips_and_reads_records_written_before_it_was_typed(tmp_path):
    old = {"key": "k" * 64, "name": "toy__tiny__full__kkk", "created": "2026-01-01T00:00:00+00:00",
           "base_model": {"name": "tiny", "spec": "/m", "source": "folder", "revision": None,
                          "weights_sha256": "w" * 64, "tokenizer_sha256": "t" * 64},
           "data": {"name": "toy", "fingerprint": "f" * 64, "split_origin": "column", "split_counts": {"train": 8}},
           "method": "full", "method_description": "d", "settings": {"method": "full", "epochs": 2, "lr": 0.001},
           "device": "cpu", "label_names": ["a", "b"], "rows": {"train": 8, "select": 2, "test": 4},
           "selection": "the dev split", "epochs": 2, "best_epoch": 2, "steps": 4, "seconds": 1.5,
           "resumed_at_step": 0, "history": [{"epoch": 1, "loss": 0.7, "dev": 0.5}], "dev_accuracy": 0.5,
           "test_accuracy": 0.75, "run": "/runs/x"}
    record = FinetuneRecord.from_json(old, tmp_path / "finetune.json")
    assert record.settings.lr == 0.001 and record.data.split_counts == {"train": 8} and record.schema == 1
    assert FinetuneRecord.from_json(json.loads(json.dumps(record.to_json())), tmp_path) == record
    with pytest.raises(PipelineError, match="is damaged"):
        FinetuneRecord.from_json({**old, "settings": {"no_such_setting": 1}}, tmp_path / "finetune.json")
