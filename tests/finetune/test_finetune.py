"""Fine-tuning on the tiny random BERT: both methods end to end, the loss goes down, the saved folder is a model
like any other and predicts what the in-memory model predicted, a killed run resumes where it stopped, a rerun
reuses the result, and bad input gets one line."""

import json

import numpy as np
import pytest
import torch

from pipeline.data import load_dataset
from pipeline.embed.batching import token_batches
from pipeline.embed.encoder import load_encoder
from pipeline.embed.settings import EncoderOptions
from pipeline.embed.stage import embed_texts
from pipeline.errors import PipelineError
from pipeline.finetune import loop as loop_module
from pipeline.finetune.checkpoint import Checkpoints
from pipeline.finetune.data import sample_pairs, split_rows
from pipeline.finetune.full import Classifier, collate, to_logreg
from pipeline.finetune.settings import FinetuneSettings
from pipeline.finetune.stage import _save_model, run_method
from pipeline.train.head_graph import full_proba

from conftest import sentiment_rows, write_csv

FAST = ["--epochs", "3", "--lr", "1e-3", "--max-length", "32", "--dtype", "fp32", "--no-progress"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("ft") / "toy.csv", sentiment_rows(160))


@pytest.fixture(scope="module")
def toy_split(tmp_path_factory):
    """The toy set with a dev split, so early stopping reads dev."""
    rows = [(t, lab, ["train", "train", "train", "dev", "test"][i % 5])
            for i, (t, lab) in enumerate(sentiment_rows(160))]
    return write_csv(tmp_path_factory.mktemp("ft") / "toy_split.csv", rows, ("text", "label", "split"))


def _cli(tmp_path, *args):
    return [*args, "--out", tmp_path / "models", "--runs", tmp_path / "runs"]


def test_full_fine_tune_end_to_end_through_the_cli(run_cli, tiny_bert, toy_split, tmp_path):
    code, out, err = run_cli("finetune", "--data", toy_split, "--split-col", "split", "--model", tiny_bert, *FAST,
                             *_cli(tmp_path))
    assert code == 0, err
    assert "fine-tuned full on toy_split: " in out and "test accuracy" in out and "dev accuracy" in out
    model_dir = next((tmp_path / "models").glob("toy_split__tiny-bert__full__*"))
    names = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "finetune.json"} <= names
    assert "checkpoint" not in names, "the checkpoint is removed once the model is saved"
    record = json.loads((model_dir / "finetune.json").read_text())
    losses = [h["loss"] for h in record["history"]]
    assert losses[-1] < losses[0], f"the training loss should go down: {losses}"
    assert record["selection"].startswith("the dev split") and record["rows"]["select"] == 32
    card = (model_dir / "README.md").read_text()
    assert "tiny-bert" in card and "test accuracy" in card and "| lr | 0.001 |" in card
    run = next((tmp_path / "runs").glob("*/mean/finetune-*"))
    assert {"report.md", "metrics.json", "confusion.png", "run.json"} <= {p.name for p in run.iterdir()}
    rows = (run.parent.parent / "runs.csv").read_text()
    assert f"mean,{run.name}," in rows
    # the tuned folder is a model like any other, and predict uses the run (tuned encoder + exported head)
    code, out, err = run_cli("predict", "--run", run, "--text", "good great fun film", "--text", "bad awful dull")
    assert code == 0 and len(out.strip().splitlines()) == 2, err
    code, out, err = run_cli("embed", "--data", toy_split, "--split-col", "split", "--model", model_dir, "--pooling",
                             "mean", "--out", tmp_path / "emb", "--no-progress")
    assert code == 0 and "embedded 160 rows" in out, err
    # the same command again reuses the finished fine-tune: nothing is computed
    code, out, _ = run_cli("finetune", "--data", toy_split, "--split-col", "split", "--model", tiny_bert, *FAST,
                           *_cli(tmp_path))
    assert code == 0 and out.startswith("reused the finished fine-tune")


