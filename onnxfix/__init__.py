"""onnxfix: make ONNX models with random-sampling nodes deterministic and deployable.

`rewrite`, `inspect` and `noise_feeds` (onnxfix.api) are imported on first use, so the
`onnxfix` command starts without loading onnx for `--help` (issue 10: start-up).
"""

import sys
import types

from onnxfix.errors import ModelError, OnnxfixError, ParityError, UsageError

__all__ = ["ModelError", "OnnxfixError", "ParityError", "UsageError", "inspect", "noise_feeds",
           "rewrite"]
__version__ = "0.1.0"


def _api_function(name: str) -> property:
    """A package attribute that is onnxfix.api's function `name`, imported when first read.

    A property rather than a module `__getattr__`: importing the submodule onnxfix.rewrite
    sets the package attribute `rewrite` to that module, and the setter ignores it, so
    `onnxfix.rewrite` stays the function whichever module is imported first (as it was when
    this file imported onnxfix.api eagerly)."""

    def read(_module):
        from onnxfix import api  # noqa: PLC0415 - the point: loaded on first use

        return getattr(api, name)

    def write(_module, _value):
        pass  # the import system binding the submodule of the same name

    return property(read, write)


class _Package(types.ModuleType):
    rewrite = _api_function("rewrite")
    inspect = _api_function("inspect")
    noise_feeds = _api_function("noise_feeds")


sys.modules[__name__].__class__ = _Package
