"""Validate pass: the output must pass every check the input passed.

Effect: none; raises ModelError (an internal error) when the rewritten model fails the onnx
checker at the level the input passes (full_check where the input passes it, else basic).
An input that passes no check is not checked against (API callers may hand in any proto).
"""

from __future__ import annotations

from operator import attrgetter

import onnx

from onnxfix.errors import ModelError, one_line
from onnxfix.io import checkable


def validate(original: onnx.ModelProto, new: onnx.ModelProto, *,
             full_follows: bool = False, patch: onnx.ModelProto | None = None
             ) -> onnx.ModelProto:
    """call(new) -> new, or ModelError (see the module doc).

    The output is checked first: when it passes the full check, how the input fares does
    not matter, so the input is only checked when the output fails (one full check of a
    large graph instead of two).

    full_follows: the output passes the full check's inference whenever it passes the basic
    check (proven by passes.local_check from the plan and the replacement nodes alone): its
    basic check then stands for the full one, and only a failure is looked into as below.
    patch: with full_follows, the replacements in a model of their own, whose basic check
    stands for the output's (passes.local_check, steps 6-9): when it passes, the output is
    not checked whole at all; when it fails, the output is checked whole as below, so a
    refusal reads the same."""
    if full_follows and patch is not None and _check_error(checkable(patch), False) is None:
        return new
    if _has_external(original):  # the checker would look for the weights file in the cwd
        original, checked = checkable(original), checkable(new)
    else:
        checked = new
    if full_follows and _check_error(checked, False) is None:
        return new
    for strict in (True, False):
        error = _check_error(checked, strict)
        if error is None:
            return new
        if _check_error(original, strict) is None:
            raise ModelError(f"internal error: the rewritten model fails the onnx checker "
                             f"({'full' if strict else 'basic'} check): {error}")
    return new  # the input passes no check either: nothing to hold the output to


def _check_error(model: onnx.ModelProto, strict: bool) -> str | None:
    """The checker's complaint about `model` at one level (one line), or None."""
    try:
        onnx.checker.check_model(model, full_check=strict)
    except Exception as e:  # noqa: BLE001 - the checker raises several types
        return one_line(e)
    return None


def _has_external(model: onnx.ModelProto) -> bool:
    return onnx.TensorProto.EXTERNAL in map(_DATA_LOCATION, model.graph.initializer)


_DATA_LOCATION = attrgetter("data_location")