def test_setfit_end_to_end_with_shots(run_cli, tiny_bert, toy, tmp_path, monkeypatch):
    code, out, err = run_cli("finetune", "--data", toy, "--model", tiny_bert, "--method", "setfit", "--shots", "8",
                             "--epochs", "2", "--lr", "1e-3", "--max-length", "32", "--dtype", "fp32",
                             "--no-progress", *_cli(tmp_path))
    assert code == 0, err
    assert "fine-tuned setfit on toy" in out and "dev accuracy n/a" in out
    record = json.loads(next((tmp_path / "models").glob("toy__tiny-bert__setfit__*")).joinpath(
        "finetune.json").read_text())
    assert record["rows"]["train"] == 16 and record["rows"]["select"] == 0, "8 shots per class, nothing held out"
    assert record["history"][1]["loss"] < record["history"][0]["loss"]
    run = next((tmp_path / "runs").glob("*/mean/setfit-8shot-*"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_train"] == 16 and metrics["head"] == run.name and metrics["params"]["shots"] == 8


def test_saved_folder_predicts_what_the_in_memory_model_predicted(tiny_bert, toy, tmp_path):
    ds = load_dataset(toy)
    with pytest.raises(PipelineError, match="training=True"):  # an inference graph would keep the untrained weights
        inference = EncoderOptions(max_length=32, device="cpu", dtype="fp32", runtime="openvino")
        run_method(load_encoder(str(tiny_bert), inference), ds,
                   split_rows(ds, None, 0), FinetuneSettings().resolved("fp32"), Checkpoints(None, "k"), False)
    encoder = load_encoder(str(tiny_bert), EncoderOptions(max_length=32, device="cpu", dtype="fp32"), training=True)
    settings = FinetuneSettings(epochs=2, lr=1e-3, max_length=32).resolved("fp32")
    outcome = run_method(encoder, ds, split_rows(ds, None, 0), settings, Checkpoints(None, "k"), progress=False)
    _save_model(encoder, tmp_path / "tuned")
    as_trained = EncoderOptions(max_length=32, device="cpu", dtype="fp32", runtime="torch")
    reloaded = load_encoder(str(tmp_path / "tuned"), as_trained)
    test = [ds.texts[i] for i in np.flatnonzero(ds.splits == "test")]
    proba = full_proba(outcome.head, embed_texts(reloaded, test, ["mean"])["mean"], 2)
    np.testing.assert_allclose(proba, outcome.proba_test, atol=1e-5)
    assert (proba.argmax(1) == outcome.proba_test.argmax(1)).all()


@pytest.mark.parametrize("n_labels", [2, 3])
def test_the_exported_head_gives_the_classifier_s_probabilities(tiny_bert, n_labels):
    encoder = load_encoder(str(tiny_bert), EncoderOptions(max_length=32, device="cpu", dtype="fp32"))
    model = Classifier(encoder, "mean", n_labels).eval()
    torch.nn.init.normal_(model.head.weight, std=1.0)
    texts = ["good fun film", "bad dull plot", "the movie was fine", "awful"]
    with torch.no_grad():
        logits = model(collate(encoder, encoder.tokenize(texts).input_ids))
    expected = torch.softmax(logits, dim=1).numpy()
    got = full_proba(to_logreg(model.head, n_labels), embed_texts(encoder, texts, ["mean"])["mean"], n_labels)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def _kill_at(monkeypatch, step: int) -> list[int]:
    """Make the loop's optimisation step raise KeyboardInterrupt (a kill) once, at call `step`; returns the log
    of calls (clear it to count again)."""
    calls, real, armed = [], loop_module._step, [True]

    def step_or_die(*args, **kwargs):
        calls.append(1)
        if armed[0] and len(calls) == step:
            armed[0] = False
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop_module, "_step", step_or_die)
    return calls


def test_a_killed_fine_tune_resumes_where_it_stopped_and_ends_as_an_unbroken_one(run_cli, tiny_bert, toy_split,
                                                                                tmp_path, monkeypatch):
    args = ["finetune", "--data", toy_split, "--split-col", "split", "--model", tiny_bert, "--batch-tokens", "160",
            *FAST, "--epochs", "2"]
    assert run_cli(*args, *_cli(tmp_path / "unbroken"))[0] == 0
    monkeypatch.setattr(loop_module, "SAVE_EVERY_S", 0.0)  # a checkpoint after every step, not only every epoch
    unbroken = json.loads(next((tmp_path / "unbroken" / "models").glob("*/finetune.json")).read_text())
    per_epoch = unbroken["steps"] // unbroken["epochs"]
    calls = _kill_at(monkeypatch, per_epoch + 3)  # killed in epoch 2, after 2 of its steps
    code, _, err = run_cli(*args, *_cli(tmp_path / "killed"))
    assert code == 130 and "run the same command to resume" in err
    assert list((tmp_path / "killed" / "models").glob("*/checkpoint/state.pt"))
    calls.clear()
    code, _, err = run_cli(*args, *_cli(tmp_path / "killed"))
    assert code == 0, err
    resumed = json.loads(next((tmp_path / "killed" / "models").glob("*/finetune.json")).read_text())
    assert resumed["resumed_at_step"] == per_epoch + 2, "continued after the last finished step, not from step 0"
    assert len(calls) == unbroken["steps"] - per_epoch - 2
    assert resumed["history"] == unbroken["history"] or all(
        abs(a["dev"] - b["dev"]) < 1e-9 for a, b in zip(resumed["history"], unbroken["history"], strict=True))
    a = _weights(next((tmp_path / "unbroken" / "models").glob("*/model.safetensors")))
    b = _weights(next((tmp_path / "killed" / "models").glob("*/model.safetensors")))
    assert all(torch.equal(a[k], b[k]) for k in a), "resume continues the same run: identical final weights"


def _weights(path):
    from safetensors.torch import load_file

    return load_file(path)


def test_batches_keep_the_token_budget_and_pairs_are_balanced_and_capped():
    lengths = np.array([5, 30, 7, 30, 12, 3, 3, 9, 40, 8])
    batches = token_batches(lengths, 64, np.random.default_rng(0))
    assert sorted(np.concatenate(batches).tolist()) == list(range(10))
    assert all(len(b) * lengths[b].max() <= 64 or len(b) == 1 for b in batches)
    again = token_batches(lengths, 64, np.random.default_rng(0))
    assert all((a == b).all() for a, b in zip(batches, again, strict=True)), "seeded"
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    pairs, targets = sample_pairs(labels, 1000, np.random.default_rng(1))
    assert pairs.shape == (1000, 2) and targets.sum() == 500
    same = labels[pairs[:, 0]] == labels[pairs[:, 1]]
    assert (same == (targets == 1.0)).all() and (pairs[:, 0] != pairs[:, 1]).all()


BAD = {
    "one class": (["--data", "{one_class}", "--split-col", "split"], "the train split has only one class"),
    "empty test split": (["--data", "{no_test}", "--split-col", "split"], "the test split is empty"),
    "unknown method": (["--data", "{toy}", "--method", "lora"], "unknown method 'lora': choose from full, setfit"),
    "shots above the smallest class": (["--data", "{toy}", "--method", "setfit", "--shots", "500"],
                                       "--shots 500 is more than the smallest class has in train"),
    "per-layer pooling": (["--data", "{toy}", "--pooling", "layers"], "cannot fine-tune on pooling 'layers'"),
    "unknown pooling": (["--data", "{toy}", "--pooling", "meen"], "cannot fine-tune on pooling 'meen'"),
    "missing model": (["--data", "{toy}", "--model", "/nonexistent/model"], "model folder not found"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_one_line(case, run_cli, tiny_bert, toy, tmp_path):
    rows = sentiment_rows(40)
    files = {"toy": toy,
             "one_class": write_csv(tmp_path / "one.csv", [(t, "positive", "train" if i % 4 else "test")
                                                           for i, (t, _) in enumerate(rows)],
                                    ("text", "label", "split")),
             "no_test": write_csv(tmp_path / "nt.csv", [(t, lab, "train") for t, lab in rows],
                                  ("text", "label", "split"))}
    args, message = BAD[case]
    args = [a.format(**files) for a in args]
    model = [] if "--model" in args else ["--model", str(tiny_bert)]
    code, out, err = run_cli("finetune", *args, *model, *FAST, *_cli(tmp_path))
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_out_of_gpu_memory_names_the_fix(run_cli, tiny_bert, toy, tmp_path, monkeypatch):
    def oom(self, inputs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Classifier, "forward", oom)
    code, _, err = run_cli("finetune", "--data", toy, "--model", tiny_bert, *FAST, *_cli(tmp_path))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "out of CPU memory in a training batch" in err and "lower --batch-tokens" in err
