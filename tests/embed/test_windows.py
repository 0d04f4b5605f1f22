"""Long texts in windows: splitting at the boundaries, aggregation by hand, a million characters in flat memory, and
the lines the user reads."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pipeline.cache import EncoderSettings, LongTexts, ModelIdentity, cache_key
from pipeline.embed import windows
from pipeline.embed.aggregate import AGGREGATIONS, Folded
from pipeline.embed.encoder import Encoder, load_encoder
from pipeline.embed.settings import EncoderOptions
from pipeline.embed.stage import embed_texts
from pipeline.errors import PipelineError

MAX = 16  # tokens per window of the tiny model below: 14 text tokens between [CLS] and [SEP]
CLS, SEP = 2, 3  # their ids in conftest's vocabulary


def make_encoder(tiny_bert: Path, mode: str = "window", overlap: int | None = 4) -> Encoder:
    return load_encoder(str(tiny_bert), EncoderOptions(MAX, "cpu", "fp32", 64, "torch", mode, overlap))


def ids_of(n: int) -> list[int]:
    """A tokenised text of n tokens in all: [CLS], n - 2 text tokens, [SEP]."""
    return [CLS, *range(100, 100 + n - 2), SEP]


def test_a_text_of_exactly_max_length_is_one_window_unchanged():
    assert windows.split(ids_of(MAX), MAX, 4, 1, 1) == [ids_of(MAX)]


def test_one_token_over_max_length_makes_two_windows_that_cover_every_token():
    parts = windows.split(ids_of(MAX + 1), MAX, 4, 1, 1)
    assert len(parts) == 2 == windows.window_count(np.array([MAX + 1]), MAX, 4, 2)[0]
    assert all(len(p) <= MAX and p[0] == CLS and p[-1] == SEP for p in parts)
    assert parts[0][1:-1] == list(range(100, 114))
    assert parts[1][1:-1] == list(range(110, 115))  # starts 14 - 4 tokens on: shares 4, ends at the last token


@pytest.mark.parametrize("n", [MAX + 1, 40, 97, 1000])
def test_windows_share_the_overlap_and_their_count_is_predicted(n):
    parts = windows.split(ids_of(n), MAX, 4, 1, 1)
    bodies = [p[1:-1] for p in parts]
    assert all(a[-4:] == b[:4] for a, b in zip(bodies, bodies[1:], strict=False))
    assert sorted(set().union(*bodies)) == list(range(100, 100 + n - 2))
    assert len(parts) == windows.window_count(np.array([n]), MAX, 4, 2)[0]


@pytest.mark.parametrize("overlap", [14, 15, 500])
def test_an_overlap_that_leaves_no_room_is_refused_in_one_line(overlap):
    with pytest.raises(PipelineError, match=r"--window-overlap \d+ leaves windows no room.*use 0\.\.13$"):
        windows.split(ids_of(40), MAX, overlap, 1, 1)


def test_bad_modes_and_negative_overlaps_are_refused():
    with pytest.raises(PipelineError, match="unknown --long-texts 'chunk': choose from window, truncate"):
        windows.Reading("chunk")
    with pytest.raises(PipelineError, match="--window-overlap -1 is negative"):
        windows.Reading("window", -1)


def test_the_default_overlap_shrinks_for_short_windows():
    assert windows.Reading().window(128, 2) == (126, 32)
    assert windows.Reading().window(16, 2) == (14, 4)


def test_pieces_rejoin_to_the_text_and_tokenise_as_the_whole(tiny_bert):
    fast = make_encoder(tiny_bert).fast_tokenizer
    text = " ".join(["good movie, the plot was dull but fun"] * 300)
    assert "".join(windows.pieces(text, 50)) == text
    whole = fast.encode(text, add_special_tokens=False).ids
    assert windows.text_ids(fast, text).tolist() == whole
    assert windows.token_counts(fast, [text, "fine"]).tolist() == [len(whole) + 2, 3]


def test_counts_ignore_the_padding_and_truncation_a_tokenizer_json_may_ask_for(tiny_bert):
    fast = make_encoder(tiny_bert).fast_tokenizer
    fast.enable_padding(length=40)
    fast.enable_truncation(8)
    assert windows.specials(fast) == (1, 1)
    fast.enable_padding(length=40)
    assert windows.token_counts(fast, ["good movie", "the plot " * 10]).tolist() == [4, 22]


def test_short_texts_are_read_as_before_bit_for_bit(tiny_bert):
    texts = ["a good movie", "the plot is dull and slow but the actor is witty"]
    windowed, cut = make_encoder(tiny_bert), make_encoder(tiny_bert, "truncate")
    chunk = windowed.read(texts)
    assert chunk.plan is None and chunk.input_ids == windowed.tokenize(texts).input_ids
    for name, vectors in embed_texts(windowed, texts, ["mean", "max", "cls"]).items():
        assert np.array_equal(vectors, embed_texts(cut, texts, [name])[name])


def test_aggregation_equals_a_hand_computation_on_the_tiny_model(tiny_bert):
    encoder = make_encoder(tiny_bert)
    text = " ".join(["good", "movie", "the", "plot", "was", "dull", "but", "fun"] * 6)  # 48 tokens + 2
    whole = encoder.fast_tokenizer.encode(text).ids
    parts = windows.split(whole, MAX, 4, 1, 1)
    assert len(parts) == 5
    per_window = [encoder.forward([p]) for p in parts]
    means = np.stack([o.last_hidden[0].float().mean(0).numpy() for o in per_window])
    maxes = np.stack([o.last_hidden[0].float().max(0).values.numpy() for o in per_window])
    cls = np.stack([o.last_hidden[0, 0].float().numpy() for o in per_window])
    weights = np.array([len(p) - 2 for p in parts], dtype=float)
    got = embed_texts(encoder, ["fine", text], ["mean", "max", "cls"])
    np.testing.assert_allclose(got["mean"][1], weights @ means / weights.sum(), atol=1e-5)
    np.testing.assert_allclose(got["cls"][1], weights @ cls / weights.sum(), atol=1e-5)
    np.testing.assert_allclose(got["max"][1], maxes.max(0), atol=1e-5)
    assert not np.allclose(got["mean"][1], means[0], atol=1e-3)  # not simply the first window


def test_each_aggregation_folds_windows_as_by_hand():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(5, 3)).astype(np.float32)  # text 0: rows 0-2, text 1: rows 3-4
    plan = windows.WindowPlan(np.array([0, 0, 0, 1, 1]), np.array([4.0, 4.0, 1.0, 2.0, 3.0]),
                              np.array([1, 0, 0, 1, 0], bool), np.array([0, 0, 1, 0, 1], bool), np.array([3, 2]))
    expected = {"token_mean": lambda v, w: w @ v / w.sum(), "mean": lambda v, w: v.mean(0),
                "max": lambda v, w: v.max(0), "first": lambda v, w: v[0], "head_tail": lambda v, w: (v[0] + v[-1]) / 2}
    assert set(expected) == set(AGGREGATIONS)
    for name, by_hand in expected.items():
        folded = Folded(name, 2, (3,))
        for rows in (np.array([4, 0]), np.array([2, 3, 1])):  # batches arrive longest-first, not in order
            folded.add(plan.text_of[rows], plan, rows, vectors[rows])
        for text, rows in enumerate((slice(0, 3), slice(3, 5))):
            np.testing.assert_allclose(folded.value()[text], by_hand(vectors[rows], plan.weights[rows]), rtol=1e-6)


class Bar:
    def __init__(self) -> None:
        self.steps: list[int] = []

    def update(self, n: int) -> None:
        self.steps.append(n)


def test_the_progress_bar_counts_texts_not_windows(tiny_bert):
    encoder = make_encoder(tiny_bert)
    chunk = encoder.read(["fine", " ".join(["good movie"] * 40), "dull"])
    assert len(chunk.input_ids) == 2 + 8
    bar = Bar()
    encoder.encode(chunk, ["mean"], bar.update)
    assert sum(bar.steps) == 3 and len(bar.steps) > 1


MILLION = """
import resource, sys
import numpy as np
from pipeline.embed.encoder import load_encoder
from pipeline.embed.settings import EncoderOptions
from pipeline.embed.stage import embed_texts
encoder = load_encoder(sys.argv[1], EncoderOptions(128, "cpu", "fp32", runtime="torch"))
embed_texts(encoder, ["good movie " * 2000], ["mean", "max"])  # warm: every lazy load done
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
text = ("good movie the plot was dull but fun " * 30000)[:1_000_000]
vectors = embed_texts(encoder, [text, "fine"], ["mean", "max"])
grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
assert np.isfinite(vectors["mean"]).all() and vectors["mean"].shape == (2, 32)
print(f"{grew:.0f}")
"""


def test_a_million_character_text_is_embedded_in_flat_memory(tiny_bert):
    """Tokenised whole (and cut), a million characters cost the tokenizer about 170 MB; in pieces and folded batch
    by batch, the peak grows by about 12 MB: under 60 MB with room for allocator noise."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(MILLION), str(tiny_bert)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) < 60


