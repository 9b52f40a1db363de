"""Start-up (issue 10): typer 0.29 coerces every command-line value through a pydantic
TypeAdapter it builds per parameter, and importing pydantic and building ~20 adapters took
about a quarter of a tiny `--no-check` run. `install` gives each parameter of the click
command typer built a coercion that handles the plainly valid values of the types onnxfix's
CLI uses (str, int, float, Path, str enums, lists of str) with typer's own pydantic-free
helpers, and hands every other value to typer's adapter, built then: errors, their texts and
unusual spellings stay typer's.
"""

from __future__ import annotations

import math
import re
from enum import Enum
from pathlib import Path
from typing import Any, get_args, get_origin

# typer's own coercion pieces, found by `install` (None: a typer without them; nothing is
# installed then and typer coerces every value itself)
_TYPER: dict[str, Any] = {}

_INT = re.compile(r"-?(0|[1-9][0-9]{0,17})")
_FLOAT = re.compile(r"-?(0|[1-9][0-9]{0,17})(\.[0-9]{1,17})?([eE][-+]?[0-9]{1,2})?")


class _NotPlain(Exception):
    """The value is not one the fast path decides: typer's adapter does."""


class PlainCoercion:
    """A typer RuntimeParam stand-in: fast for plain values, typer's own for the rest."""

    def __init__(self, descriptor):
        if not _typer_pieces():
            raise RuntimeError("this typer lacks the coercion pieces PlainCoercion uses")
        self.descriptor = descriptor
        self._typer = None

    def coerce(self, value: Any, param, ctx) -> Any:
        try:
            return self._plain(value, param, ctx)
        except _NotPlain:
            pass
        if self._typer is None:
            self._typer = _TYPER["build_runtime_param"](self.descriptor)
        return self._typer.coerce(value, param=param, ctx=ctx)

    def _plain(self, value: Any, param, ctx) -> Any:
        multi = param.multiple or param.nargs == -1
        if value is None:
            return () if multi else None
        annotation = self.descriptor.annotation
        if multi:
            if get_origin(annotation) is not list or not isinstance(value, (list, tuple)):
                raise _NotPlain
            (item,) = get_args(annotation)
            return [self._leaf(item, v, param, ctx) for v in value]
        return self._leaf(annotation, value, param, ctx)

    def _leaf(self, annotation: Any, value: Any, param, ctx) -> Any:
        info = self.descriptor.parameter_info
        if info.parser is not None or self.descriptor.file_annotation is not None:
            raise _NotPlain
        if annotation is str and isinstance(value, str):
            return value
        if annotation in (int, float):
            return _number(annotation, value, info)
        if isinstance(annotation, type) and issubclass(annotation, Enum):
            try:
                return _TYPER["coerce_cli_choice"](value, choices=list(annotation),
                                         case_sensitive=info.case_sensitive, ctx=ctx)
            except ValueError:
                raise _NotPlain from None
        if annotation is Path and info.path_type is None:
            return _path(value, info, param, ctx)
        raise _NotPlain


def _number(annotation: type, value: Any, info) -> int | float:
    if info.min is not None or info.max is not None or info.clamp:
        raise _NotPlain
    if type(value) is annotation:
        return value
    pattern = _INT if annotation is int else _FLOAT
    if isinstance(value, str) and pattern.fullmatch(value):
        number = annotation(value)
        if annotation is int or math.isfinite(number):
            return number
    raise _NotPlain


def _path(value: Any, info, param, ctx) -> Path:
    if isinstance(value, str) and value and "\0" not in value:
        value = Path(value)
    if not isinstance(value, Path):
        raise _NotPlain
    return _TYPER["coerce_cli_path"](value, info, path_type=Path, param=param, ctx=ctx)


def install(command) -> None:
    """Give every typer parameter of `command` (a click group or command, recursively) the
    plain coercion; a typer without the per-parameter runtime hook is left as it is."""
    if not _typer_pieces():
        return
    for param in getattr(command, "params", []):
        if hasattr(param, "_runtime_param") and hasattr(param, "type_descriptor"):
            param._runtime_param = PlainCoercion(param.type_descriptor)
    for sub in getattr(command, "commands", {}).values():
        install(sub)


def plain_help_option(option):
    """click makes the --help option per command on first use: give it the plain coercion."""
    if option is not None and _typer_pieces() and getattr(option, "_runtime_param", False) is None:
        option._runtime_param = PlainCoercion(option.type_descriptor)
    return option


def _typer_pieces() -> bool:
    """Whether this typer has the pieces the plain coercion uses (typer 0.29's private
    modules, already imported by typer itself: no cost)."""
    if not _TYPER:
        try:
            from typer._coercion import build_runtime_param  # noqa: PLC0415
            from typer._param_types import coerce_cli_choice, coerce_cli_path  # noqa: PLC0415
        except ImportError:
            return False
        _TYPER.update(build_runtime_param=build_runtime_param,
                      coerce_cli_choice=coerce_cli_choice, coerce_cli_path=coerce_cli_path)
    return True
