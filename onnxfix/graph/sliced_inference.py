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
computed, never computed or left untyped, a value computed twice or also an input or
initializer, a declaration of a value no node computes, sparse initializers. The facts are
read from each slice's result only for the names asked (`SlicedFacts`).
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import chain, compress, count
from operator import attrgetter, methodcaller, not_

import onnx
from onnx.onnx_cpp2py_export import shape_inference as _c_inference

from onnxfix.graph.shapes import Facts, TensorFacts, declared_facts

# Nodes per slice: about 6 MB of onnx's inference each. Smaller slices infer faster in all
# (c100k: 2048 a slice 1.85 s CPU, 8192 2.10 s) and weigh less; what they cost - more
# values read from older slices - the older slices' tables (_Slicer._table) keep small.
SLICE_NODES = 2048
# Graphs up to this many nodes are inferred whole: their inference (~2.2 KB a node) weighs
# little next to the rest, and slicing costs some Python per node (reading every node's
# inputs, copying the nodes and the initializers each slice reads).
WHOLE_UP_TO = 32768
_INPUT, _OUTPUT, _NAME = attrgetter("input"), attrgetter("output"), attrgetter("name")
_SERIALIZE = methodcaller("SerializeToString")
_GENERATED = b"unk__"  # onnx's prefix for the dims it names
_SCAN = 512  # nodes per step of the backward search for declared values' producers


def infer_in_slices(model: onnx.ModelProto, size: int = SLICE_NODES,
                    whole_up_to: int = WHOLE_UP_TO) -> SlicedFacts | None:
    """The facts of a strict, type-checked inference of `model` (a flat graph, see the module
    doc), inferred in slices of `size` nodes; None for a graph of at most `whole_up_to` or
    `size` nodes, and where slicing may not give the whole inference's facts (infer the whole
    graph then). A failing slice raises onnx's error."""
    g = model.graph
    if len(g.node) <= max(size, whole_up_to) or g.sparse_initializer:
        return None
    nodes = list(g.node)
    declared = {vi.name for vi in chain(g.output, g.value_info)}
    if len(set(map(_NAME, g.output))) != len(g.output) or len(
            set(map(_NAME, g.value_info))) != len(g.value_info):
        return None  # a name declared twice: which declaration inference merges is its own
    producers = _producers(nodes, declared)
    if producers is None:
        return None
    head = onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import)
    head.graph.name = g.name
    return _Slicer(g, head).run(nodes, size, producers)


def _producers(nodes: list, names: set[str]) -> dict[str, int] | None:
    """name -> index of the last node computing it, searched from the end (declared outputs
    are mostly computed last); None when a name is computed by no node."""
    found: dict[str, int] = {}
    pending = set(names)
    for stop in range(len(nodes), 0, -_SCAN):
        if not pending:
            break
        start = max(0, stop - _SCAN)
        chunk = nodes[start:stop]
        hits = compress(count(), map(not_, map(pending.isdisjoint, map(_OUTPUT, chunk))))
        for k in reversed(list(hits)):
            for name in set(chunk[k].output) & pending:
                found[name] = start + k
            pending -= found.keys()
    return None if pending else found