def test_a_text_over_the_cap_is_refused_in_one_line(tiny_bert, monkeypatch):
    monkeypatch.setattr(windows, "MAX_TEXT_CHARS", 100)
    with pytest.raises(PipelineError, match=r"^text 2 has 101 characters, over the 100 one text may have: split"):
        embed_texts(make_encoder(tiny_bert), ["fine", "a" * 101], ["mean"])


SETTINGS = EncoderSettings(ModelIdentity("m", "folder", None, "w", "t"), 128, "fp32", "torch")


def test_the_key_holds_the_reading_only_when_some_text_is_long():
    short, long = np.array([10, 128]), np.array([10, 129])
    window, cut = windows.Reading(), windows.Reading("truncate")
    assert windows.keyed(SETTINGS, window, short, 2) == windows.keyed(SETTINGS, cut, short, 2) == SETTINGS
    assert cache_key(windows.keyed(SETTINGS, window, short, 2), "d") == cache_key(SETTINGS, "d")
    keys = {cache_key(windows.keyed(SETTINGS, r, long, 2), "d") for r in (window, cut, windows.Reading("window", 8))}
    assert len(keys) == 3 and cache_key(SETTINGS, "d") not in keys
    assert windows.keyed(SETTINGS, cut, long, 2).window_overlap is None
    assert EncoderSettings.from_json(windows.keyed(SETTINGS, window, long, 2).to_json()).window_overlap == 32


