"""User-facing errors.

A `UserError` is a mistake in what the user gave us (a file, a row, a flag). The CLI prints its
message as one paragraph and exits with status 2, without a traceback. Everything else is a bug
and keeps its traceback.
"""


class UserError(Exception):
    """A problem with user input. The message names the file, row, field or flag."""
