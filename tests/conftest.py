"""Shared fixtures: a tiny random BERT with a WordPiece tokenizer, small data files, and a CLI runner."""

import sys
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
WORDS = ("good great fine bad awful terrible movie film plot actor story boring fun dull witty slow the a is was "
         "not very and but it this that of to").split()


def write_tiny_bert(folder: Path, seed: int = 0, pooler: bool = True) -> Path:
    """A 2-layer, 32-dim BertModel with random weights (safetensors) and a fast WordPiece tokenizer."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *[f"##{c}" for c in letters], *letters, *".,!?'-"]
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    BertTokenizerFast(str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)  # positional: 4.x and 5.x
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(dict.fromkeys(vocab)), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=37, max_position_embeddings=128)
    BertModel(config, add_pooling_layer=pooler).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(autouse=True)
def private_hash_memo(tmp_path_factory, monkeypatch):
    """Model hashes are remembered under $XDG_CACHE_HOME; tests keep theirs out of the user's real cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


def sentiment_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Separable toy sentiment: positive rows use positive words, negative rows negative ones."""
    import random

    rng = random.Random(seed)
    pos, neg, filler = ["good", "great", "fun", "witty", "fine"], ["bad", "awful", "dull", "boring", "slow"], \
        ["the", "movie", "film", "plot", "story", "was", "is", "very", "actor"]
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        words = rng.sample(filler, rng.randint(1, 6)) + rng.sample(pos if label == "positive" else neg, 2)
        rng.shuffle(words)
        rows.append((" ".join(words) + f" {i}", label))
    return rows


def write_csv(path: Path, rows, header=("text", "label")) -> Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def toy_csv(tmp_path) -> Path:
    return write_csv(tmp_path / "toy.csv", sentiment_rows(120))


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """Run the real entry point in-process; returns (exit code, stdout, stderr)."""
    from pipeline.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["bert-pipeline", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run


def read_sst2(split: str, limit: int | None = None) -> tuple[list[str], list[int]]:
    """SST-2 sentence level from ../shared/data/sst2: '<label> <sentence>' lines."""
    path = SHARED / "sst2" / f"stsa.binary.{split}"
    if not path.exists():
        pytest.skip(f"{path} not present")
    texts, labels = [], []
    for line in path.read_text(encoding="utf-8").splitlines()[:limit]:
        label, text = line.split(" ", 1)
        texts.append(text)
        labels.append(int(label))
    return texts, labels


def write_tiny_mpnet(folder: Path, seed: int = 0, pooler: bool = False, positions: int = 130) -> Path:
    """A 2-layer, 32-dim MPNetModel (no token types, <s>/</s> special tokens, RoBERTa-style positions) with random
    weights (safetensors), without a pooler unless asked, and a fast MPNet tokenizer over the WordPiece vocabulary."""
    import torch
    from transformers import MPNetConfig, MPNetModel, MPNetTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = list(dict.fromkeys(["<s>", "<pad>", "</s>", "<unk>", "<mask>", *WORDS, *[f"##{c}" for c in letters],
                                *letters, *".,!?'-"]))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    MPNetTokenizerFast(str(folder / "vocab.txt"), do_lower_case=True, unk_token="<unk>").save_pretrained(folder)
    torch.manual_seed(seed)
    config = MPNetConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=positions, pad_token_id=1)
    MPNetModel(config, add_pooling_layer=pooler).save_pretrained(folder, safe_serialization=True)
    return folder


def train_once(folder: Path, run_cli, monkeypatch, model: Path, data: str, embed_args=(), train_args=()) -> bool:
    """chdir into `folder` (hub offline) and, the first time only, embed `data` and train on it through the CLI.
    True when this call did the training, so a fixture can add its own files once."""
    monkeypatch.chdir(folder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if Path("artifacts/runs").exists():
        return False
    assert run_cli("embed", "--data", data, "--model", model, *embed_args, "--no-progress")[0] == 0
    assert run_cli("train", "--data", data, "--model", model, *train_args, "--no-progress")[0] == 0
    return True
