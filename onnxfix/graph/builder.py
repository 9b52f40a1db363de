"""Small node factory: unique names, constants, and attribute forms valid at the model's opset."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxfix.errors import ModelError
from onnxfix.graph.naming import NameAllocator


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
        value = np.asarray(value)
        if self.opset < 9 and not np.issubdtype(value.dtype, np.floating):
            return self._cast_constant(value, hint)
        out = self.tensor(hint)
        node = onnx.NodeProto(op_type="Constant", output=[out],
                              name=self.names.fresh(out + "_node"))
        attr = node.attribute.add()
        attr.CopyFrom(_value_attribute(value))
        attr.t.name = out  # what make_node(value=from_array(value, name=out)) writes
        self.nodes.append(node)
        return out

    def _cast_constant(self, value: np.ndarray, hint: str) -> str:
        """Constant-1 holds floats only: integers and bools before opset 9 are cast from double."""
        wide = value.astype(np.float64)
        if not np.array_equal(wide.astype(value.dtype), value):
            raise ModelError(f"a constant of {value.dtype} is not exact in double, which is all "
                             f"a Constant holds before opset 9 (the model uses opset "
                             f"{self.opset})")
        elem = helper.np_dtype_to_tensor_dtype(value.dtype)
        return self.op("Cast", [self.constant(wide, hint + "_double")], hint, to=elem)

    def fill(self, value: np.ndarray, output: str, *, like: str | None = None,
             static: list[int] | None = None) -> str:
        """`value` (one element) in the shape of tensor `like`, or in the `static` shape.

        ConstantOfShape from opset 9; before it, forms valid since opset 6 (Tile, and
        "ones like x" as Not(Greater(x, x)), which holds for NaN and Inf too).
        """
        value = np.asarray(value).reshape(-1)[:1]
        if self.opset >= 9:
            if static is not None:
                shape = self.constant(np.array(static, dtype=np.int64), "shape")
            else:
                shape = self.op("Shape", [like], "shape")
            return self.op("ConstantOfShape", [shape], "fill", output=output,
                           value=numpy_helper.from_array(value))
        if self.opset < 6:
            raise ModelError(f"deterministic mode needs opset 6 or later (Cast and Tile take "
                             f"their current form there); the model uses opset {self.opset}")
        if static is not None:
            one = self.constant(value.reshape([1] * len(static)), "value")
            if not static:
                return self.op("Identity", [one], "fill", output=output)
            reps = self.constant(np.array(static, dtype=np.int64), "shape")
            return self.op("Tile", [one, reps], "fill", output=output)
        as_float = self.op("Cast", [like], "as_float", to=onnx.TensorProto.FLOAT)
        never = self.op("Greater", [as_float, as_float], "never")
        ones = self.op("Not", [never], "ones", output=output if value.dtype == np.bool_ else None)
        if value.dtype == np.bool_:
            return ones  # no bool mask exists before opset 10: only the value True is asked
        elem = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
        ones = self.op("Cast", [ones], "ones_cast", to=elem,
                       output=output if value[0] == 1 else None)
        if value[0] == 1:
            return ones
        return self.op("Mul", [ones, self.constant(value.reshape(()), "value")], "fill",
                       output=output)

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
        if attrs:
            node = helper.make_node(op_type, inputs, [out], name=node_name, **attrs)
        else:  # make_node's fields, without its per-call overhead (thousands of draws)
            node = onnx.NodeProto(op_type=op_type, input=inputs, output=[out], name=node_name)
        self.nodes.append(node)
        return out


# (dtype, shape, bytes) -> the Constant's `value` attribute, tensor unnamed: a rewrite of
# thousands of draws asks for the same few scalars (a scale, a mean) thousands of times
_VALUE_ATTRIBUTES: dict[tuple, onnx.AttributeProto] = {}


def _value_attribute(value: np.ndarray) -> onnx.AttributeProto:
    if value.dtype.kind not in "biuf" or value.size > 16:
        return helper.make_attribute("value", numpy_helper.from_array(value))
    key = (value.dtype.str, value.shape, value.tobytes())
    attr = _VALUE_ATTRIBUTES.get(key)
    if attr is None:
        attr = _VALUE_ATTRIBUTES[key] = helper.make_attribute(
            "value", numpy_helper.from_array(value))
    return attr
