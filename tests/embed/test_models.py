"""Model folders, right and wrong: tokenizer checks, custom code refused, damaged files named, RoBERTa-style positions,
models without token_type_ids, and the remembered weights hash (same identity, no re-read of unchanged files)."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.embed.encoder import load_encoder
from pipeline.embed.settings import EncoderOptions
from pipeline.embed.sources import files as models
from pipeline.embed.sources import resolve_model
from pipeline.embed.sources.files import TOKENIZER_FILES
from pipeline.embed.stage import embed_texts
from pipeline.errors import PipelineError

from conftest import WORDS, sentiment_rows, write_csv

HOUR_AGO = time.time() - 3600
CUSTOM_CODE = "needs custom code \\(trust_remote_code\\), which bert-pipeline never runs: use a model that transformers"


@pytest.fixture(autouse=True)
def own_cache_home(tmp_path, monkeypatch):
    """The hash memo goes to a fresh cache dir per test, never the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg"


def copy_model(src: Path, dst: Path, config: dict | None = None, drop: tuple[str, ...] = ()) -> Path:
    """A copy of a model folder with config.json keys changed and some files removed; files dated an hour ago."""
    shutil.copytree(src, dst)
    if config:
        record = json.loads((dst / "config.json").read_text())
        (dst / "config.json").write_text(json.dumps({**record, **config}))
    for name in drop:
        (dst / name).unlink(missing_ok=True)
    for path in dst.iterdir():
        os.utime(path, (HOUR_AGO, HOUR_AGO))
    return dst


def write_bert_like(folder: Path, tokenizer_from: Path, **config) -> Path:
    """A tiny random BertModel with another config (e.g. vocab_size, max_position_embeddings) and the given
    folder's tokenizer files."""
    from transformers import BertConfig, BertModel

    folder.mkdir(parents=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_from / name).exists():
            shutil.copy(tokenizer_from / name, folder / name)
    base = dict(vocab_size=json.loads((tokenizer_from / "config.json").read_text())["vocab_size"], hidden_size=32,
                num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(BertConfig(**{**base, **config})).save_pretrained(folder, safe_serialization=True)
    return folder


def write_wordpiece(folder: Path, vocab: list[str]) -> None:
    """Replace a folder's tokenizer files with a WordPiece tokenizer over `vocab`."""
    from transformers import BertTokenizerFast

    for name in TOKENIZER_FILES:
        (folder / name).unlink(missing_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)


@pytest.fixture(scope="module")
def tiny_mpnet(tmp_path_factory) -> Path:
    """A 2-layer MPNet (RoBERTa-style positions from padding_idx + 1, no token_type_ids) with 40 position
    embeddings, and a fast MPNet tokenizer over a WordPiece vocabulary."""
    from transformers import MPNetConfig, MPNetModel, MPNetTokenizerFast

    folder = tmp_path_factory.mktemp("models") / "tiny-mpnet"
    folder.mkdir()
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = list(dict.fromkeys(["<s>", "<pad>", "</s>", "<unk>", "<mask>", *WORDS, *[f"##{c}" for c in letters],
                                *letters, *".,!?'-"]))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    MPNetTokenizerFast(str(folder / "vocab.txt"), do_lower_case=True, unk_token="<unk>").save_pretrained(folder)
    torch.manual_seed(0)
    config = MPNetConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=40, pad_token_id=1)
    MPNetModel(config).save_pretrained(folder, safe_serialization=True)
    return folder


# --- tokenizer files and vocabulary --------------------------------------------------------------------------------


def test_a_model_folder_without_tokenizer_files_is_refused(tiny_bert, tmp_path):
    bare = copy_model(tiny_bert, tmp_path / "bare", drop=TOKENIZER_FILES)
    with pytest.raises(PipelineError, match="has no tokenizer files .*every word becomes \\[UNK\\]"):
        resolve_model(str(bare))
    config_only = copy_model(tiny_bert, tmp_path / "config-only", drop=("tokenizer.json", "vocab.txt"))
    assert (config_only / "tokenizer_config.json").exists()
    with pytest.raises(PipelineError, match="has no tokenizer files"):
        resolve_model(str(config_only))


def test_a_tokenizer_with_more_tokens_than_the_model_has_embeddings_is_refused(tiny_bert, tmp_path):
    folder = copy_model(tiny_bert, tmp_path / "big-tokenizer")
    vocab = (tiny_bert / "vocab.txt").read_text().split()
    write_wordpiece(folder, vocab + [f"extra{i}" for i in range(50)])
    with pytest.raises(PipelineError, match=f"token ids up to {len(vocab) + 49}, but the model has embeddings for "
                                            f"only {len(vocab)} .*belongs to another model"):
        load_encoder(str(folder), EncoderOptions(max_length=16, device="cpu", dtype="fp32"))


