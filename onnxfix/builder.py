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

    def clip(self, name: str, low: np.ndarray, high: np.ndarray, hint: str) -> str:
        """Clip to [low, high]: bounds became inputs in opset 11."""
        if self.opset >= 11:
            lo, hi = self.constant(low, hint + "_min"), self.constant(high, hint + "_max")
            return self.op("Clip", [name, lo, hi], hint)
        return self.op("Clip", [name], hint, min=float(low), max=float(high))

    def reduce(self, op_type: str, name: str, axis: int, hint: str, keepdims: int = 1,
               output: str | None = None) -> str:
        """ReduceSum/ReduceMax over one axis: axes became an input in opset 13 (ReduceSum)
        and 18 (the others)."""
        if self.opset >= (13 if op_type == "ReduceSum" else 18):
            axes = self.constant(np.array([axis], dtype=np.int64), hint + "_axes")
            return self.op(op_type, [name, axes], hint, output=output, keepdims=keepdims)
        return self.op(op_type, [name], hint, output=output, axes=[axis], keepdims=keepdims)

    def op(self, op_type: str, inputs: list[str], hint: str, output: str | None = None,
           **attrs) -> str:
        out = output if output is not None else self.tensor(hint)
        if op_type in ("Add", "Mul", "Sub", "Div", "Less", "Greater", "Equal") and self.opset < 7:
            attrs.setdefault("broadcast", 1)  # before opset 7, broadcasting was opt-in
        node_name = self.names.fresh(f"{self.prefix}_{hint}")
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=node_name, **attrs))
        return out
