"""Validate pass: the output must pass every check the input passed.

Effect: none; raises ModelError (an internal error) when the rewritten model fails the onnx
checker at the level the input passes (full_check where the input passes it, else basic).
An input that passes no check is not checked against (API callers may hand in any proto).
"""

from __future__ import annotations

import onnx

from onnxfix.errors import ModelError, one_line
from onnxfix.io import checkable


def validate(original: onnx.ModelProto, new: onnx.ModelProto) -> onnx.ModelProto:
    """call(new) -> new, or ModelError (see the module doc)."""
    if _has_external(original):  # the checker would look for the weights file in the cwd
        original, checked = checkable(original), checkable(new)
    else:
        checked = new
    strict = None
    for level in (True, False):
        try:
            onnx.checker.check_model(original, full_check=level)
            strict = level
            break
        except Exception:  # noqa: BLE001 - e.g. a wrong declared shape in the input model
            continue
    if strict is None:
        return new
    try:
        onnx.checker.check_model(checked, full_check=strict)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"internal error: the rewritten model fails the onnx checker "
                         f"({'full' if strict else 'basic'} check): {one_line(e)}") from None
    return new


def _has_external(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
