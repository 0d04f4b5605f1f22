"""The one exception type users see.

Anything raised as `PipelineError` is a problem with the user's input or settings; the CLI prints its message as a
single line (what is wrong, and how to fix it) and exits non-zero, without a traceback.
"""


class PipelineError(Exception):
    """A problem the user can fix; the message says what is wrong and what to do."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-blank line of an error, cut to `limit` characters: a library's error can be pages long (a
    converter's traceback, Ray's wrapped one), while the message the user sees must stay one line."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def capped(items, limit: int = 10) -> str:
    """A comma list for a one-line message: at most `limit` items, then how many more (a file can have thousands of
    columns or labels, and one line must stay one short line)."""
    shown = [str(item) for item in items]
    more = f" and {len(shown) - limit} more" if len(shown) > limit else ""
    return ", ".join(shown[:limit]) + more
