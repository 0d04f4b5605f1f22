"""Long texts read whole: a text over --max-length tokens is split into overlapping windows, each a full model input.

Why windows and not a cut: reviews, tickets and articles often say what matters at the end ("...in the end, a waste
of two hours"); a cut at 128 tokens never sees it. Each window keeps the model's own special tokens ([CLS] ... [SEP])
so it is an input the model was trained on, and consecutive windows share `overlap` tokens so that no sentence is only
ever seen cut in two. A text that fits is one row, exactly as before, so its vector is bitwise what it was.

Memory stays flat whatever the length: a long text is tokenised in pieces of PIECE_CHARS characters (cut at white
space, which the pre-tokenisers of BERT, WordPiece, BPE and SentencePiece models split on anyway), so the tokenizer
never holds a million-character text's offsets at once, and the windows' vectors are folded into the text's vector
batch by batch (aggregate.py). Texts over MAX_TEXT_CHARS characters are refused with one line: their token ids alone
would be tens of megabytes, and no classifier needs a book per row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np

from pipeline.cache import EncoderSettings, LongTexts
from pipeline.errors import PipelineError

MODES = {"window": "texts over --max-length tokens are read whole, in overlapping windows",
         "truncate": "texts over --max-length tokens are cut there (what every run did before windows)"}
DEFAULT_MODE = "window"
DEFAULT_OVERLAP = 32  # tokens shared by consecutive windows, at most a third of a window's text tokens
MAX_TEXT_CHARS = 5_000_000  # about 1.2 million tokens: some 10,000 windows of 128
PIECE_CHARS = 20_000  # characters tokenised at once in a long text
CUT_WARNING_SHARE = 0.05  # with 'truncate', a larger share of cut texts gets a warning
COUNT_BLOCK = 1024  # texts tokenised at once to count their tokens


@dataclass(frozen=True)
class Reading:
    """How texts over max length are read: 'window' (with `overlap` tokens shared by neighbours) or 'truncate'."""

    mode: str = DEFAULT_MODE
    overlap: int | None = None  # None: DEFAULT_OVERLAP, or a third of a short window

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise PipelineError(f"unknown --long-texts {self.mode!r}: choose from {', '.join(MODES)}")
        if self.overlap is not None and self.overlap < 0:
            raise PipelineError(f"--window-overlap {self.overlap} is negative: give 0 or more tokens")

    @property
    def windows(self) -> bool:
        return self.mode == "window"

    def window(self, max_length: int, specials: int) -> tuple[int, int]:
        """(text tokens per window, overlap), checked: each window must move on by at least one token."""
        width = max_length - specials
        overlap = min(DEFAULT_OVERLAP, width // 3) if self.overlap is None else self.overlap
        if self.windows and width < 1:
            raise PipelineError(f"--max-length {max_length} holds only the model's {specials} special tokens, no text, "
                                f"so a text cannot be read in windows: use --max-length {specials + 1} or more, or "
                                "--long-texts truncate")
        if self.windows and overlap >= width:
            raise PipelineError(f"--window-overlap {overlap} leaves windows no room to move: a window of "
                                f"--max-length {max_length} holds {width} text tokens; use 0..{width - 1}")
        return width, overlap

    @classmethod
    def of(cls, settings: EncoderSettings) -> Reading:
        """A run's reading: its own where its data had long texts, else the default (a run made only of short texts
        reads long ones in windows, as embed does by default)."""
        if settings.long_texts is None:
            return cls()
        return cls(settings.long_texts, settings.window_overlap)


def keyed(settings: EncoderSettings, reading: Reading, lengths: np.ndarray, specials: int) -> EncoderSettings:
    """The settings a cache is keyed on. The mode (and, for windows, the overlap) join the key only when some text is
    over max length: for data whose every text fits they change no vector, so short-text data keeps the key (and the
    cache) it had before windows existed, whichever mode is asked for."""
    plain = replace(settings, long_texts=None, window_overlap=None)
    if not (lengths > settings.max_length).any():
        return plain
    overlap = reading.window(settings.max_length, specials)[1] if reading.windows else None
    return replace(plain, long_texts=reading.mode, window_overlap=overlap)


def specials(fast) -> tuple[int, int]:
    """How many special tokens the tokenizer puts before a text and after it (BERT: [CLS] and [SEP], 1 and 1).
    Padding is switched off first: a tokenizer.json may ask for it, and pad tokens count as special."""
    fast.no_truncation()
    fast.no_padding()
    mask = fast.encode("a", add_special_tokens=True).special_tokens_mask
    before = next((i for i, m in enumerate(mask) if not m), len(mask))
    after = next((i for i, m in enumerate(reversed(mask)) if not m), 0)
    return before, after


def pieces(text: str, size: int = PIECE_CHARS) -> Iterator[str]:
    """`text` in consecutive pieces of about `size` characters, each cut just before white space (a piece keeps its
    leading space, which byte-level BPE and SentencePiece tokenisers fold into the next token as they would whole)."""
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            space = max(text.rfind(" ", start + 1, end), text.rfind("\n", start + 1, end))
            end = space if space > start else end
        yield text[start:end]
        start = end


def check_size(texts: Sequence[str], first_row: int = 1) -> None:
    """Refuse a text over MAX_TEXT_CHARS before anything is computed."""
    big = next((i for i, t in enumerate(texts) if len(t) > MAX_TEXT_CHARS), None)
    if big is not None:
        raise PipelineError(f"text {first_row + big} has {len(texts[big]):,} characters, over the "
                            f"{MAX_TEXT_CHARS:,} one text may have: split it into several rows")


def text_ids(fast, text: str) -> np.ndarray:
    """A text's ids without special tokens and without truncation, tokenised piece by piece (one piece's encoding,
    offsets and all, alive at a time)."""
    fast.no_truncation()
    fast.no_padding()
    parts = [np.asarray(fast.encode(piece, add_special_tokens=False).ids, dtype=np.int32) for piece in pieces(text)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)


def token_counts(fast, texts: Sequence[str]) -> np.ndarray:
    """Every text's whole token count, special tokens included, as the model would see it uncut."""
    check_size(texts)
    added = sum(specials(fast))
    counts = np.zeros(len(texts), dtype=np.int64)
    for start in range(0, len(texts), COUNT_BLOCK):
        block = texts[start:start + COUNT_BLOCK]
        short = [i for i, t in enumerate(block) if len(t) <= PIECE_CHARS]
        fast.no_truncation()
        fast.no_padding()
        encode = getattr(fast, "encode_batch_fast", fast.encode_batch)  # no offsets: a third faster (tokenizers 0.21)
        for i, e in zip(short, encode([block[i] for i in short], add_special_tokens=False), strict=True):
            counts[start + i] = len(e.ids) + added
        for i in set(range(len(block))) - set(short):
            counts[start + i] = len(text_ids(fast, block[i])) + added
    return counts


