"""Every tensor of a model (where weights can live) and what their payloads must look like."""

from __future__ import annotations

import math
from collections.abc import Iterator
from itertools import compress, count
from operator import attrgetter

import onnx

from onnxfix.errors import ModelError

EXTERNAL = onnx.TensorProto.EXTERNAL

# Bytes per element for the fixed-size tensor types; packed 4-bit types take half a byte.
_ITEM_BYTES = {
    onnx.TensorProto.FLOAT: 4, onnx.TensorProto.UINT8: 1, onnx.TensorProto.INT8: 1,
    onnx.TensorProto.UINT16: 2, onnx.TensorProto.INT16: 2, onnx.TensorProto.INT32: 4,
    onnx.TensorProto.INT64: 8, onnx.TensorProto.BOOL: 1, onnx.TensorProto.FLOAT16: 2,
    onnx.TensorProto.DOUBLE: 8, onnx.TensorProto.UINT32: 4, onnx.TensorProto.UINT64: 8,
    onnx.TensorProto.COMPLEX64: 8, onnx.TensorProto.COMPLEX128: 16,
    onnx.TensorProto.BFLOAT16: 2,
}
for _name in ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT8E8M0"):
    if hasattr(onnx.TensorProto, _name):
        _ITEM_BYTES[getattr(onnx.TensorProto, _name)] = 1
_HALF_BYTE = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1")
              if hasattr(onnx.TensorProto, n)}


_ATTRIBUTES = attrgetter("attribute")
_DATA_LOCATION = attrgetter("data_location")


def all_tensors(model: onnx.ModelProto) -> Iterator[tuple[onnx.TensorProto, str]]:
    """(tensor, where it is) for every tensor of the model: initializers, sparse tensors,
    tensor attributes, in the graph, its subgraphs, functions and training_info."""
    yield from graph_tensors(model.graph, "graph")
    yield from _outside_graph(model)


def external_positions(tensors) -> Iterator[int]:
    """The positions of the tensors stored as external data, picked out in C: a graph of
    100k small initializers takes no Python step per tensor."""
    return compress(count(), map(EXTERNAL.__eq__, map(_DATA_LOCATION, tensors)))


def external_tensors(model: onnx.ModelProto) -> Iterator[tuple[onnx.TensorProto, str]]:
    """all_tensors, external ones only (cheaper: most initializers are skipped unnamed)."""
    inits = model.graph.initializer
    for k in external_positions(inits):
        t = inits[k]
        yield t, f"graph initializer {t.name!r}"
    for t, where in graph_tensors(model.graph, "graph", initializers=False):
        if t.data_location == EXTERNAL:
            yield t, where
    for t, where in _outside_graph(model):
        if t.data_location == EXTERNAL:
            yield t, where


def _outside_graph(model: onnx.ModelProto) -> Iterator[tuple[onnx.TensorProto, str]]:
    for f in model.functions:
        for n in f.node:
            if n.attribute:
                yield from _node_tensors(n, f"function {f.domain}::{f.name}")
    for i, ti in enumerate(model.training_info):
        yield from graph_tensors(ti.initialization, f"training_info[{i}].initialization")
        yield from graph_tensors(ti.algorithm, f"training_info[{i}].algorithm")


def graph_tensors(g: onnx.GraphProto, where: str, *, initializers: bool = True
                  ) -> Iterator[tuple[onnx.TensorProto, str]]:
    if initializers:
        for t in g.initializer:
            yield t, f"{where} initializer {t.name!r}"
    for s in g.sparse_initializer:
        yield s.values, f"{where} sparse initializer {s.values.name!r}"
        yield s.indices, f"{where} sparse initializer {s.values.name!r} indices"
    # most nodes have no attribute: the others are picked out in C (no Python step per node)
    for n in compress(g.node, map(_ATTRIBUTES, g.node)):
        yield from _node_tensors(n, where)


def _node_tensors(n: onnx.NodeProto, where: str):
    here = f"{where} node {n.name or n.op_type!r}"
    for a in n.attribute:
        if a.HasField("t"):
            yield a.t, here
        yield from ((t, here) for t in a.tensors)
        if a.HasField("sparse_tensor"):
            yield a.sparse_tensor.values, here
            yield a.sparse_tensor.indices, here
        for s in a.sparse_tensors:
            yield s.values, here
            yield s.indices, here
        if a.HasField("g"):
            yield from graph_tensors(a.g, f"{here}.{a.name}")
        for g in a.graphs:
            yield from graph_tensors(g, f"{here}.{a.name}")


def external_info(t: onnx.TensorProto, origin: str = "") -> dict[str, str]:
    """A tensor's external_data entries as a dict (UTF-8 checked)."""
    info = {e.key: e.value for e in t.external_data}
    # protobuf hands out bytes for proto2 strings that are not valid UTF-8
    if not all(isinstance(s, str) for kv in info.items() for s in kv):
        raise ModelError(f"{origin}: tensor {t.name!r} has external data entries that are not "
                         "valid UTF-8")
    return info


def _expected_bytes(t: onnx.TensorProto) -> int | None:
    count = math.prod(t.dims)
    if t.data_type in _ITEM_BYTES:
        return count * _ITEM_BYTES[t.data_type]
    if t.data_type in _HALF_BYTE:
        return (count + 1) // 2
    return None


def check_payload_size(t: onnx.TensorProto, length: int, origin: str) -> None:
    """Refuse a payload whose size is not what the tensor's dims and type declare."""
    if any(d < 0 for d in t.dims):
        raise ModelError(f"{origin}: tensor {t.name!r} has a negative dim {list(t.dims)}")
    want = _expected_bytes(t)
    if want is not None and want != length:
        raise ModelError(f"{origin}: tensor {t.name!r} declares dims {list(t.dims)} "
                         f"({want} bytes) but holds {length} bytes")
