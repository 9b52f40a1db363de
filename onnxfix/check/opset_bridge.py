"""Running a comparison of models below opset 7 in onnxruntime, which has no kernels there
(Mul-6, Add-6, Dropout-6, ...): both models are converted to opset 7 with
onnx.version_converter, only where that keeps the meaning of every op they hold.

Which conversions keep the meaning: an op whose schema does not change between the model's
opset and 7 is untouched; of the ops that change at 7, only those whose one change is the
broadcasting rule (Add, Sub, Mul, Div, Pow, the comparisons and the logical ops: legacy
`broadcast`/`axis` attributes become numpy broadcasting) are converted. Any other (Dropout-6
loses `is_test`, so a training Dropout would become an inference one; BatchNormalization,
the recurrent ops, Gemm, PRelu, AveragePool, Upsample) is refused with its name. numpy
broadcasting computes what legacy broadcasting did only where the legacy rule held (B's shape
a suffix of A's, or a contiguous part at `axis`, or one element; equal shapes without
`broadcast`): a scalar A with a tensor B was invalid at opset 6 but broadcasts at opset 7, so
every such op's operand shapes are checked on the converted model's inferred shapes, and a
shape inference cannot tell is refused too.
"""

from __future__ import annotations

import onnx
import onnx.defs
import onnx.version_converter

from onnxfix.check.compare import CheckSkipped
from onnxfix.errors import one_line
from onnxfix.graph.find import default_opset

BRIDGE_OPSET = 7
# the ops whose only change at opset 7 is legacy broadcasting -> numpy broadcasting
BROADCAST_ONLY = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Equal", "Greater", "Less",
                            "And", "Or", "Xor"})
Shape = list[int | str | None]


def needs_bridge(model: onnx.ModelProto) -> bool:
    return default_opset(model) < BRIDGE_OPSET


def to_bridge_opset(model: onnx.ModelProto, what: str) -> onnx.ModelProto:
    """`model` converted to opset 7, or CheckSkipped saying why not (`what` names the model
    in the message: "the seeded model", ...)."""
    opset = default_opset(model)
    nodes = list(_all_nodes(model.graph))
    for node in nodes:
        if _changes_meaning(node, opset):
            raise CheckSkipped(f"{what} holds {node.op_type} (node '{node.name}'), whose "
                               f"opset-{BRIDGE_OPSET} form means something else (onnx."
                               f"version_converter would change it), so it is not converted "
                               f"to opset {BRIDGE_OPSET} to run in onnxruntime")
    try:
        converted = onnx.version_converter.convert_version(model, BRIDGE_OPSET)
        _drop_untyped_value_info(converted.graph)
        onnx.checker.check_model(converted)
        inferred = onnx.shape_inference.infer_shapes(converted, strict_mode=True,
                                                     data_prop=True)
    except Exception as e:  # noqa: BLE001 - the converter and the checker raise several types
        raise CheckSkipped(f"onnx.version_converter cannot convert {what} from opset {opset} "
                           f"to {BRIDGE_OPSET}: {one_line(e)}") from None
    shapes = _shapes(inferred.graph)
    for node in nodes:
        if node.op_type in BROADCAST_ONLY and node.domain in ("", "ai.onnx"):
            why = legacy_broadcast_problem(node, shapes)
            if why:
                raise CheckSkipped(f"{what}: {node.op_type} (node '{node.name}') {why}, so its "
                                   f"opset-{BRIDGE_OPSET} copy may compute something else; "
                                   f"not converted")
    return converted


def _drop_untyped_value_info(graph: onnx.GraphProto) -> None:
    """The converter declares the tensors it adds (an Unsqueeze for a legacy `axis`) without
    an element type, which onnxruntime refuses to load ("Invalid tensor data type 0")."""
    kept = [vi for vi in graph.value_info if vi.type.tensor_type.elem_type]
    del graph.value_info[:]
    graph.value_info.extend(kept)


def _changes_meaning(node: onnx.NodeProto, opset: int) -> bool:
    if node.domain not in ("", "ai.onnx") or node.op_type in BROADCAST_ONLY:
        return False
    try:
        before = onnx.defs.get_schema(node.op_type, opset).since_version
        after = onnx.defs.get_schema(node.op_type, BRIDGE_OPSET).since_version
    except onnx.defs.SchemaError:
        return True  # an op onnx does not know at one of the two opsets
    return before != after


def legacy_broadcast_problem(node: onnx.NodeProto, shapes: dict[str, Shape]) -> str:
    """Why this binary op's operands break the legacy broadcasting rule of opsets 1-6 (or
    cannot be shown to keep it); "" when they keep it."""
    a, b = (shapes.get(name) for name in node.input[:2])
    if a is None or b is None or None in a or None in b:
        return "has an operand whose shape shape inference does not know"
    attrs = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
    if not attrs.get("broadcast", 0):
        return "" if a == b else f"has operands of shapes {a} and {b} without broadcast=1"
    if "axis" in attrs:
        axis = attrs["axis"] + len(a) if attrs["axis"] < 0 else attrs["axis"]
        fits = a[axis:axis + len(b)] == b and axis + len(b) <= len(a)
    else:
        one = all(isinstance(d, int) for d in b) and _count(b) == 1
        fits = len(b) <= len(a) and (one or a[len(a) - len(b):] == b)
    return "" if fits else (f"broadcasts shape {b} onto {a}, which legacy broadcasting "
                            f"(broadcast=1) does not allow")


def _count(shape: list[int]) -> int:
    total = 1
    for d in shape:
        total *= d
    return total


def _shapes(graph: onnx.GraphProto) -> dict[str, Shape]:
    """Every tensor's inferred shape (an int or a dim name per axis, None where unknown), in
    the graph and its bodies."""
    found: dict[str, Shape] = {}
    for init in graph.initializer:
        found[init.name] = list(init.dims)
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            found[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                              for d in t.shape.dim]
    for node in graph.node:
        for attr in node.attribute:
            for body in [attr.g, *attr.graphs] if attr.HasField("g") or attr.graphs else []:
                found.update(_shapes(body))
    return found


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for body in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _all_nodes(body)


__all__ = ["BRIDGE_OPSET", "legacy_broadcast_problem", "needs_bridge", "to_bridge_opset"]
