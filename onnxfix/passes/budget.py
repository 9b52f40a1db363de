"""Constant mode's preconditions: every frozen array has a concrete shape, under the cap."""

from __future__ import annotations

import math

from onnxfix.errors import ModelError, entries, param_name
from onnxfix.graph.noisedims import DERIVED
from onnxfix.graph.shapes import Shape
from onnxfix.ops import np_dtype


def check_constant_budget(plans: list, max_bytes: int, input_dims: list[str]) -> None:
    """Refuse, before anything is allocated, a draw without a concrete shape or over the cap."""
    total = 0
    for p in plans:
        shape = p.declared
        if shape is None or not all(isinstance(d, int) for d in shape):
            raise _not_concrete(p, shape, input_dims)
        dtype = p.dtypes.draw if p.freezes_draw else p.dtypes.noise
        itemsize = np_dtype(dtype).itemsize
        if 0 in shape and math.prod(d for d in shape if d) * itemsize > max_bytes:
            # empty, yet numpy refuses to make an array with such dims
            raise ModelError(f"{p.site.describe()}: absurd shape {shape_text(shape)} for a "
                             f"constant draw")
        total += math.prod(shape) * itemsize
        if total > max_bytes:
            raise ModelError(
                f"{p.site.describe()}: constant draws would take {total:,} bytes, over the "
                f"cap of {max_bytes:,}; raise it with {param_name('max_draw_bytes')} if this "
                f"is intended"
            )


def _not_concrete(p, shape: Shape, input_dims: list[str]) -> ModelError:
    symbolic = [d for d in (shape or []) if isinstance(d, str)]
    derived = [d.name for d in p.dims if d.kind == DERIVED]
    if derived:
        return ModelError(
            f"{p.site.describe()}: constant mode needs a concrete shape, but its shape "
            f"{shape_text(shape)} has {'a dim' if len(derived) == 1 else 'dims'} that "
            f"shape inference cannot compute from the input dims; fix the model's "
            f"input dims with {entries('dims', {'NAME': 'N'})} (its dims: "
            f"{', '.join(input_dims) or 'none'})")
    if shape is not None and symbolic and None not in shape:
        return ModelError(
            f"{p.site.describe()}: constant mode needs a concrete shape, but "
            f"{_plural_dims(symbolic)} symbolic; fix "
            f"{'it' if len(symbolic) == 1 else 'them'} with "
            + entries("dims", {d: "N" for d in symbolic})
        )
    return ModelError(
        f"{p.site.describe()}: constant mode needs a concrete shape, but its shape "
        f"{shape_text(shape)} cannot be determined; fix the model's symbolic dims "
        f"with {entries('dims', {'NAME': 'N'})}"
    )


def _plural_dims(names: list[str]) -> str:
    if len(names) == 1:
        return f"dim {names[0]} is"
    return "dims " + ", ".join(names) + " are"


def shape_text(shape: Shape) -> str:
    if shape is None:
        return "[unknown rank]"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
