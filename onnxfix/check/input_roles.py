"""What each graph input is for, read from how the graph uses it, so check inputs look real.

Random values make a poor test input: ids past the end of their table fail a Gather, a mask of
2s and 3s turns into a length that asks a Range for gigabytes, a Dropout ratio drawn from
N(0, 1) is refused. So an input gets values by its role:
- ids: an integer input that indexes a Gather / GatherElements table: [0, rows of the table);
- mask: named *mask*, bool, or an integer multiplier / Where condition: 0/1, mostly 1, so the
  lengths it encodes are real (the first row full, the others at least half full);
- count: an integer that sizes something (Range, Tile, Expand, ConstantOfShape, a Reshape
  target, a Loop trip count, TopK's k...) or is named *length*: small, in [1, size];
- probability: a Dropout ratio or a Bernoulli probability: [0, 1);
- scale: a float named *scale* or *temperature* (Piper's noise and length scales): [0.5, 1.5);
- switch: Dropout's training_mode: true, so the draw happens;
- plain: floats N(0, 1), integers in [0, size], bools half true.
Value-preserving ops between the input and its use (Cast, Reshape, Unsqueeze...) are looked
through.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np
import onnx

from onnxfix.graph.find import iter_graphs
from onnxfix.graph.shapes import infer_facts
from onnxfix.ops import OP_TABLE


class Role(Enum):
    IDS = "ids"
    MASK = "mask"
    COUNT = "count"
    PROBABILITY = "probability"
    SCALE = "scale"
    SWITCH = "switch"
    PLAIN = "plain"


# ops that hand their first input on unchanged in value
_PASS_THROUGH = {"Cast", "CastLike", "Identity", "Squeeze", "Unsqueeze", "Reshape", "Flatten",
                 "Transpose", "Expand"}
# (op, input index) that reads a size or a count
_SIZES = {("Range", 0), ("Range", 1), ("Range", 2), ("Tile", 1), ("Expand", 1),
          ("ConstantOfShape", 0), ("Reshape", 1), ("Loop", 0), ("TopK", 1), ("OneHot", 1),
          ("Resize", 3), ("Pad", 1), ("Split", 1), ("Slice", 1), ("Slice", 2),
          ("Upsample", 1), ("RandomNormal", 0)}
_INDEXING = {"Gather": 1, "GatherElements": 1, "GatherND": 1}


@dataclass(frozen=True)
class InputRole:
    role: Role
    rows: int | None = None  # ids: rows of the smallest table they index

    def describe(self, n: int) -> str:
        if self.role is Role.IDS:
            return f"ids in [0, {self.rows or n + 1})"
        return {Role.MASK: "0/1 mask, mostly 1", Role.COUNT: f"count in [1, {max(n, 1)}]",
                Role.PROBABILITY: "probability in [0, 1)", Role.SCALE: "scale in [0.5, 1.5)",
                Role.SWITCH: "true",
                Role.PLAIN: "plain"}[self.role]

    def sample(self, shape: list[int], dtype: np.dtype, n: int,
               rng: np.random.Generator) -> np.ndarray:
        if self.role is Role.IDS:
            values = rng.integers(0, self.rows or n + 1, size=shape)
        elif self.role is Role.MASK:
            values = _mostly_ones(shape, rng)
        elif self.role is Role.COUNT:
            values = rng.integers(1, max(n, 1) + 1, size=shape)
        elif self.role is Role.PROBABILITY:
            values = rng.random(shape)
        elif self.role is Role.SCALE:
            values = 0.5 + rng.random(shape)
        elif self.role is Role.SWITCH:
            values = np.ones(shape, dtype=bool)
        else:
            return plain_sample(shape, dtype, n, rng)
        return np.asarray(values).astype(dtype)


def plain_sample(shape: list[int], dtype: np.dtype, n: int,
                 rng: np.random.Generator) -> np.ndarray:
    if dtype == np.bool_:
        return np.asarray(rng.random(shape) < 0.5)
    if np.issubdtype(dtype, np.integer):
        return np.asarray(rng.integers(0, n + 1, size=shape), dtype=dtype)
    return np.asarray(rng.standard_normal(shape), dtype=dtype)


def _mostly_ones(shape: list[int], rng: np.random.Generator) -> np.ndarray:
    """Ones, each row of the last axis cut to a length in [half, full]; the first row full."""
    mask = np.ones(shape, dtype=np.int64)
    if len(shape) < 2 or shape[-1] < 2:
        return mask
    rows = mask.reshape(-1, shape[-1])
    full = shape[-1]
    for r in range(1, rows.shape[0]):
        rows[r, rng.integers((full + 1) // 2, full + 1):] = 0
    return mask


def input_roles(model: onnx.ModelProto) -> dict[str, InputRole]:
    """The role of every main-graph input (initializer-backed inputs included)."""
    uses = _uses(model)
    rows_of = _RowCounter(model)
    roles = {}
    for vi in model.graph.input:
        elem = vi.type.tensor_type.elem_type
        roles[vi.name] = _role(vi.name, elem, _reached_uses(vi.name, uses), rows_of)
    return roles


def _role(name: str, elem: int, reached, rows_of) -> InputRole:
    integer = elem in _INTEGER_TYPES
    rows = [rows_of(node, k) for node, k in reached if _INDEXING.get(node.op_type) == k]
    if rows and (integer or elem in _FLOAT_TYPES):
        known = [r for r in rows if r]
        return InputRole(Role.IDS, min(known) if known else None)
    random_roles = {OP_TABLE[node.op_type].input_role(k) for node, k in reached
                    if node.op_type in OP_TABLE}
    for role in (Role.SWITCH, Role.PROBABILITY):  # a training flag first
        if role.value in random_roles:
            return InputRole(role)
    lower = name.lower()
    if "mask" in lower or elem == onnx.TensorProto.BOOL:
        return InputRole(Role.MASK)
    if elem in _FLOAT_TYPES and ("scale" in lower or "temperature" in lower):
        return InputRole(Role.SCALE)
    if integer and ("length" in lower or any((node.op_type, k) in _SIZES for node, k in reached)):
        return InputRole(Role.COUNT)
    if integer and any(node.op_type == "Mul" or (node.op_type == "Where" and k == 0)
                       for node, k in reached):
        return InputRole(Role.MASK)
    return InputRole(Role.PLAIN)


_INTEGER_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.INT16,
                  onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.UINT16,
                  onnx.TensorProto.UINT32, onnx.TensorProto.UINT64}
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}


def _uses(model: onnx.ModelProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    """name -> (node, input index) for every read, in every graph (one namespace)."""
    uses: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for container, _ in iter_graphs(model):
        for node in container.node:
            for k, name in enumerate(node.input):
                if name:
                    uses.setdefault(name, []).append((node, k))
    return uses


def _reached_uses(name: str, uses) -> list[tuple[onnx.NodeProto, int]]:
    """Uses of `name`, and of what value-preserving ops make of it."""
    reached, seen, todo = [], {name}, [name]
    while todo:
        for node, k in uses.get(todo.pop(), []):
            reached.append((node, k))
            if node.op_type in _PASS_THROUGH and k == 0:
                for out in node.output:
                    if out and out not in seen:
                        seen.add(out)
                        todo.append(out)
    return reached


class _RowCounter:
    """The length of the axis a Gather-like node indexes, when the graph says it."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self._inits = {i.name: list(i.dims) for i in model.graph.initializer}
        self._facts = None

    def __call__(self, node: onnx.NodeProto, _k: int) -> int | None:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if node.op_type == "GatherND":
            axis = 0
        shape = self._shape(node.input[0])
        if not shape or not -len(shape) <= axis < len(shape):
            return None
        rows = shape[axis]
        return rows if isinstance(rows, int) and rows > 0 else None

    def _shape(self, name: str):
        if name in self._inits:
            return self._inits[name]
        if self._facts is None:
            self._facts = infer_facts(self.model)
        f = self._facts.get(name)
        return f.shape if f is not None else None


__all__ = ["InputRole", "Role", "input_roles", "plain_sample"]
