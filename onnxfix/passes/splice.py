"""Splice pass: put each emitted replacement into the (copied) model.

Effect, in place on the emit's copy: new graph inputs and initializers are appended, each
random node is replaced by its new nodes where it stood, noise is carried from the main graph
into If / Loop / Scan bodies (every Loop or Scan on the way slices one leading iteration axis:
Gather by the Loop's iteration number, or an extra scan input), and the chains that only fed
the removed nodes go. `route` is called by the emit, because the names it allocates precede
the transform's; `splice` only applies what it returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx
from onnx import helper

from onnxfix.errors import ModelError
from onnxfix.graph.find import Scope
from onnxfix.graph.graph_edit import GraphEdits
from onnxfix.graph.naming import NameAllocator


@dataclass
class ScanInput:
    """One more scan input: the outer noise, sliced per iteration into `inner`."""

    scope: Scope
    outer: str
    inner: str
    elem_type: int
    shape: list | None


@dataclass
class ScanState:
    """A state variable a Scan carries for seeded mode: a pass counter (a Scan body has no
    iteration number), or an outer value carried unchanged (OpenVINO's Scan converter takes
    no body that reads an outer value). `start` (outer) goes in, the body reads `inner` (an
    int64 tensor of `shape`) and yields `after` (inner + 1, or inner itself); the Scan's last
    value goes to `final`, which nothing reads."""

    scope: Scope
    start: str
    inner: str
    after: str
    final: str
    shape: list[int] = field(default_factory=list)


@dataclass
class Route:
    """How a main-graph noise tensor reaches a site: nodes prepended to bodies, scan inputs."""

    inner: str  # the name the site reads
    prepends: list[tuple[onnx.GraphProto, onnx.NodeProto, int]] = field(default_factory=list)
    scans: list[ScanInput] = field(default_factory=list)


def route(plan, top: str, names: NameAllocator, opset: int) -> Route:
    """Carry the main-graph noise tensor `top` down to the plan's site, one slice per loop."""
    result = Route(top)
    current, shape = top, plan.full_shape
    for depth, scope in enumerate(plan.site.scopes):
        op = scope.owner.op_type
        if op == "If":
            continue
        rest = None if shape is None else shape[1:]
        if op == "Loop":
            iteration = scope.body.input[0].name if scope.body.input else ""
            if not iteration:
                raise ModelError(f"Loop '{scope.owner.name}': body has no iteration input")
            sliced = names.fresh(f"{top}_it{depth}")
            node = helper.make_node("Gather", [current, iteration], [sliced], axis=0,
                                    name=names.fresh(f"onnxfix_{sliced}_gather"))
            result.prepends.append((scope.body, node, depth + 1))
        elif op == "Scan":
            if opset < 9:
                raise ModelError(f"Scan '{scope.owner.name}': random nodes inside opset-8 Scan "
                                 f"bodies are not supported")
            sliced = names.fresh(f"{top}_it{depth}")
            result.scans.append(ScanInput(scope, current, sliced, plan.dtypes.noise, rest))
        else:
            raise ModelError(f"{plan.site.describe()}: random nodes inside a {op} body are not "
                             f"supported (only If, Loop and Scan)")
        current, shape = sliced, rest
    result.inner = current
    return result


def splice(emitted) -> onnx.ModelProto:
    """call(emitted) -> its model with every replacement in place (see the module doc)."""
    model = emitted.model
    edits = GraphEdits()
    for site in emitted.dead:
        edits.replace(site, [])  # a draw nothing reads needs no noise: the node goes
    # the new inputs and initializers, in order, go in with one extend each (one per site
    # cost more than the rest of the splice of thousands of draws)
    inputs, initializers = [], []
    for e in emitted.sites:
        inputs += e.inputs
        for frozen in e.frozen:
            initializers.append(frozen.tensor())
            if model.ir_version < 4:  # before IR 4, every initializer had to be an input too
                inputs.append(helper.make_tensor_value_info(
                    frozen.name, frozen.elem_type, list(frozen.array.shape)))
        for graph, node, depth in e.prepends:
            edits.prepend(graph, node, depth)
        for scan in e.scans:
            _add_scan_input(scan)
        for state in e.scan_states:
            _add_scan_state(state)
        edits.replace(e.plan.site, e.nodes)
    model.graph.input.extend(inputs)
    model.graph.initializer.extend(initializers)
    edits.apply()
    return model


def _add_scan_state(state: ScanState) -> None:
    """One more state variable, after the Scan's own (states come first in its inputs,
    outputs, body inputs and body outputs)."""
    node, body = state.scope.owner, state.scope.body
    n_scan = next((a.i for a in node.attribute if a.name == "num_scan_inputs"), 1)
    states = len(node.input) - n_scan
    node.input.insert(states, state.start)
    node.output.insert(states, state.final)
    body.input.insert(states, helper.make_tensor_value_info(state.inner, onnx.TensorProto.INT64,
                                                            state.shape))
    body.output.insert(states, helper.make_tensor_value_info(state.after, onnx.TensorProto.INT64,
                                                             state.shape))


def _add_scan_input(scan: ScanInput) -> None:
    node = scan.scope.owner
    node.input.append(scan.outer)
    for a in node.attribute:
        if a.name == "num_scan_inputs":
            a.i += 1
        elif a.name in ("scan_input_axes", "scan_input_directions"):
            a.ints.append(0)
    shape = scan.shape
    dims = [d if isinstance(d, int) else None for d in shape] if shape is not None else None
    scan.scope.body.input.append(helper.make_tensor_value_info(scan.inner, scan.elem_type,
                                                               dims))
