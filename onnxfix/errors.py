"""Errors a user can cause, each with the exit code the CLI documents.

Messages name the API parameters a caller can change through `param`, `entries` and
`param_name` references embedded in the text: `str(error)` renders them as the Python API
spells them (`mode='x'`, `dims={'batch': N}`), and the CLI renders them as its flags
(`--mode 'x'`, `--dim batch=N`) with `error.render(...)` and its own table.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_REF = re.compile("\x00([^\x01\x00]*)\x01([vhne])\x01([^\x00]*)\x00")
_SEP, _ITEM = "\x02", "\x03"

# (parameter, kind, payload) -> text; kind: v value, h value in a hint, e dict entries, n name
RefRenderer = Callable[[str, str, str], str]


def param(name: str, value, *, hint: bool = False) -> str:
    """`name=value` in the API's words (a hint: the CLI shows the value unquoted)."""
    text = repr(value) + _SEP + (str(value) if hint else repr(value))
    return f"\x00{name}\x01{'h' if hint else 'v'}\x01{text}\x00"


def entries(name: str, items: dict) -> str:
    """`name={'key': value, ...}` in the API's words (`value` shown as given, e.g. N)."""
    text = _ITEM.join(f"{k}{_SEP}{v}" for k, v in items.items())
    return f"\x00{name}\x01e\x01{text}\x00"


def param_name(name: str) -> str:
    """The parameter's bare name."""
    return f"\x00{name}\x01n\x01\x00"


def api_words(name: str, kind: str, payload: str) -> str:
    if kind == "n":
        return name
    if kind == "e":
        items = [item.split(_SEP, 1) for item in payload.split(_ITEM) if item]
        return name + "={" + ", ".join(f"{k!r}: {v}" for k, v in items) + "}"
    return f"{name}={payload.split(_SEP, 1)[0]}"


def render(text: str, words: RefRenderer = api_words) -> str:
    return _REF.sub(lambda m: words(m.group(1), m.group(2), m.group(3)), text)


class OnnxfixError(Exception):
    """Base class: a problem with the model or the request, reported as one line."""

    exit_code = 3

    def __str__(self) -> str:
        return render(super().__str__())

    def render(self, words: RefRenderer) -> str:
        """The message with its parameter references in other words (the CLI's flags)."""
        return render(super().__str__(), words)


class UsageError(OnnxfixError):
    """A flag or argument that cannot be honoured (exit 2)."""

    exit_code = 2


class ModelError(OnnxfixError):
    """The model cannot be read or processed (exit 3)."""

    exit_code = 3


class ParityError(OnnxfixError):
    """The rewritten model does not reproduce the original (exit 1); carries the report."""

    exit_code = 1

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


def one_line(e: BaseException, limit: int | None = 300) -> str:
    """An exception as one line for an error message: its text with runs of whitespace
    (newlines included) collapsed, cut at `limit` characters (None: whole); the type name if
    it has none."""
    text = " ".join(str(e).split())
    return text[:limit] if text else type(e).__name__
