"""Unique, readable names for everything onnxfix adds to a model."""

from __future__ import annotations

import re

import onnx

from onnxfix.graph.find import iter_graphs

_NOT_IDENT = re.compile(r"[^0-9A-Za-z_]+")


def sanitize(text: str) -> str:
    """A name that is a plain identifier: converters key on names and dislike punctuation."""
    clean = _NOT_IDENT.sub("_", text).strip("_")
    clean = re.sub(r"_+", "_", clean)
    if not clean:
        clean = "t"
    if clean[0].isdigit():
        clean = "t" + clean
    return clean


class NameAllocator:
    """Hands out names that collide with nothing already in the model, nor with each other."""

    def __init__(self, model: onnx.ModelProto):
        self.taken: set[str] = set()
        for graph in _all_containers(model):
            self._take_graph(graph)
        for f in model.functions:
            self.taken.add(f.name)
        for vi_dim in _all_dim_params(model):
            self.taken.add(vi_dim)

    def _take_graph(self, graph) -> None:
        taken = self.taken
        for node in graph.node:
            taken.update(node.input)
            taken.update(node.output)
            if node.name:
                taken.add(node.name)
        if isinstance(graph, onnx.GraphProto):
            for seq in (graph.input, graph.output, graph.value_info):
                taken.update(v.name for v in seq)
            taken.update(t.name for t in graph.initializer)
            taken.update(t.values.name for t in graph.sparse_initializer)
        else:
            taken.update(graph.input)
            taken.update(graph.output)

    def copy(self) -> NameAllocator:
        """An independent allocator holding the same names (a set copy, not a deepcopy)."""
        other = NameAllocator.__new__(NameAllocator)
        other.taken = set(self.taken)
        return other

    def __deepcopy__(self, memo) -> NameAllocator:
        return self.copy()

    def fresh(self, base: str) -> str:
        """`base` (sanitized) if free, else `base_1`, `base_2`, ..."""
        stem = sanitize(base)
        name, k = stem, 0
        while name in self.taken:
            k += 1
            name = f"{stem}_{k}"
        self.taken.add(name)
        return name


def _all_containers(model: onnx.ModelProto):
    for container, _ in iter_graphs(model):
        yield container


def _all_dim_params(model: onnx.ModelProto):
    for container, _ in iter_graphs(model):
        if not isinstance(container, onnx.GraphProto):
            continue
        for seq in (container.input, container.output, container.value_info):
            for vi in seq:
                t = vi.type.tensor_type
                for d in t.shape.dim:
                    if d.dim_param:
                        yield d.dim_param
