"""Capturing a tensor under an If inside a Loop, where stacked scan outputs cannot work.

A Loop stacks a scan output only when every iteration yields the same shape, but an If branch
not taken in some iteration has no draw to yield. So such a tensor is threaded instead: three
1-D buffers travel down to it as Loop-carried values (whose shapes may change between
iterations) and If outputs (the other branch passes them on unchanged), and each time the
tensor is computed they grow by its flat values, its shape and its Loop indices. Each Loop
body also records one index row per iteration, so the number of iterations is known even
when the branch ran in none of them. `decode` turns the buffers back into the stacked layout
of a per-iteration noise input, plus a mask of the iterations in which the tensor existed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxfix.check.compare import CheckSkipped
from onnxfix.graph.find import Scope
from onnxfix.graph.naming import NameAllocator

RAN = "\0ran:"  # key prefix, in a run's outputs, of the mask of iterations that made a tensor


@dataclass
class Threaded:
    values: str  # main-graph outputs: flat values, index rows, shapes
    rows: str
    shapes: str
    loops: int  # Loop levels on the way down (one index per level, then a 'made it' flag)
    dtype: np.dtype


def needs_threading(scopes: list[Scope]) -> bool:
    """An If below a Loop or Scan: its untaken iterations would break a stacked capture."""
    looped = False
    for s in scopes:
        if s.owner.op_type in ("Loop", "Scan"):
            looped = True
        elif s.owner.op_type == "If" and looped:
            return True
    return False


class Threader:
    def __init__(self, model: onnx.ModelProto, names: NameAllocator, opset: int):
        self.model, self.names, self.opset = model, names, opset

    def thread(self, name: str, elem_type: int, scopes: list[Scope]) -> Threaded:
        if self.opset < 11:
            raise CheckSkipped(f"'{name}' lies under an If inside a Loop, which the check can "
                               f"capture only from opset 11 (the model uses {self.opset})")
        if any(s.owner.op_type == "Scan" for s in scopes):
            raise CheckSkipped(f"'{name}' lies under an If inside a Scan body, which the check "
                               f"does not capture (only If inside Loop)")
        loops = [s for s in scopes if s.owner.op_type == "Loop"]
        counters = [s.body.input[0].name if s.body.input else "" for s in loops]
        if not all(counters):
            raise CheckSkipped("a Loop body has no iteration input")
        types = (elem_type, TensorProto.INT64, TensorProto.INT64)
        first: list[onnx.NodeProto] = []
        start = [self._start(t, hint, first) for t, hint in
                 zip(types, ("values", "rows", "shapes"), strict=True)]
        _prepend(self.model.graph, first)
        ends = self._descend(name, scopes, 0, start, types, counters)
        for end, t in zip(ends, types, strict=True):
            self.model.graph.output.append(helper.make_tensor_value_info(end, t, [None]))
        return Threaded(*ends, loops=len(loops),
                        dtype=np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)))

    def _descend(self, name, scopes, depth, bufs, types, counters) -> list[str]:
        """Thread `bufs` (visible at the start of graph `depth`) down; return the final names."""
        graph = self.model.graph if depth == 0 else scopes[depth - 1].body
        in_loops = sum(1 for s in scopes[:depth] if s.owner.op_type == "Loop")
        if depth and scopes[depth - 1].owner.op_type == "Loop":
            top: list[onnx.NodeProto] = []  # this iteration's row, before anything reads it
            row = self._row(counters, in_loops, 0, top)
            bufs = [bufs[0], self._node("Concat", [bufs[1], row], "rows", top, axis=0), bufs[2]]
            _prepend(graph, top)
        if depth == len(scopes):
            return self._record(name, bufs, counters, in_loops, graph)
        scope = scopes[depth]
        if scope.owner.op_type == "Loop":
            inner_in = [self.names.fresh(f"{b}_in") for b in bufs]
            carried = len(scope.owner.input) - 2
            scope.owner.input.extend(bufs)
            for n, t in zip(inner_in, types, strict=True):
                scope.body.input.append(helper.make_tensor_value_info(n, t, [None]))
            inner_out = self._descend(name, scopes, depth + 1, inner_in, types, counters)
            _insert_outputs(scope.body, 1 + carried, inner_out, types)
            outs = [self.names.fresh(f"{b}_final") for b in bufs]
            _insert(scope.owner.output, carried, outs)
            return outs
        inner_out = self._descend(name, scopes, depth + 1, bufs, types, counters)
        other = next(a.g for a in scope.owner.attribute if a.name == (
            "else_branch" if scope.attr == "then_branch" else "then_branch"))
        passed = [self._node("Identity", [b], "untaken", other.node) for b in bufs]
        for branch, outs in ((scope.body, inner_out), (other, passed)):
            branch.output.extend(helper.make_tensor_value_info(o, t, [None])
                                 for o, t in zip(outs, types, strict=True))
        results = [self.names.fresh(f"{b}_if") for b in bufs]
        scope.owner.output.extend(results)
        return results

    def _record(self, name, bufs, counters, in_loops, graph) -> list[str]:
        """At the tensor: append its flat values, an index row flagged 1, and its shape."""
        nodes: list[onnx.NodeProto] = []
        flat_shape = self._const(np.array([-1], np.int64), "flat", nodes)
        flat = self._node("Reshape", [name, flat_shape], "flat", nodes)
        shape = self._node("Shape", [name], "shape", nodes)
        row = self._row(counters, in_loops, 1, nodes)
        ends = [self._node("Concat", [buf, part], hint, nodes, axis=0) for buf, part, hint in
                zip(bufs, (flat, row, shape), ("values", "rows", "shapes"), strict=True)]
        graph.node.extend(nodes)  # at the end: after whatever computes `name`
        return ends

    def _row(self, counters, in_loops, flag, nodes) -> str:
        """[index of each enclosing Loop (-1 below this level)..., flag] as int64 [levels + 1]."""
        parts = []
        if in_loops:
            one = self._const(np.array([1], np.int64), "one", nodes)
            parts = [self._node("Reshape", [c, one], "index", nodes) for c in counters[:in_loops]]
        rest = [-1] * (len(counters) - in_loops) + [flag]
        parts.append(self._const(np.array(rest, np.int64), "row_rest", nodes))
        return self._node("Concat", parts, "row", nodes, axis=0) if len(parts) > 1 else parts[0]

    def _const(self, value: np.ndarray, hint: str, nodes) -> str:
        return self._node("Constant", [], hint, nodes, value=numpy_helper.from_array(value))

    def _node(self, op, inputs, hint, nodes, **attrs) -> str:
        out = self.names.fresh(f"capture_{hint}")
        nodes.append(helper.make_node(op, inputs, [out], name=self.names.fresh(out + "_node"),
                                      **attrs))
        return out

    def _start(self, elem_type: int, hint: str, nodes) -> str:
        dtype = helper.tensor_dtype_to_np_dtype(elem_type)
        return self._const(np.zeros((0,), dtype), f"{hint}_start", nodes)


def decode(t: Threaded, got: dict, key: str) -> None:
    """Put the stacked tensor (None if it was never made) and its iteration mask into `got`."""
    values, shapes = np.asarray(got[t.values]), np.asarray(got[t.shapes])
    rows = np.asarray(got[t.rows]).reshape(-1, t.loops + 1)
    sizes = [int(rows[:, k].max()) + 1 if rows.size else 0 for k in range(t.loops)]
    made = rows[rows[:, -1] == 1]
    ran = np.zeros(sizes, bool)
    if not len(made):
        got[key], got[RAN + key] = None, ran
        return
    per = shapes.reshape(len(made), -1)
    if not (per == per[0]).all():
        raise CheckSkipped(f"the shape of '{key}' changes between Loop iterations")
    shape = [int(d) for d in per[0]]
    stacked = np.full([*sizes, *shape], 0.5).astype(t.dtype)
    count = math.prod(shape)
    for k, row in enumerate(made):
        index = tuple(int(i) for i in row[:t.loops])
        stacked[index] = values[k * count:(k + 1) * count].reshape(shape)
        ran[index] = True
    got[key], got[RAN + key] = stacked, ran


def _prepend(graph, nodes: list[onnx.NodeProto]) -> None:
    # insert, not rebuild: a rebuild copies the nodes, and the scopes still to be threaded
    # (and the caller's sites) hold references to them and to their bodies
    for k, node in enumerate(nodes):
        graph.node.insert(k, node)


def _insert(repeated, index: int, items: list[str]) -> None:
    for k, item in enumerate(items):
        repeated.insert(index + k, item)


def _insert_outputs(body: onnx.GraphProto, index: int, names: list[str], types) -> None:
    for k, (n, t) in enumerate(zip(names, types, strict=True)):
        body.output.insert(index + k, helper.make_tensor_value_info(n, t, [None]))
