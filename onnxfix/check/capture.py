"""Expose tensors from anywhere in a model as main-graph outputs (for the parity check).

A tensor inside an If branch leaves through an extra If output (the other branch yields an
empty placeholder); inside a Loop or Scan body it leaves as an extra scan output, stacked over
iterations, which is exactly the layout of a per-iteration noise input.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxfix.check.capture_threaded import Threaded, Threader, decode, needs_threading
from onnxfix.graph.find import Scope, default_opset, iter_scoped
from onnxfix.graph.naming import NameAllocator


def locate(model: onnx.ModelProto, produced: str) -> list[Scope] | None:
    """The scopes down to the graph whose node produces `produced` (None if nowhere)."""
    for container, where, scopes in iter_scoped(model):
        if where.startswith("function "):
            continue
        for node in container.node:
            if produced in node.output:
                return scopes
    return None


class Exposer:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.names = NameAllocator(model)
        self.threaded: dict[str, Threaded] = {}
        # main-graph tensors a node of the model makes, and the main graph's outputs
        self._made = {o for n in model.graph.node for o in n.output if o}
        self._outputs = {o.name for o in model.graph.output}

    def expose(self, name: str, elem_type: int, scopes: list[Scope]) -> str:
        """Make `name` (visible in the innermost scope) a main-graph output; return its name.

        Under an If inside a Loop the name is a key that `decode` fills after a run.
        """
        if needs_threading(scopes):
            key = self.names.fresh(f"capture_{name}")
            threader = Threader(self.model, self.names, default_opset(self.model))
            self.threaded[key] = threader.thread(name, elem_type, scopes)
            return key
        if not scopes and name in self._made:
            return self._main_output(name, elem_type)
        container = scopes[-1].body if scopes else self.model.graph
        current = self.names.fresh(f"capture_{name}")
        container.node.append(helper.make_node("Identity", [name], [current],
                                               name=self.names.fresh(f"{current}_node")))
        for scope in reversed(scopes):
            scope.body.output.append(helper.make_tensor_value_info(current, elem_type, None))
            owner = scope.owner
            if owner.op_type == "If":
                other = "else_branch" if scope.attr == "then_branch" else "then_branch"
                branch = next(a.g for a in owner.attribute if a.name == other)
                dummy = self.names.fresh(f"{current}_untaken")
                empty = numpy_helper.from_array(
                    np.zeros((0,), dtype=helper.tensor_dtype_to_np_dtype(elem_type)), dummy)
                branch.node.append(helper.make_node("Constant", [], [dummy], value=empty,
                                                    name=self.names.fresh(f"{dummy}_node")))
                branch.output.append(helper.make_tensor_value_info(dummy, elem_type, None))
            elif owner.op_type == "Scan":
                for a in owner.attribute:
                    if a.name in ("scan_output_axes", "scan_output_directions"):
                        a.ints.append(0)
            outer = self.names.fresh(f"{current}_out")
            owner.output.append(outer)
            current = outer
        self.model.graph.output.append(helper.make_tensor_value_info(current, elem_type, None))
        return current

    def _main_output(self, name: str, elem_type: int) -> str:
        """A tensor a main-graph node makes leaves as itself: no Identity copy (with thousands
        of draws, onnxruntime builds the capture session faster and smaller without them)."""
        if name not in self._outputs:
            self.model.graph.output.append(helper.make_tensor_value_info(name, elem_type, None))
            self._outputs.add(name)
        return name

    def decode(self, got: dict) -> None:
        """Add each threaded capture to a run's outputs, stacked per iteration (see decode)."""
        for key, threaded in self.threaded.items():
            decode(threaded, got, key)