def test_a_tokenizer_with_fewer_tokens_than_the_embedding_rows_loads(tiny_bert, tmp_path):
    folder = copy_model(tiny_bert, tmp_path / "small-tokenizer")
    vocab = (tiny_bert / "vocab.txt").read_text().split()
    write_wordpiece(folder, vocab[:-10])  # like a model whose embedding matrix is padded past its vocabulary
    encoder = load_encoder(str(folder), EncoderOptions(max_length=16, device="cpu", dtype="fp32"))
    assert len(encoder.tokenizer) == len(vocab) - 10
    assert embed_texts(encoder, ["good movie"], ["mean"])["mean"].shape == (1, 32)


def test_a_placeholder_tokenizer_for_a_big_vocabulary_model_is_refused(tiny_bert, tmp_path):
    folder = write_bert_like(tmp_path / "big-vocab", tiny_bert, vocab_size=2000)
    write_wordpiece(folder, (tiny_bert / "vocab.txt").read_text().split()[:40])
    with pytest.raises(PipelineError, match="has only 40 tokens for a model with 2000: it is a placeholder"):
        load_encoder(str(folder), EncoderOptions(max_length=16, device="cpu", dtype="fp32"))


# --- custom code ------------------------------------------------------------------------------------------------


def test_a_model_asking_for_custom_code_is_refused_in_one_line(tiny_bert, tmp_path):
    folder = copy_model(tiny_bert, tmp_path / "remote", config={"auto_map": {"AutoModel": "modeling_x.BertX"}})
    with pytest.raises(PipelineError, match=f"^remote {CUSTOM_CODE} supports natively$"):
        resolve_model(str(folder))
    folder = copy_model(tiny_bert, tmp_path / "unknown-type", config={"model_type": "not-a-real-type"})
    with pytest.raises(PipelineError, match=f"^unknown-type {CUSTOM_CODE} supports natively$"):
        load_encoder(str(folder), EncoderOptions(max_length=16, device="cpu", dtype="fp32"))


def test_the_real_cli_prints_exactly_one_line_for_models_that_fail_late(tiny_bert, tmp_path, own_cache_home):
    """In a child process nothing captures warnings.warn or transformers' logger: stderr must still be one line."""
    data = write_csv(tmp_path / "toy.csv", sentiment_rows(20))
    unknown = copy_model(tiny_bert, tmp_path / "unknown-type", config={"model_type": "not-a-real-type"})
    short = write_bert_like(tmp_path / "short", tiny_bert, max_position_embeddings=64)
    env = {**os.environ, "XDG_CACHE_HOME": str(own_cache_home), "HF_HUB_OFFLINE": "1"}
    for model, pattern in ((unknown, CUSTOM_CODE), (short, "--max-length 128 is out of range: use 2..64")):
        proc = subprocess.run([sys.executable, "-m", "pipeline", "embed", "--data", str(data), "--model", str(model),
                               "--out", str(tmp_path / "emb"), "--no-progress"], capture_output=True, text=True,
                              env=env, cwd=Path(__file__).resolve().parents[2], timeout=300)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith("error: ") and __import__("re").search(pattern, lines[0]), lines[0]
    assert not (tmp_path / "emb").exists() or not any((tmp_path / "emb").iterdir())


# --- damaged or odd folders --------------------------------------------------------------------------------------


def test_a_config_that_is_not_json_is_named(tiny_bert, tmp_path):
    folder = copy_model(tiny_bert, tmp_path / "bad-config")
    (folder / "config.json").write_text('{"model_type": "bert",')
    with pytest.raises(PipelineError, match="config.json is not valid JSON \\(.*line 1.*\\): restore the model's"):
        resolve_model(str(folder))
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(PipelineError, match="config.json holds a JSON list, not an object"):
        resolve_model(str(folder))


def test_truncated_or_foreign_safetensors_are_refused_before_loading(tiny_bert, tmp_path):
    folder = copy_model(tiny_bert, tmp_path / "truncated")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(PipelineError, match=f"model.safetensors is truncated \\({len(data) // 2} bytes; its header "
                                            f"needs {len(data)}\\): download or copy the model again"):
        resolve_model(str(folder))
    for junk in (b"", b"PK\x03\x04 a zip file, not tensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}"):
        weights.write_bytes(junk)
        with pytest.raises(PipelineError, match="model.safetensors is not a readable safetensors file"):
            resolve_model(str(folder))


def test_a_file_given_as_the_model_folder_is_named(tmp_path):
    path = write_csv(tmp_path / "reviews.csv", sentiment_rows(4))
    with pytest.raises(PipelineError, match="--model .*reviews.csv is a file, not a model folder"):
        resolve_model(str(path))


def test_a_model_with_fewer_positions_than_the_default_max_length_says_which_limit(tiny_bert, tmp_path):
    folder = write_bert_like(tmp_path / "short", tiny_bert, max_position_embeddings=64)
    with pytest.raises(PipelineError, match="--max-length 128 is out of range: use 2..64 for this model"):
        load_encoder(str(folder), EncoderOptions(device="cpu", dtype="fp32"))
    encoder = load_encoder(str(folder), EncoderOptions(max_length=64, device="cpu", dtype="fp32"))
    tokens = encoder.tokenize(["good " * 200])
    assert tokens.lengths.tolist() == [64]
    assert embed_texts(encoder, ["good " * 200], ["mean"])["mean"].shape == (1, 32)


