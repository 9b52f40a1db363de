"""What each dim of a noise input is, and bounded dims sliced to what a run needs.

A noise dim is a constant, one of the graph inputs' dims, a loop's iteration count, a dim
derived from the input dims that inference left unnamed (its size follows from the input dims;
`noise_feeds` resolves it by shape inference), or data-dependent: its size comes from values
computed at run time (VITS: the frames of the flow noise are the sum of predicted durations).
A data-dependent dim needs a user-given bound N, named `<noise input>:<axis>`: the noise input
is declared with N there, and the graph slices the prefix a run needs, then reshapes it to the
exact shape the original node would have drawn, so a run that needs more than N fails in the
runtime instead of computing with too little noise.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from onnx import numpy_helper

from onnxfix.errors import ModelError, UsageError, entries, param, param_name
from onnxfix.graph.builder import NodeBuilder
from onnxfix.ops import OP_TABLE

CONSTANT, INPUT, ITERATIONS, DERIVED, BOUNDED, DATA = (
    "constant", "input", "iterations", "derived", "bounded", "data-dependent")


@dataclass
class NoiseDim:
    """One axis of a noise input (axis counts the leading iteration axes too)."""

    axis: int
    kind: str  # one of the constants above
    size: int | None = None  # constant and bounded dims (the bound)
    name: str = ""  # symbolic name (input, iterations, derived); bound name for data dims
    source: str = ""  # tensor whose shape gives the size at run time (derived, data dims)
    source_axis: int | None = None
    origin: str = ""  # data dims: what the size is computed from

    @property
    def declared(self):
        """What the noise input declares for this axis."""
        return self.size if self.size is not None else self.name

    def to_dict(self) -> dict:
        # the fields are plain values: no deep copy (asdict's) is needed, and it cost ~0.2 ms
        # per dim, which a rewrite pays twice per random node
        return {k: v for k in _FIELDS if (v := getattr(self, k)) not in ("", None)}


_FIELDS = tuple(f.name for f in fields(NoiseDim))


def bound_name(noise: str, axis: int) -> str:
    return f"{noise}:{axis}"


def source_axes(op_type: str, rank: int) -> list[int | None]:
    """For each axis of one invocation's noise, the axis of the node's input it follows."""
    return OP_TABLE[op_type].source_axes(rank)


def classify(noise: str, lead: list, shape: list, op_type: str, source: str | None,
             origin: str | None, per_iteration: bool, anchors: set[str],
             bounds: dict[str, int], lead_origins: list[str | None] | None = None
             ) -> list[NoiseDim]:
    """One NoiseDim per axis of [*lead, *shape]; fresh dims get no name yet (see `name_fresh`).

    `lead_origins[k]`: why the k-th loop's iteration count is not a function of the input
    dims (a trip count read from an input's values), else None.
    """
    dims = []
    for axis, d in enumerate(lead):
        why = (lead_origins or [None] * len(lead))[axis]
        if isinstance(d, int):
            dims.append(NoiseDim(axis, CONSTANT, size=d))
        elif why:
            key = bound_name(noise, axis)
            dims.append(NoiseDim(axis, BOUNDED if key in bounds else DATA, size=bounds.get(key),
                                 name=key, origin=why))
        else:
            dims.append(NoiseDim(axis, ITERATIONS, name=str(d)))
    src_axes = source_axes(op_type, len(shape))
    for k, d in enumerate(shape):
        axis = len(lead) + k
        src_axis = src_axes[k] if source else None
        if isinstance(d, int) and not (per_iteration and src_axis is not None):
            dims.append(NoiseDim(axis, CONSTANT, size=d))
        elif isinstance(d, str) and d in anchors and not per_iteration:
            dims.append(NoiseDim(axis, INPUT, name=d))
        elif not origin or src_axis is None:
            dims.append(NoiseDim(axis, DERIVED, source=source or "", source_axis=src_axis))
        else:
            key = bound_name(noise, axis)
            dims.append(NoiseDim(axis, BOUNDED if key in bounds else DATA, size=bounds.get(key),
                                 name=key, source=source or "", source_axis=src_axis,
                                 origin=origin))
    return dims


def unbounded_error(where: str, noise: str, dims: list[NoiseDim], mode: str) -> ModelError:
    """One line: the noise input, the dims, what they come from, how to bound them."""
    first = dims[0]
    axes = ", ".join(str(d.axis) for d in dims)
    fix = entries("noise_bounds", {d.name: "N" for d in dims})
    other = param("mode", "deterministic", hint=True) if mode != "deterministic" else "a bound"
    why = (f"the size of '{first.source}' axis {first.source_axis} comes from {first.origin}"
           if first.source else first.origin)  # a loop's iteration axis: no source tensor
    return ModelError(
        f"{where}: axis {axes} of its noise '{noise}' {'is' if len(dims) == 1 else 'are'} "
        f"data-dependent ({why}), so it cannot be sized from the model's inputs; set an upper "
        f"bound with {fix} or use {other}")


def check_bound_names(bounds: dict[str, int], known: set[str]) -> None:
    for name, value in bounds.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise UsageError(f"{entries('noise_bounds', {name: value})}: a bound must be a "
                             f"positive integer")
    unknown = sorted(set(bounds) - known)
    if unknown:
        have = ", ".join(sorted(known)) or "none"
        raise UsageError(f"{param_name('noise_bounds')}: no data-dependent noise dim "
                         f"{', '.join(map(repr, unknown))} (data-dependent dims: {have})")


def parse_bound_flags(values: list[str] | None) -> dict[str, int]:
    bounds: dict[str, int] = {}
    for item in values or []:
        name, sep, value = item.rpartition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError(f"--noise-bound {item!r}: expected NAME=N, e.g. "
                             f"--noise-bound noise_z:2=400")
        try:
            size = int(value)
        except ValueError:
            raise UsageError(f"--noise-bound {item!r}: {value!r} is not an integer") from None
        if not 1 <= size <= 2**32:
            raise UsageError(f"--noise-bound {item!r}: a bound must be from 1 to 2**32")
        bounds[name] = size
    return bounds


def slice_to_need(b: NodeBuilder, noise: str, dims: list[NoiseDim], n_lead: int,
                  source: str, rank: int, op_type: str) -> str:
    """Nodes fitting one invocation's noise to the shape the node would have drawn.

    Bounded axes: the prefix this run needs. Derived axes (sizes that only shape inference
    ties to the input dims) are checked too: Reshape refuses noise of the wrong size, where
    broadcasting could silently spread one wrong-sized draw.
    """
    local_dims = [d for d in dims if d.axis >= n_lead]
    bounded = [d for d in local_dims if d.kind == BOUNDED]
    if not bounded and not any(d.kind == DERIVED and d.source_axis is not None
                               for d in local_dims):
        return noise
    if b.opset < 9 and bounded:
        raise ModelError(f"bounded noise dims need opset 9 or later (a prefix of runtime "
                         f"length); the model uses opset {b.opset}")
    if b.opset < 5:  # Reshape took its shape as an attribute: no check possible
        return noise
    need = b.op("Shape", [source], "need_shape")
    prefix = noise
    if bounded and b.opset < 10:
        prefix = _gather_prefix(b, noise, need, bounded, n_lead)
    elif bounded:
        local = [d.axis - n_lead for d in bounded]
        ends = b.op("Gather", [need, b.constant(np.array([d.source_axis for d in bounded],
                                                         dtype=np.int64), "bounded_src")],
                    "need_ends", axis=0)
        starts = b.constant(np.zeros(len(local), dtype=np.int64), "starts")
        axes = b.constant(np.array(local, dtype=np.int64), "bounded_axes")
        prefix = b.op("Slice", [noise, starts, ends, axes], "prefix")
    src_axes = source_axes(op_type, rank)
    if src_axes == list(range(rank)):
        target = need
    else:
        pieces = []
        for k, a in enumerate(src_axes):
            if a is None:
                size = dims[n_lead + k].size
                pieces.append(b.constant(np.array([size], dtype=np.int64), f"dim{k}"))
            else:
                idx = b.constant(np.array([a], dtype=np.int64), f"src{k}")
                pieces.append(b.op("Gather", [need, idx], f"dim{k}", axis=0))
        target = b.op("Concat", pieces, "need_noise_shape", axis=0)
    # Slice clamps ends silently; Reshape refuses a prefix shorter than the run needs.
    return b.op("Reshape", [prefix, target], "need")


def _gather_prefix(b: NodeBuilder, noise: str, need: str, bounded: list[NoiseDim],
                   n_lead: int) -> str:
    """Before opset 10 Slice ends are attributes: gather indices 0..n-1 instead, made as
    NonZero(ConstantOfShape([n])) (Gather fails loudly past the bound)."""
    current = noise
    for d in bounded:
        src = b.constant(np.array([d.source_axis], dtype=np.int64), "bounded_src")
        n = b.op("Gather", [need, src], "need_len", axis=0)
        ones = b.op("ConstantOfShape", [n], "ones",
                    value=numpy_helper.from_array(np.array([1], dtype=np.int64)))
        rows = b.op("NonZero", [ones], "positions")
        flat = b.op("Reshape", [rows, b.constant(np.array([-1], dtype=np.int64), "flat")],
                    "indices")
        current = b.op("Gather", [current, flat], "prefix", axis=d.axis - n_lead)
    return current


def pad_to_bounds(b: NodeBuilder, tensor: str, rank: int, axes: dict[int, int]) -> str:
    """`tensor` padded at the end of each axis in `axes` (axis -> bound) by repeating its edge.

    The parity check stacks a per-iteration draw over loop iterations; a draw whose shape
    varies between iterations can only be stacked once padded to its bound (the padding is
    never read: the rewritten model slices the prefix each iteration needs).
    """
    if b.opset < 11:
        raise ModelError("checking a bounded per-iteration draw needs opset 11 or later (Pad "
                         "with runtime pads)")
    shape = b.op("Shape", [tensor], "pad_shape")
    pieces = [b.constant(np.zeros(rank, dtype=np.int64), "pad_begin")]
    for a in range(rank):
        if a in axes:
            have = b.op("Gather", [shape, b.constant(np.array([a], dtype=np.int64), "ax")],
                        "have", axis=0)
            bound = b.constant(np.array([axes[a]], dtype=np.int64), "bound")
            pieces.append(b.op("Sub", [bound, have], "pad_end"))
        else:
            pieces.append(b.constant(np.zeros(1, dtype=np.int64), "no_pad"))
    pads = b.op("Concat", pieces, "pads", axis=0)
    return b.op("Pad", [tensor, pads], "padded", mode="edge")