def split(ids: Sequence[int], max_length: int, overlap: int, before: int, after: int) -> list[list[int]]:
    """Windows of one tokenised text (`ids` with its `before` and `after` special tokens): each at most `max_length`
    long, each with the special tokens, consecutive ones sharing `overlap` text tokens. A text that fits is itself."""
    ids = list(ids)
    if len(ids) <= max_length:
        return [ids]
    Reading("window", overlap).window(max_length, before + after)
    head, body, tail = ids[:before], ids[before:len(ids) - after], ids[len(ids) - after:]
    return [head + part + tail for part in body_windows(body, max_length - before - after, overlap)]


def body_windows(body: list[int], width: int, overlap: int) -> Iterator[list[int]]:
    """The text tokens of each window, left to right; the last one may be shorter (it is weighted by its length)."""
    step = width - overlap
    for start in range(0, max(len(body) - width, 0) + step, step):
        yield body[start:start + width]


def window_count(lengths: np.ndarray, max_length: int, overlap: int, added: int) -> np.ndarray:
    """Windows per text of `lengths` tokens (special tokens included): the number split() makes."""
    step = max_length - added - overlap
    over = np.maximum(lengths - max_length, 0)
    return 1 + -(-over // step)


@dataclass(frozen=True)
class WindowPlan:
    """Which text each model row of a chunk belongs to, once some text in it was split into windows."""

    text_of: np.ndarray  # row -> its text
    weights: np.ndarray  # row -> its text tokens (special tokens not counted)
    first: np.ndarray  # row is its text's first window
    last: np.ndarray  # row is its text's last window
    windows: np.ndarray  # text -> its rows


@dataclass(frozen=True)
class Chunk:
    """A chunk of texts as the model runs it: one row per text, or per window of a long text (then `plan` says
    whose). `truncated` and `text_tokens` are per text: over max length, and its whole token count."""

    input_ids: list[list[int]]
    truncated: np.ndarray
    text_tokens: np.ndarray
    plan: WindowPlan | None = None

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per row, what the token-budget batches are made of."""
        return np.fromiter(map(len, self.input_ids), dtype=np.int64, count=len(self.input_ids))


def read_chunk(fast, texts: Sequence[str], tokenize: Callable, max_length: int, reading: Reading) -> Chunk:
    """The rows the model runs for `texts`, from `tokenize` (encoder.tokenize, which cuts at max length): as they are
    when the mode is 'truncate' or nothing was cut (today's rows, bit for bit), else each cut text re-tokenised whole
    and split into windows that take its own special tokens. A text of more than PIECE_CHARS characters is cut by
    `tokenize` only in its first piece: cut whole, it would cost the tokenizer an encoding per window at once."""
    if not reading.windows:
        tokens = tokenize(list(texts))
        return Chunk(tokens.input_ids, tokens.truncated, tokens.lengths)
    tokens = tokenize([t if len(t) <= PIECE_CHARS else next(pieces(t)) for t in texts])
    cut = tokens.truncated | np.fromiter((len(t) > PIECE_CHARS for t in texts), dtype=bool, count=len(texts))
    if not cut.any():
        return Chunk(tokens.input_ids, tokens.truncated, tokens.lengths)
    before, after = specials(fast)
    width, overlap = reading.window(max_length, before + after)
    rows: list[list[int]] = []
    owner, counts = [], tokens.lengths.copy()
    for i, ids in enumerate(tokens.input_ids):
        body = text_ids(fast, texts[i]).tolist() if cut[i] else None
        parts = [ids] if body is None else [ids[:before] + part + ids[len(ids) - after:]
                                            for part in body_windows(body, width, overlap)]
        counts[i] = len(ids) if body is None else len(body) + before + after
        rows.extend(parts)
        owner.extend([i] * len(parts))
    return Chunk(rows, counts > max_length, counts, _plan(np.asarray(owner), rows, before + after, len(texts)))


def _plan(owner: np.ndarray, rows: list[list[int]], added: int, n_texts: int) -> WindowPlan:
    weights = np.fromiter((len(r) - added for r in rows), dtype=np.float64, count=len(rows))
    first = np.r_[True, owner[1:] != owner[:-1]]
    last = np.r_[owner[1:] != owner[:-1], True]
    return WindowPlan(owner, weights, first, last, np.bincount(owner, minlength=n_texts))


def long_texts(lengths: np.ndarray, max_length: int, reading: Reading, added: int) -> LongTexts:
    """The record of how a set of texts (their whole token counts) was read, for the manifest and the messages."""
    over, overlap = lengths > max_length, reading.window(max_length, added)[1]
    rows = window_count(lengths, max_length, overlap, added) if reading.windows else np.ones_like(lengths)
    median, p95 = (np.percentile(lengths, [50, 95]) if len(lengths) else (0.0, 0.0))
    return LongTexts(reading.mode, overlap, len(lengths), int(over.sum()), float(median), float(p95),
                     int(rows.sum()))


def warning(info: LongTexts, max_length: int) -> str | None:
    """With 'truncate', a cut share over CUT_WARNING_SHARE gets a line naming the option that reads texts whole."""
    if info.mode != "truncate" or not info.texts or info.over / info.texts <= CUT_WARNING_SHARE:
        return None
    return (f"warning: {info.over / info.texts:.0%} of the texts ({info.over} of {info.texts}) were cut at "
            f"{max_length} tokens and their ends never read: --long-texts window reads them whole")
