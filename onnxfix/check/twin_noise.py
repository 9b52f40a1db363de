"""Noise for the deterministic model's input-noise twin, sized from the shapes it really draws.

The deterministic check feeds the twin the noise whose transform gives the representative
value. Sizing that noise from the check size alone is wrong wherever a noise dim is not an
input dim: data-dependent frames (VITS), a while-loop's iteration count. So the deterministic
model is run once with the shape of every replaced draw exposed (stacked per loop iteration),
and each noise dim takes the size it really had; data-dependent dims become the twin's bounds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from onnxfix.check.capture import Exposer, locate
from onnxfix.check.compare import CheckSkipped
from onnxfix.graph.noisedims import BOUNDED, DATA, DERIVED, INPUT, ITERATIONS
from onnxfix.ops import OP_TABLE
from onnxfix.report import NodeRecord


@dataclass
class TwinSizes:
    dims: dict[str, int] = field(default_factory=dict)  # symbolic noise dim -> size
    bounds: dict[str, int] = field(default_factory=dict)  # data-dependent dim -> size


def shape_probe(model: onnx.ModelProto, records: list[NodeRecord], every: bool = False
                ) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of `model` exposing Shape(draw) of each record (by draw name -> output name):
    those with noise dims, or `every` rewritten one."""
    probe, exposed, _ = draw_shape_probe(model, records, every)
    return probe, exposed


def draw_shape_probe(model: onnx.ModelProto, records: list[NodeRecord], every: bool = False,
                     skip_uncapturable: bool = False, measure: dict[str, str] | None = None
                     ) -> tuple[onnx.ModelProto, dict[str, str], Exposer]:
    """`shape_probe`, and its Exposer: a draw under an If inside a Loop is threaded, and
    `exposer.decode(outputs)` puts its stacked shapes under its key after a run.
    skip_uncapturable: leave out the draws the Exposer cannot capture (an If in a Scan)
    instead of raising CheckSkipped. measure: {draw: the tensor in its graph whose shape to
    read instead} (a seeded model's noise, which for Gumbel-max is not the draw's shape)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    exposer = Exposer(probe)
    exposed: dict[str, str] = {}
    for rec in records:
        if rec.replacement is None or not (rec.replacement.dims or every):
            continue
        scopes = locate(probe, rec.output)
        if scopes is None:
            continue
        container = scopes[-1].body if scopes else probe.graph
        name = exposer.names.fresh(f"shape_of_{rec.output}")
        measured = (measure or {}).get(rec.output, rec.output)
        container.node.append(helper.make_node("Shape", [measured], [name],
                                               name=exposer.names.fresh(f"{name}_node")))
        try:
            exposed[rec.output] = exposer.expose(name, onnx.TensorProto.INT64, scopes)
        except CheckSkipped:
            if not skip_uncapturable:
                raise
            container.node.pop()  # the Shape node nothing reads
    return probe, exposed, exposer


def measured_sizes(records: list[NodeRecord], exposed: dict[str, str],
                   got: dict[str, np.ndarray]) -> TwinSizes:
    sizes = TwinSizes()
    for rec in records:
        if rec.output not in exposed:
            continue
        shapes = np.asarray(got[exposed[rec.output]])
        dims = rec.replacement.dims
        n_lead = shapes.ndim - 1  # the exposed shape is stacked once per enclosing loop
        if n_lead < 0:
            continue
        lead = shapes.shape[:n_lead]
        rows = shapes.reshape(-1, shapes.shape[-1]) if shapes.shape[-1] else None
        for d in dims:
            axis = d["axis"]
            if axis < n_lead:
                if d["kind"] == ITERATIONS:
                    sizes.dims[d["name"]] = int(lead[axis])
                elif d["kind"] in (DATA, BOUNDED):  # a trip count read from an input's values
                    sizes.bounds[d["name"]] = max(int(lead[axis]), 1)
                continue
            k = OP_TABLE[rec.op_type].draw_axis(axis - n_lead)
            if rows is None or k is None or k >= rows.shape[1]:
                continue
            seen = int(rows[:, k].max()) if len(rows) else 0
            if d["kind"] in (DATA, BOUNDED):
                sizes.bounds[d["name"]] = max(seen, 1)
            elif d["kind"] in (INPUT, DERIVED):
                sizes.dims[d["name"]] = seen
    return sizes


def sized_fill(meta, sizes: TwinSizes, n: int, value: float, dtype: np.dtype) -> np.ndarray:
    """A noise array for twin input `meta` (an onnxruntime NodeArg) filled with `value`."""
    shape = []
    for d in meta.shape or []:
        if isinstance(d, int) and d >= 0:
            shape.append(d)
        else:
            shape.append(sizes.dims.get(d, n) if isinstance(d, str) else n)
    return np.full(shape, value, dtype=dtype)