class _Slicer:
    """Infers the slices in order, keeping each one's result as bytes."""

    def __init__(self, g: onnx.GraphProto, head: onnx.ModelProto):
        self.g, self.head = g, head
        self.inputs = {vi.name: vi for vi in g.input}
        # held as a list: indexing the protobuf container makes a new wrapper per look-up
        self.inits = list(g.initializer)
        self.init_index = dict(zip(map(_NAME, self.inits), count()))
        # looked up from the reads' side (a slice reads a few thousand names): no set of
        # every initializer's name next to the index (4 MB each at 100k initializers)
        self._is_input, self._is_init = self.inputs.__contains__, self.init_index.__contains__
        self.outputs_declared = {vi.name: vi for vi in g.output}
        self.value_info_index = dict(zip(map(_NAME, g.value_info), count()))
        self.results: list[bytes] = []
        self.made: list[set[str]] = []  # per slice, the values its result types
        self.outputs: dict[str, onnx.ValueInfoProto] = {}  # declared, merged
        self.declared: dict[str, onnx.ValueInfoProto] = {}  # value_info, merged
        self._parsed: tuple[int, _Result] | None = None  # the last slice result read
        self._tables: dict[int, dict[str, bytes]] = {}  # see _table

    def result(self, k: int) -> _Result:
        """Slice k's result, parsed (the one read last is kept: mostly the previous slice's,
        which the next slice reads from)."""
        if self._parsed is None or self._parsed[0] != k:
            self._parsed = (k, _Result(self.results[k]))
        return self._parsed[1]

    def run(self, nodes: list, size: int, producers: dict[str, int]) -> SlicedFacts | None:
        computed: set[str] = set()
        owns: dict[int, set[str]] = {}  # slice -> the declared values it computes
        for name, at in producers.items():
            owns.setdefault(at // size, set()).add(name)
        for k, a in enumerate(range(0, len(nodes), size)):
            made = self._infer(nodes[a:a + size], owns.get(k, set()), computed)
            if made is None:
                return None
            self.made.append(made)
            computed |= made
        return SlicedFacts(self)

    def _infer(self, nodes: list, own: set[str], computed: set[str]) -> set[str] | None:
        """Infer one slice; the values it types, or None (see the module doc)."""
        g = self.g
        reads = set(chain.from_iterable(map(_INPUT, nodes)))
        reads.discard("")
        from_inputs = set(filter(self._is_input, reads))
        from_inits = set(filter(self._is_init, reads))
        from_slices = reads & computed
        part = onnx.ModelProto()
        part.CopyFrom(self.head)
        pg = part.graph
        pg.node.extend(nodes)
        pg.input.extend(map(self.inputs.__getitem__, from_inputs))
        # in graph order, not the set's: copying them in memory order is a fifth faster
        pg.initializer.extend(map(self.inits.__getitem__,
                                  sorted(map(self.init_index.__getitem__, from_inits))))
        pg.input.extend(self.typed(from_slices))
        pg.output.extend(self.outputs_declared[n] for n in own if n in self.outputs_declared)
        pg.value_info.extend(g.value_info[self.value_info_index[n]] for n in own
                             if n in self.value_info_index)
        data = _c_inference.infer_shapes(part.SerializeToString(), True, True, False)
        del part  # check_type, strict, no data propagation: the full check's inference
        if _GENERATED in data:
            return None
        parsed = _Result(data)
        made = set(parsed.names).union(map(_NAME, parsed.outputs))
        if any(map(self._is_input, made)) or any(map(self._is_init, made)) or (
                not made.isdisjoint(computed)) or (
                reads - from_inputs - from_inits - from_slices - made):
            return None
        self.outputs.update((vi.name, _copy(vi)) for vi in parsed.outputs)
        for name in own & set(parsed.names):
            self.declared[name] = _copy(parsed.value_info_by_name(name))
        self._parsed = (len(self.results), parsed)
        self.results.append(data)
        return made

    def typed(self, names: set[str]) -> list[onnx.ValueInfoProto]:
        """The types the slices before gave `names` (they computed them): the previous
        slice's from its parsed result, an older slice's from its table (`_table`), so no
        result is parsed twice however many later slices read it (a slice parsing one
        result per name: a 60k-node graph with a thousand long reads took 4.7 s; one per
        older slice read, for every slice reading it: 1.8 s at 2048 nodes a slice)."""
        typed, by_slice = [], {}
        for name in names:
            for seq in (self.outputs, self.declared):
                if name in seq:
                    typed.append(seq[name])
                    break
            else:
                k = next(k for k in range(len(self.made) - 1, -1, -1) if name in self.made[k])
                by_slice.setdefault(k, []).append(name)
        for k in sorted(by_slice, reverse=True):
            if self._parsed is not None and self._parsed[0] == k:  # the previous slice
                typed.extend(map(self._parsed[1].value_info_by_name, by_slice[k]))
            else:
                table = self._table(k)
                typed.extend(map(onnx.ValueInfoProto.FromString,
                                 map(table.__getitem__, by_slice[k])))
        return typed

    def _table(self, k: int) -> dict[str, bytes]:
        """Slice k's value_info by name (a later duplicate wins, as in value_info_by_name),
        each serialized: built on the first read from slice k by a slice after the next,
        from one parse of its result, which is not kept (a parsed result weighs several
        times its bytes; the tables only hold the value_info of slices read from afar)."""
        if k not in self._tables:
            vis = _Result(self.results[k]).value_info
            self._tables[k] = dict(zip(map(_NAME, vis), map(_SERIALIZE, vis), strict=True))
        return self._tables[k]


class _Result:
    """One slice's inferred value_info, parsed from its bytes."""

    def __init__(self, data: bytes):
        graph = onnx.ModelProto.FromString(data).graph
        self.value_info, self.outputs = graph.value_info, graph.output
        self.names = list(map(_NAME, self.value_info))
        self._index: dict[str, int] | None = None

    def value_info_by_name(self, name: str) -> onnx.ValueInfoProto:
        """The last value_info of `name` (indexed on the first look-up)."""
        if self._index is None:
            self._index = dict(zip(self.names, count()))  # a later duplicate wins
        return self.value_info[self._index[name]]


def _copy(vi: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    out = onnx.ValueInfoProto()
    out.CopyFrom(vi)
    return out


class SlicedFacts(Mapping):
    """name -> TensorFacts as `shapes.Facts` reads them off the whole graph's inference
    (initializers, inputs, outputs, value_info; a later declaration wins), each read off the
    one slice that typed it. Iterating, or a declaration that is not a tensor, reads them all."""

    def __init__(self, slicer: _Slicer):
        self._slicer = slicer
        g = slicer.g
        self._given = declared_facts([g.initializer, g.input])
        self._all: Facts | None = None

    def _last(self, name: str):
        s = self._slicer
        if name in s.declared:
            return s.declared[name]
        if name in s.outputs:
            return s.outputs[name]
        for k in range(len(s.made) - 1, -1, -1):
            if name in s.made[k]:
                return s.result(k).value_info_by_name(name)
        return None

    def __getitem__(self, name: str) -> TensorFacts:
        decl = self._last(name)
        if decl is None:
            return self._given[name]
        fact = _tensor_facts(decl)
        if fact is None:
            return self._everything()[name]
        return fact

    def _everything(self) -> Facts:
        if self._all is None:
            s = self._slicer
            outputs, declared = onnx.GraphProto(), onnx.GraphProto()
            outputs.output.extend(s.outputs[vi.name] for vi in s.g.output)
            declared.value_info.extend(s.declared[vi.name] for vi in s.g.value_info)
            new = [onnx.ModelProto.FromString(d).graph.value_info for d in s.results]
            self._all = declared_facts([s.g.initializer, s.g.input, outputs.output,
                                        declared.value_info,
                                        *[_without(seq, s.declared) for seq in new]])
        return self._all

    def __iter__(self):
        return iter(self._everything())

    def __len__(self) -> int:
        return len(self._everything())


def _without(seq, declared: dict) -> list:
    return [vi for vi in seq if vi.name not in declared]


def _tensor_facts(decl: onnx.ValueInfoProto) -> TensorFacts | None:
    return declared_facts([[decl]]).get(decl.name)


__all__ = ["SLICE_NODES", "WHOLE_UP_TO", "SlicedFacts", "infer_in_slices"]