# --- RoBERTa-style models ---------------------------------------------------------------------------------------


def test_an_mpnet_model_without_token_type_ids_embeds_like_its_unpadded_reference(tiny_mpnet):
    encoder = load_encoder(str(tiny_mpnet), EncoderOptions(max_length=38, device="cpu", dtype="fp32"))
    assert "token_type_ids" not in encoder.tokenizer.model_input_names
    assert "token_type_ids" not in encoder.prepare([[0, 5, 2]])
    texts = ["the movie was great fun", "bad", "the plot was very slow and the actor was dull " * 3]
    vectors = embed_texts(encoder, texts, ["cls", "mean"])
    for i, text in enumerate(texts):
        ids = encoder.tokenize([text]).input_ids
        with torch.inference_mode():
            alone = encoder.model(input_ids=torch.tensor(ids)).last_hidden_state[0]
        np.testing.assert_allclose(vectors["mean"][i], alone.mean(0).numpy(), atol=1e-5)
        np.testing.assert_allclose(vectors["cls"][i], alone[0].numpy(), atol=1e-5)


def test_roberta_style_positions_leave_room_for_the_padding_offset(tiny_mpnet):
    """40 position embeddings numbered from padding_idx + 1 = 2 hold 38 tokens: 39 or 40 would crash mid-run."""
    ref = resolve_model(str(tiny_mpnet))
    with pytest.raises(PipelineError, match="--max-length 40 is out of range: use 2..38 for this model"):
        load_encoder(ref, EncoderOptions(max_length=40, device="cpu", dtype="fp32"))
    encoder = load_encoder(ref, EncoderOptions(max_length=38, device="cpu", dtype="fp32"))
    assert embed_texts(encoder, ["good " * 100], ["mean"])["mean"].shape == (1, 32)


# --- the remembered weights hash ---------------------------------------------------------------------------------


def count_hashing(monkeypatch) -> list[str]:
    read, original = [], models.hash_file_into

    def counting(digest, path):
        read.append(Path(path).name)
        original(digest, path)

    monkeypatch.setattr(models, "hash_file_into", counting)
    return read


def plain_sha256(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_an_unchanged_model_is_not_read_again_and_keeps_its_identity(tiny_bert, tmp_path, monkeypatch,
                                                                     own_cache_home):
    folder = copy_model(tiny_bert, tmp_path / "m")
    read = count_hashing(monkeypatch)
    first = resolve_model(str(folder)).identity
    assert "model.safetensors" in read
    assert first.weights_sha256 == plain_sha256([folder / "model.safetensors"])
    assert first.tokenizer_sha256 == plain_sha256([folder / f for f in TOKENIZER_FILES if (folder / f).exists()])
    assert (own_cache_home / "bert-pipeline" / "hashes.json").is_file()
    read.clear()
    assert resolve_model(str(folder)).identity == first
    assert read == [], "an unchanged model is identified from the memo, without reading its files"


def test_a_touched_or_rewritten_file_is_hashed_again(tiny_bert, tmp_path, monkeypatch):
    folder = copy_model(tiny_bert, tmp_path / "m")
    weights = folder / "model.safetensors"
    first = resolve_model(str(folder)).identity
    read = count_hashing(monkeypatch)
    os.utime(weights, (HOUR_AGO - 60, HOUR_AGO - 60))
    assert resolve_model(str(folder)).identity == first and read == ["model.safetensors"]
    read.clear()
    stamp = os.stat(weights)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, and the old mtime put back: only ctime tells
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    changed = resolve_model(str(folder)).identity
    assert read == ["model.safetensors"]
    assert changed.weights_sha256 == plain_sha256([weights]) != first.weights_sha256
    assert changed.tokenizer_sha256 == first.tokenizer_sha256


def test_a_file_written_moments_ago_is_not_remembered(tiny_bert, tmp_path, monkeypatch):
    folder = copy_model(tiny_bert, tmp_path / "m")
    os.utime(folder / "model.safetensors")  # now: it may still change within the same timestamp tick
    read = count_hashing(monkeypatch)
    resolve_model(str(folder))
    resolve_model(str(folder))
    assert read.count("model.safetensors") == 2


def test_a_broken_or_unwritable_memo_only_means_hashing(tiny_bert, tmp_path, monkeypatch, own_cache_home):
    folder = copy_model(tiny_bert, tmp_path / "m")
    expected = resolve_model(str(folder)).identity
    memo = own_cache_home / "bert-pipeline" / "hashes.json"
    for junk in ("{not json", "[]", '{"version": 1, "entries": {"x": 5}}', '{"version": 99}'):
        memo.write_text(junk)
        assert resolve_model(str(folder)).identity == expected
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    read = count_hashing(monkeypatch)
    assert resolve_model(str(folder)).identity == expected
    assert "model.safetensors" in read
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert models.hash_memo_path() == tmp_path / "home" / ".cache" / "bert-pipeline" / "hashes.json"
