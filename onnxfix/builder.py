"""Small node factory: unique names, constants, and attribute forms valid at the model's opset."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .naming import NameAllocator


class NodeBuilder:
    """Collects the nodes that replace one random node, in topological order."""

    def __init__(self, names: NameAllocator, opset: int, prefix: str, constant_of=None):
        self.names = names
        self.constant_of = constant_of or (lambda _name: None)
        self.opset = opset
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []

    def tensor(self, hint: str) -> str:
        return self.names.fresh(f"{self.prefix}_{hint}")

    def constant(self, value: np.ndarray, hint: str) -> str:
        out = self.tensor(hint)
        tensor = numpy_helper.from_array(np.asarray(value), name=out)
        node_name = self.names.fresh(out + "_node")
        self.nodes.append(helper.make_node("Constant", [], [out], name=node_name, value=tensor))
        return out

    def fill(self, shape: str, value: np.ndarray, output: str) -> str:
        """A tensor of `shape` filled with the one-element `value` (ConstantOfShape)."""
        if self.opset < 9:
            from .errors import ModelError

            raise ModelError(f"deterministic mode needs opset 9 or later (ConstantOfShape); "
                             f"the model uses opset {self.opset}")
        return self.op("ConstantOfShape", [shape], "fill", output=output,
                       value=numpy_helper.from_array(value))

    def unsqueeze(self, name: str, axis: int, hint: str) -> str:
        if self.opset >= 13:  # axes became an input in opset 13
            axes = self.constant(np.array([axis], dtype=np.int64), hint + "_axes")
            return self.op("Unsqueeze", [name, axes], hint)
        return self.op("Unsqueeze", [name], hint, axes=[axis])

    def op(self, op_type: str, inputs: list[str], hint: str, output: str | None = None,
           **attrs) -> str:
        out = output if output is not None else self.tensor(hint)
        if op_type in ("Add", "Mul", "Sub", "Div", "Less", "Greater", "Equal") and self.opset < 7:
            attrs.setdefault("broadcast", 1)  # before opset 7, broadcasting was opt-in
        node_name = self.names.fresh(f"{self.prefix}_{hint}")
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=node_name, **attrs))
        return out
