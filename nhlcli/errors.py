"""The one exception type that reaches users as a one-line message."""


class NhlError(Exception):
    """A problem with the user's input or environment, with a message saying how to fix it.

    The CLI prints these as a single ``error: ...`` line and exits non-zero, without a
    traceback. Library callers can catch it like any exception.
    """
