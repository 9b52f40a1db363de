"""Strict shape inference of a large flat graph, one slice of its nodes at a time (issue 10).

onnx's C++ inference holds its own copy of the whole model and every inferred type at once:
~220 MB over its 12 MB input for a 100k-node chain, more than onnx.load + onnx.save in all.
For a graph whose ops' inference reads no propagated data (passes.local_check, step 1: the
main graph only, default-domain ops, no subgraph, no local function), a node's inferred types
depend only on its inputs' types, its attributes and the declarations of its outputs. So
consecutive slices of the node list, each inferred as a model of its own - the values it reads
from outside declared as graph inputs with the types the graph's inputs, initializers or the
slices before it gave them, the declarations (graph outputs, value_info) of the values it
computes kept - give every node the types one inference of the whole graph gives it, and fail
where it fails (strict mode: at the same node, for the same reason). Inference runs as in
onnx's full check: strict, type-checked, without data propagation.

Where that is not certain, `infer_in_slices` returns None and the caller infers the whole
graph: a dim named by inference (`unk__N` counts per inference), a value read before it is
computed or never computed, computed twice or also an input or initializer, a declaration of
a value no node computes, sparse initializers.
"""

from __future__ import annotations

from itertools import chain, compress
from operator import attrgetter
from typing import NamedTuple

import onnx
from onnx.onnx_cpp2py_export import shape_inference as _c_inference

from onnxfix.graph.shapes import Facts, declared_facts

# Nodes per slice: about 20 MB of onnx's inference each; smaller graphs are inferred whole.
SLICE_NODES = 8192
_INPUT, _OUTPUT, _NAME = attrgetter("input"), attrgetter("output"), attrgetter("name")
_GENERATED = b"unk__"  # onnx's prefix for the dims it names


class _Slice:
    """Consecutive nodes, the outside values they read, the values they compute."""

    def __init__(self, nodes: list):
        self.nodes = nodes
        made = list(chain.from_iterable(map(_OUTPUT, nodes)))
        self.made = set(made)
        self.made.discard("")
        self.once = len(self.made) == len(made) - made.count("")
        self.reads = set(chain.from_iterable(map(_INPUT, nodes)))
        self.reads -= self.made
        self.reads.discard("")


class _Outside(NamedTuple):
    """The values slices read from outside them, by where their types come from."""

    inputs: set[str]
    initializers: set[str]
    computed: set[str]


def infer_in_slices(model: onnx.ModelProto, size: int = SLICE_NODES) -> Facts | None:
    """The facts of a strict, type-checked inference of `model` (a flat graph, see the module
    doc), inferred in slices of `size` nodes; None where slicing may not give the whole
    inference's facts (infer the whole graph then). A failing slice raises onnx's error."""
    g = model.graph
    if len(g.node) <= size or g.sparse_initializer:
        return None
    nodes = list(g.node)
    slices = [_Slice(nodes[a:a + size]) for a in range(0, len(nodes), size)]
    outside = _plan_slices(g, slices)
    if outside is None:
        return None
    head = onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import)
    head.graph.name = g.name
    return _infer_slices(head, g, slices, outside)


def _plan_slices(g: onnx.GraphProto, slices: list[_Slice]) -> _Outside | None:
    """What the slices read from outside; None when a value is read before it is computed, or
    computed twice or also declared as an input or initializer, or a declaration names a
    value no node computes."""
    inputs, inits = set(map(_NAME, g.input)), set(map(_NAME, g.initializer))
    computed: set[str] = set()
    for s in slices:
        if not s.once or not s.made.isdisjoint(inputs) or not s.made.isdisjoint(inits):
            return None
        if not s.made.isdisjoint(computed) or s.reads - inputs - inits - computed:
            return None
        computed |= s.made
    if not computed.issuperset(map(_NAME, chain(g.output, g.value_info))):
        return None
    reads = set().union(*(s.reads for s in slices))
    return _Outside(reads & inputs, reads & inits, reads & computed)


def _infer_slices(head: onnx.ModelProto, g: onnx.GraphProto, slices: list[_Slice],
                  outside: _Outside) -> Facts | None:
    inputs = {vi.name: vi for vi in g.input if vi.name in outside.inputs}
    inits = dict(zip(map(_NAME, g.initializer), g.initializer, strict=True))
    outputs = {vi.name: vi for vi in g.output}
    declared = {vi.name: k for k, vi in enumerate(g.value_info)}
    typed: dict[str, onnx.ValueInfoProto] = {}  # computed values later slices read
    merged_outputs: dict[str, onnx.ValueInfoProto] = {}
    merged_declared: list[tuple[int, onnx.ValueInfoProto]] = []
    kept: list[onnx.GraphProto] = []  # per slice, the value_info inference added
    for s in slices:
        part = onnx.ModelProto()
        part.CopyFrom(head)
        pg = part.graph
        pg.node.extend(s.nodes)
        pg.input.extend(map(inputs.__getitem__, s.reads & outside.inputs))
        pg.initializer.extend(map(inits.__getitem__, s.reads & outside.initializers))
        pg.input.extend(map(typed.__getitem__, s.reads & outside.computed))
        own = [name for name in s.made if name in declared]
        pg.output.extend(outputs[n] for n in s.made if n in outputs)
        pg.value_info.extend(g.value_info[declared[n]] for n in own)
        result = _infer(part.SerializeToString())
        if result is None:
            return None
        rg = result.graph  # copied out of it: a part of a message keeps all of it alive
        merged_outputs.update((vi.name, _copy(vi)) for vi in rg.output)
        merged_declared.extend(zip((declared[n] for n in own), map(_copy, rg.value_info),
                                   strict=False))
        new = onnx.GraphProto()
        new.value_info.extend(rg.value_info[len(own):])
        kept.append(new)
        later = s.made & outside.computed
        for seq in (rg.output, rg.value_info):
            typed.update((vi.name, _copy(vi))
                         for vi in compress(seq, map(later.__contains__, map(_NAME, seq))))
    return _facts(g, merged_outputs, merged_declared, kept)


def _copy(vi: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    out = onnx.ValueInfoProto()
    out.CopyFrom(vi)
    return out


def _infer(data: bytes) -> onnx.ModelProto | None:
    """One slice inferred as onnx's full check infers (None: a dim was named by inference)."""
    inferred = _c_inference.infer_shapes(data, True, True, False)  # check_type, strict, no dp
    if _GENERATED in inferred:
        return None
    result = onnx.ModelProto()
    result.ParseFromString(inferred)
    return result


def _facts(g: onnx.GraphProto, outputs: dict, declared: list, kept: list) -> Facts:
    """The declarations the whole graph's inference would hold, in its order: initializers,
    inputs, outputs (merged), value_info (the declared ones merged, then the added ones)."""
    out = onnx.GraphProto()
    out.output.extend(outputs[vi.name] for vi in g.output)
    out.value_info.extend(vi for _, vi in sorted(declared, key=lambda e: e[0]))
    return declared_facts([g.initializer, g.input, out.output, out.value_info,
                           *(k.value_info for k in kept)])


__all__ = ["SLICE_NODES", "infer_in_slices"]
