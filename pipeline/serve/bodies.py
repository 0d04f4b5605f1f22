"""What a request body must be, checked before anything is queued: every refusal is a status and one line that says
what to send instead (an HTTP client shows it as it is)."""

import json
from collections.abc import AsyncIterator


class BadRequest(Exception):
    """A request the server refuses: `status` (4xx) and a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


async def read_body(declared: str | None, stream: AsyncIterator[bytes], limit: int) -> bytes:
    """The body, refused (413) as soon as it passes `limit` bytes: by its Content-Length before reading anything,
    else while it streams in, so a huge or endless body never sits in memory."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"the body has {declared} bytes, more than --max-body-bytes {limit}")
    chunks, size = [], 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"the body has more than --max-body-bytes {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_texts(body: bytes, max_texts: int) -> list[str]:
    """The texts of a {"texts": [...]} body: a non-empty list of at most `max_texts` non-empty strings."""
    document = _json(body)
    if not isinstance(document, dict):
        raise BadRequest(422, 'send a JSON object: {"texts": ["a text", ...]}')
    unknown = sorted(set(document) - {"texts"})
    if unknown:
        raise BadRequest(422, f"unknown field {unknown[0][:40]!r}: send {{\"texts\": [...]}} only")
    if "texts" not in document:
        raise BadRequest(422, 'no "texts" field: send {"texts": ["a text", ...]}')
    texts = document["texts"]
    if not isinstance(texts, list):
        hint = ' (one text goes in a list: {"texts": ["..."]})' if isinstance(texts, str) else ""
        raise BadRequest(422, f'"texts" is {_kind(texts)}, not a list of strings{hint}')
    if not texts:
        raise BadRequest(422, '"texts" is empty: send at least one text')
    if len(texts) > max_texts:
        raise BadRequest(413, f"{len(texts)} texts in one request, more than --max-client-batch {max_texts}: "
                              "split them over several requests")
    for i, text in enumerate(texts):
        _check_text(i, text)
    return texts


def _json(body: bytes):
    if not body.strip():
        raise BadRequest(400, 'the body is empty: send JSON {"texts": [...]}')
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise BadRequest(400, f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except UnicodeDecodeError:
        raise BadRequest(400, "invalid JSON: the body is not UTF-8 text") from None
    except RecursionError:
        raise BadRequest(400, "invalid JSON: nested too deeply") from None


def _check_text(i: int, text: object) -> None:
    if not isinstance(text, str):
        raise BadRequest(422, f"texts[{i}] is {_kind(text)}, not a string")
    if not text.strip():
        raise BadRequest(422, f"texts[{i}] is empty or whitespace only: remove it or fill it")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadRequest(422, f"texts[{i}] holds a lone surrogate (\\u{ord(text[exc.start]):04x} at character "
                              f"{exc.start}), which is not text: send valid Unicode") from None


def _kind(value: object) -> str:
    names = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a string",
             list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)
