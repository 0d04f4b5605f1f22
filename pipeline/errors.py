"""The one exception type users see.

Anything raised as `PipelineError` is a problem with the user's input or settings; the CLI prints its message as a
single line (what is wrong, and how to fix it) and exits non-zero, without a traceback.
"""


class PipelineError(Exception):
    """A problem the user can fix; the message says what is wrong and what to do."""
