"""Errors a user can cause, each with the exit code the CLI documents."""

from __future__ import annotations


class OnnxfixError(Exception):
    """Base class: a problem with the model or the request, reported as one line."""

    exit_code = 3


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
