"""Unique, readable names for everything onnxfix adds to a model."""

from __future__ import annotations

import re

import onnx

from onnxfix.graph.find import iter_graphs

_NOT_IDENT = re.compile(r"[^0-9A-Za-z_]+")
_RUNS = re.compile(r"_+")


def sanitize(text: str) -> str:
    """A name that is a plain identifier: converters key on names and dislike punctuation."""
    # an ASCII identifier holds nothing the pattern replaces: no regex pass (a rewrite of
    # thousands of draws sanitizes a handful of names per draw, nearly all of them so)
    plain = text.isascii() and text.isidentifier()
    clean = (text if plain else _NOT_IDENT.sub("_", text)).strip("_")
    if "__" in clean:  # (a test, not a regex: thousands of names per rewrite have none)
        clean = _RUNS.sub("_", clean)
    if not clean:
        clean = "t"
    if clean[0].isdigit():
        clean = "t" + clean
    return clean


class NameAllocator:
    """Hands out names that collide with nothing already in the model, nor with each other.

    "Already in the model" means when the allocator was made. Collecting every name of a
    100k-node graph costs a Python walk of it, while a fresh name (`noise_eps`) is almost
    never in the model: the allocator keeps the model's serialized bytes instead and asks
    whether the name's bytes occur in them at all (every name is a string field, stored
    verbatim). Only a name that does occur somewhere makes it collect the names, once, from
    those bytes (so later edits to the model do not count, as before).
    """

    # above this the model is not serialized (a model with its weights in memory): the names
    # are collected from the model right away
    SNAPSHOT_LIMIT = 64 * 2**20
    # each byte search scans the whole snapshot: after this many (a model with thousands of
    # random nodes asks for thousands of names) the names are collected once instead
    SEARCH_LIMIT = 64

    def __init__(self, model: onnx.ModelProto):
        # [snapshot bytes or None, the model's names or None]: shared by every copy, so the
        # names one copy collects serve them all (a plan's allocator is copied for the noise
        # names, each emit and the local proof: each collected them again from the bytes)
        self._model: list = [None, None]
        self._added: set[str] = set()
        self._searches = 0
        if model.ByteSize() <= self.SNAPSHOT_LIMIT:
            self._model[0] = model.SerializeToString()
        else:
            self._model[1] = frozenset(model_names(model))

    @property
    def _names(self) -> frozenset[str] | None:
        """The model's names once collected (by this allocator or a copy), else None."""
        return self._model[1]

    def copy(self) -> NameAllocator:
        """An independent allocator holding the same names (the model's are shared)."""
        other = NameAllocator.__new__(NameAllocator)
        other._model = self._model
        other._added = set(self._added)
        other._searches = self._searches
        return other

    def __deepcopy__(self, memo) -> NameAllocator:
        return self.copy()

    def taken(self, name: str) -> bool:
        if name in self._added:
            return True
        shared = self._model
        if shared[1] is None:
            self._searches += 1
            if self._searches <= self.SEARCH_LIMIT and name.encode() not in shared[0]:
                return False
            model = onnx.ModelProto()
            model.ParseFromString(shared[0])
            shared[1], shared[0] = frozenset(model_names(model)), None
        return name in shared[1]

    def fresh(self, base: str) -> str:
        """`base` (sanitized) if free, else `base_1`, `base_2`, ..."""
        stem = sanitize(base)
        name, k = stem, 0
        while self.taken(name):
            k += 1
            name = f"{stem}_{k}"
        self._added.add(name)
        return name


def model_names(model: onnx.ModelProto) -> set[str]:
    """Every name in the model: values, nodes, functions and dim params."""
    taken: set[str] = set()
    graphs = list(_all_containers(model))  # one walk serves the names and the dim params
    for graph in graphs:
        _take_graph(taken, graph)
    for f in model.functions:
        taken.add(f.name)
    taken.update(_all_dim_params(graphs))
    return taken


def _take_graph(taken: set[str], graph) -> None:
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


def _all_containers(model: onnx.ModelProto):
    for container, _ in iter_graphs(model):
        yield container


def _all_dim_params(containers):
    for container in containers:
        if not isinstance(container, onnx.GraphProto):
            continue
        for seq in (container.input, container.output, container.value_info):
            for vi in seq:
                t = vi.type.tensor_type
                for d in t.shape.dim:
                    if d.dim_param:
                        yield d.dim_param