def info(mode: str, over: int, texts: int = 100) -> LongTexts:
    lengths = np.array([200] * over + [20] * (texts - over))
    return windows.long_texts(lengths, 128, windows.Reading(mode), 2)


def test_the_lines_say_how_texts_were_read():
    assert windows.describe(info("window", 0), 128) == "all 100 texts fit in 128 tokens (median 20, p95 20 tokens)"
    assert windows.describe(info("window", 10), 128) == ("10 of 100 texts over 128 tokens (median 20, p95 200 "
                                                         "tokens): read whole in 20 windows (2.0 per long text, "
                                                         "overlap 32)")
    assert windows.describe(info("truncate", 10), 128).endswith("): cut at 128")


def test_a_cut_share_over_five_percent_is_warned_about_naming_the_option():
    assert windows.warning(info("truncate", 5), 128) is None
    assert windows.warning(info("window", 50), 128) is None
    assert windows.warning(info("truncate", 6), 128) == ("warning: 6% of the texts (6 of 100) were cut at 128 tokens "
                                                         "and their ends never read: --long-texts window reads them "
                                                         "whole")


def test_the_first_window_is_the_cut_and_every_aggregation_comes_from_one_set_of_passes(tiny_bert):
    from pipeline.embed.stage import embed_aggregations

    texts = ["fine", " ".join(["good movie the plot was dull"] * 9)]
    got = embed_aggregations(make_encoder(tiny_bert), texts, "mean", list(AGGREGATIONS))
    cut = embed_texts(make_encoder(tiny_bert, "truncate"), texts, ["mean"])["mean"]
    np.testing.assert_allclose(got["first"], cut, atol=1e-5)
    np.testing.assert_allclose(got["token_mean"], embed_texts(make_encoder(tiny_bert), texts, ["mean"])["mean"],
                               atol=1e-6)
    assert all(np.array_equal(v[0], cut[0]) for v in got.values()), "a short text is itself under every aggregation"
    assert not np.allclose(got["head_tail"][1], got["first"][1], atol=1e-4)
