"""Default tolerances by the narrowest float dtype on the path from the draws to an output.

A float16 draw cast to a float32 output (`(mu.half() + randn_like(mu.half()) * s).float()`)
carries float16 precision: onnxruntime may even run the original's float16 chain in float32
(it drops Cast pairs around kernels it only has in float32), so rebuilding the draw exactly
still leaves float16-sized differences in the float32 output.
"""

from __future__ import annotations

import heapq

import numpy as np
import onnx
from onnx import TensorProto

from onnxfix.check.compare import DEFAULT_TOLERANCES
from onnxfix.graph.find import iter_graphs
from onnxfix.graph.graph_edit import names_read
from onnxfix.graph.shapes import infer_facts

# float types from the least to the most precise (bfloat16 keeps 8 mantissa bits, float16 11)
_PRECISION = {TensorProto.BFLOAT16: 0, TensorProto.FLOAT16: 1, TensorProto.FLOAT: 2,
              TensorProto.DOUBLE: 3}
_TOLERANCES = {TensorProto.BFLOAT16: (1e-2, 1e-2), TensorProto.FLOAT16:
               DEFAULT_TOLERANCES[np.dtype(np.float16)], TensorProto.FLOAT:
               DEFAULT_TOLERANCES[np.dtype(np.float32)], TensorProto.DOUBLE:
               DEFAULT_TOLERANCES[np.dtype(np.float64)]}


def narrowest_float_on_paths(model: onnx.ModelProto, draws: list[str],
                             facts: dict | None = None) -> dict[str, int]:
    """Tensor -> the least precise float type on any path from a draw to it (itself included)."""
    facts = infer_facts(model) if facts is None else facts

    known: dict[str, int | None] = {}  # the fixed point reads each output's type per pass

    def own(name: str) -> int | None:
        if name not in known:
            f = facts.get(name)
            known[name] = f.elem_type if f is not None and f.elem_type in _PRECISION else None
        return known[name]

    narrow = {d: own(d) for d in draws}
    nodes: list[tuple[onnx.NodeProto, set[str]]] = []
    readers: dict[str, list[int]] = {}  # tensor -> the nodes reading it, in graph order
    for g, _ in iter_graphs(model):
        if not isinstance(g, onnx.GraphProto):
            continue
        for n in g.node:
            # a node without attributes holds no subgraph: it reads its inputs only
            reads = names_read(n) if n.attribute else {i for i in n.input if i}
            for r in reads:
                readers.setdefault(r, []).append(len(nodes))
            nodes.append((n, reads))
    # a worklist over the nodes that read a tensor whose narrowest type changed, in graph
    # order (graphs are topological: each node is usually visited once); the same fixed
    # point as sweeping every node until nothing changes
    pending = sorted({k for d in narrow for k in readers.get(d, ())})
    queued = set(pending)
    while pending:
        k = heapq.heappop(pending)
        queued.discard(k)
        node, reads = nodes[k]
        hit = None  # the least precise of what it reads (min is associative: once per node)
        for r in reads:
            if r in narrow:
                hit = _lesser(hit, narrow[r])
        for out in node.output:
            if not out:
                continue
            best = _lesser(_lesser(hit, own(out)), narrow.get(out))
            if out not in narrow or best != narrow[out]:
                narrow[out] = best
                for j in readers.get(out, ()):
                    if j not in queued:
                        queued.add(j)
                        heapq.heappush(pending, j)
    return narrow


def _lesser(a: int | None, b: int | None) -> int | None:
    """The less precise of two float types (None: not a float or not known)."""
    if a is None:
        return b
    if b is None:
        return a
    return b if _PRECISION[b] < _PRECISION[a] else a


def _least_precise(types: list[int | None]) -> int | None:
    known = [t for t in types if t is not None]
    return min(known, key=_PRECISION.__getitem__) if known else None


def path_tolerances(model: onnx.ModelProto, draws: list[str], outputs: list[str],
                    facts=None) -> dict[str, tuple[float, float, str]]:
    """(atol, rtol, dtype name) for each output a draw reaches through a narrower float.
    facts: `infer_facts(model)` when the caller has it."""
    facts = infer_facts(model) if facts is None else facts
    narrow = narrowest_float_on_paths(model, draws, facts)
    found = {}
    for name in outputs:
        t = narrow.get(name)
        f = facts.get(name)
        mine = f.elem_type if f is not None else None
        if t is not None and mine in _PRECISION and _PRECISION[t] < _PRECISION[mine]:
            found[name] = (*_TOLERANCES[t], onnx.helper.tensor_dtype_to_np_dtype(t).name
                           if t != TensorProto.BFLOAT16 else "bfloat16")
    return found
