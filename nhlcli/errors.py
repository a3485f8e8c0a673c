"""The one exception type that reaches users as a one-line message."""

from __future__ import annotations

import re


class NhlError(Exception):
    """A problem with the user's input or environment, with a message saying how to fix it.

    The CLI prints these as a single ``error: ...`` line and exits non-zero, without a
    traceback. Library callers can catch it like any exception.

    ``option`` names the library argument at fault (``"device"``, ``"widths"``) and the message
    continues from it (``"'tpu' is not a device torch knows"``), so that the message never names
    a command-line flag: the CLI puts the flag in front (``--device 'tpu' is not ...``), a
    notebook user reads the argument's name (``device 'tpu' is not ...``). Other arguments a
    message mentions are written in backticks (``"lower `lr`"``): the CLI prints them as flags
    (``lower --lr``).
    """

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option

    def __str__(self) -> str:
        message = super().__str__()
        return f"{self.option} {message}" if self.option else message

    def for_command_line(self) -> str:
        """The message as the CLI prints it: the arguments spelled as their flags."""
        message = with_flags(super().__str__())
        if not self.option:
            return message
        if self.option.isupper():  # a positional argument: its metavar as the help shows it
            return f"{self.option} {message}"
        return f"{_flag(self.option)} {message}"


_ARGUMENT = re.compile(r"`([a-z][a-z0-9_]*)`")


def _flag(argument: str) -> str:
    return "--" + argument.replace("_", "-")


def with_flags(text: str) -> str:
    """Library text as the CLI prints it: arguments in backticks (`epochs`) as flags (--epochs)."""
    return _ARGUMENT.sub(lambda m: _flag(m.group(1)), text)
