"""Prepare pass: a working copy of the model that the plan can read as it is.

Effect (on a copy; the input is never touched): model-local functions holding random nodes
are inlined (and only those), unnamed input dims get names, every Loop/Scan holding a draw gets
a stable name for its iteration axis, and the dims the caller fixes (`dims`) are fixed
model-wide. A model without random nodes only has its dims fixed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from onnxfix.graph.find import Scope, Site, as_int, constant_lookup, find_sites
from onnxfix.graph.functions import inline_random_functions, take_origin_mark
from onnxfix.graph.naming import sanitize
from onnxfix.graph.shapes import (
    TensorFacts,
    collect_facts,
    fix_dims,
    has_unnamed_input_dims,
    input_dim_names,
    name_unnamed_input_dims,
)
from onnxfix.ops import attrs_of


@dataclass
class Prepared:
    """The prepared copy and what preparing it decided."""

    model: onnx.ModelProto
    random: bool  # it holds random nodes (else it is only a copy with dims fixed)
    trip_names: dict[str, str] = field(default_factory=dict)  # scope key -> iteration dim
    fixed_trips: dict[str, int] = field(default_factory=dict)  # iteration dims fixed by `dims`
    # the random nodes of `model`, found once (fixing dims changes no node): None = not yet
    sites: list[Site] | None = None
    # same graph as the input (nothing inlined, no dim named or fixed): facts inferred on
    # `model` hold for the input too
    as_input: bool = False


def prepare(model: onnx.ModelProto, dims: dict[str, int] | None = None) -> Prepared:
    """call(model) -> Prepared: copy, inline random functions, name dims, fix dims.

    A model that needs none of these (no dims given, no local function, no unnamed input
    dim, no inlining mark for the plan to take off a random node: functions.take_origin) is
    not copied: the Prepared holds `model` itself (`as_input`), which the passes after it
    only read (a copy of a 100k-node graph is 50 MB at the peak of the plan's inference)."""
    shared = None
    if not dims and not model.functions and not has_unnamed_input_dims(model):
        shared = find_sites(model)
        if shared and not any(take_origin_mark(s.node) for s in shared):
            return Prepared(model, True, iteration_dim_names(model, shared), {}, shared, True)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    sites = find_sites(out) if shared is None or shared else []
    if not sites:
        fix_dims(out, dims or {})
        return Prepared(out, random=False)
    inlined = inline_random_functions(out)
    changed = inlined is not out
    if changed:  # new nodes: find them again
        out, sites = inlined, find_sites(inlined)
    # evaluated in this order: naming the input dims must happen whatever was inlined
    same = not name_unnamed_input_dims(out) and not changed and not dims
    trip_names = iteration_dim_names(out, sites)
    fixed = fix_dims(out, dims or {}, extra=set(trip_names.values()))
    return Prepared(out, True, trip_names, fixed, sites, same)


def scope_key(scope: Scope) -> str:
    return "\0".join(scope.owner.output) + "\0" + scope.attr


def iteration_dim_names(model: onnx.ModelProto,
                        sites: list[Site] | None = None) -> dict[str, str]:
    """A readable, stable dim name for the iteration axis of each Loop/Scan holding a draw.

    A Loop whose trip count is one of the graph inputs' dims (`Shape(timesteps)[0]`) takes
    that dim's name, so its noise is tied to the input.
    """
    names: dict[str, str] = {}
    used: set[str] = set()
    inputs = set(input_dim_names(model))
    declared = None
    for site in find_sites(model) if sites is None else sites:
        for scope in site.scopes:
            if scope.owner.op_type not in ("Loop", "Scan"):
                continue
            key = scope_key(scope)
            if key in names:
                continue
            if scope.owner.op_type == "Loop" and scope.owner.input and scope.owner.input[0]:
                declared = declared if declared is not None else collect_facts(model)
                dim = trip_dim(scope.parent, scope.owner.input[0], declared, model)
                if isinstance(dim, str) and dim in inputs:
                    names[key] = dim
                    continue
            base = sanitize(scope.owner.name or scope.owner.op_type.lower()) + "_iterations"
            name, k = base, 1
            while name in used:
                k += 1
                name = f"{base}_{k}"
            used.add(name)
            names[key] = name
    return names


def trip_dim(graph, name: str, facts: dict[str, TensorFacts], model: onnx.ModelProto):
    """The input dim a trip count reads (`Gather(Shape(x), k)`, `Shape<start=k,end=k+1>(x)`,
    `Slice(Shape(x), k, k+1)`, through Cast/Squeeze/Reshape...), or None."""
    producers = {o: n for n in graph.node for o in n.output}
    lookup = constant_lookup(model)
    for _ in range(16):  # a short chain of single-value ops
        node = producers.get(name)
        if node is None:
            return None
        if node.op_type in ("Cast", "Identity", "Squeeze", "Unsqueeze", "Reshape", "Flatten"):
            name = node.input[0]
            continue
        shape_node, k = node, 0
        if node.op_type in ("Gather", "Slice") and len(node.input) > 1:
            k = as_int(lookup(node.input[1]))
            shape_node = producers.get(node.input[0])
        if shape_node is None or shape_node.op_type != "Shape" or k is None:
            return None
        start = int(attrs_of(shape_node).get("start", 0))
        shape = (facts.get(shape_node.input[0]) or TensorFacts(None, None)).shape
        if shape is None or start < 0 or not 0 <= start + k < len(shape):
            return None
        return shape[start + k]
    return None
