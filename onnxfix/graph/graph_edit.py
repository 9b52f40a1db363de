"""Graph surgery shared by the passes: splice replacements in, drop what they made dead."""

from __future__ import annotations

from itertools import compress, count, tee
from operator import attrgetter, not_, or_

import onnx

from onnxfix.graph.find import Site, walk_graph
from onnxfix.ops import OP_TABLE, is_random_op

_OP_TYPE = attrgetter("op_type")
# Up to this many replacements and insertions, a graph is edited in place (see splice).
IN_PLACE_EDITS = 64


class GraphEdits:
    """Node replacements and insertions, applied per graph once every site is planned.

    Rebuilding a graph's node list copies its nodes, and with them their subgraphs, so graphs
    are edited innermost first: an outer rebuild then carries the finished inner ones.
    """

    def __init__(self):
        self.by_graph: dict[int, tuple[int, onnx.GraphProto, dict[str, list], list]] = {}

    def _entry(self, graph, depth: int):
        key = id(graph)
        if key not in self.by_graph:
            self.by_graph[key] = (depth, graph, {}, [])
        return self.by_graph[key]

    def replace(self, site: Site, nodes: list[onnx.NodeProto]) -> None:
        self._entry(site.container, len(site.scopes))[2][site.output] = nodes

    def prepend(self, graph: onnx.GraphProto, node: onnx.NodeProto, depth: int) -> None:
        self._entry(graph, depth)[3].append(node)

    def apply(self) -> None:
        for _, graph, replaced, front in sorted(self.by_graph.values(), key=lambda e: -e[0]):
            freed, first = splice(graph, replaced, front)
            remove_dead_producers(graph, freed, start=first)


def splice(graph, replaced: dict[str, list], front: list) -> tuple[list[str], int]:
    """Put each random node's replacement where it stood; return the inputs it no longer reads
    and where the first replacement now stands (their other readers are likely after it).

    A few edits are made in place (a 100k-node graph is not copied for one replaced node);
    many rebuild the node list once, as each in-place edit moves the nodes after it."""
    nodes = graph.node
    hits = [k for k in compress(count(), map(OP_TABLE.__contains__, map(_OP_TYPE, nodes)))
            if nodes[k].output and nodes[k].output[0] in replaced and is_random_op(nodes[k])]
    freed: list[str] = []
    for k in hits:
        still = {i for n in replaced[nodes[k].output[0]] for i in n.input}
        freed.extend(i for i in nodes[k].input if i and i not in still)
    first = hits[0] + len(front) if hits else 0
    if len(hits) + len(front) > IN_PLACE_EDITS:
        _rebuild(graph, replaced, front, set(hits))
        return freed, first
    for k in reversed(hits):
        new = replaced[nodes[k].output[0]]
        del nodes[k]
        for j, node in enumerate(new):
            nodes.insert(k + j, node)
    for j, node in enumerate(front):
        nodes.insert(j, node)
    return freed, first


def _rebuild(graph, replaced: dict[str, list], front: list, hits: set[int]) -> None:
    new_nodes = list(front)
    for k, node in enumerate(graph.node):
        new_nodes.extend(replaced[node.output[0]] if k in hits else [node])
    del graph.node[:]
    graph.node.extend(new_nodes)


def names_read(node: onnx.NodeProto) -> set[str]:
    """Names a node reads, including outer-scope names read inside its subgraphs."""
    names = {i for i in node.input if i}
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            bodies = [attr.g]
        elif attr.type == onnx.AttributeProto.GRAPHS:
            bodies = list(attr.graphs)
        else:
            continue
        for body in bodies:
            for g in walk_graph(body):
                for n in g.node:
                    names.update(i for i in n.input if i)
                names.update(o.name for o in g.output)
    return names

_INPUT = attrgetter("input")
_ATTRIBUTES = attrgetter("attribute")


def names_used(graph: onnx.GraphProto) -> set[str]:
    """Every name a node of `graph` (or of its subgraphs) reads, and the graph's outputs."""
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(node.input)
        if node.attribute:  # only then can it hold a subgraph
            used |= names_read(node)
    used.discard("")
    return used


def _any_unread(graph: onnx.GraphProto, freed: list[str], start: int = 0) -> bool:
    """Whether a freed name is read by no node and is no graph input or output: the common
    case (the input of a *Like op still feeds the rest of the graph) needs no reader counts."""
    return bool(unread(graph, set(freed) - {i.name for i in graph.input}, start))


# the reader walk takes the nodes from `start` on in slices of this many, then those before
_ROTATION = 512


def _rotated(nodes, start: int):
    """The nodes from `start` to the end, then from the first to `start`."""
    n = len(nodes)
    start = start if 0 < start < n else 0
    for a, stop in ((start, n), (0, start)):
        for b in range(a, stop, _ROTATION):
            yield from nodes[b:min(b + _ROTATION, stop)]


def unread(graph: onnx.GraphProto, names: set[str], start: int = 0) -> set[str]:
    """Those of `names` that no node of `graph` (or of its subgraphs) reads and that are no
    graph output: `names - names_used(graph)`, with the walk stopping once every name has
    a reader (a 100k-node graph is read only up to the readers it looks for). The walk
    starts at node `start` (where the readers most likely are: after the names' producers)
    and wraps around, so the answer does not depend on it."""
    pending = set(names) - {o.name for o in graph.output}
    if not pending:
        return pending
    # The nodes that read a pending name or have attributes (only then can they hold a
    # subgraph) are picked out in C: `pending` shrinks in place, so the map sees what is
    # still pending, and a Python step is taken only per such node.
    data, inputs, attributes = tee(_rotated(graph.node, start), 3)
    reads = map(not_, map(pending.isdisjoint, map(_INPUT, inputs)))
    for node in compress(data, map(or_, reads, map(bool, map(_ATTRIBUTES, attributes)))):
        pending.difference_update(node.input)
        if node.attribute:
            pending -= names_read(node)
        if not pending:
            break
    return pending


def remove_dead_producers(graph: onnx.GraphProto, freed: list[str], start: int = 0) -> None:
    """Drop the chains (Shape -> ConstantOfShape ...) that only fed the removed random nodes.

    Only what the rewrite made dead goes: nodes and initializers that were dead before stay.
    A subgraph's outputs and inputs stay, and so does anything read from an inner scope.
    """
    if not freed or not _any_unread(graph, freed, start):
        return
    keep_alive = {o.name for o in graph.output} | {i.name for i in graph.input}
    readers: dict[str, int] = {}
    node_reads = []
    for node in graph.node:
        r = names_read(node)
        node_reads.append(r)
        for name in r:
            readers[name] = readers.get(name, 0) + 1
    producer = {o: k for k, n in enumerate(graph.node) for o in n.output if o}
    initializers = {t.name for t in graph.initializer}
    dead_nodes: set[int] = set()
    dead_names: set[str] = set()
    pending = list(dict.fromkeys(freed))
    while pending:
        name = pending.pop()
        if readers.get(name, 0) > 0 or name in keep_alive or name in dead_names:
            continue
        k = producer.get(name)
        if k is None:
            if name in initializers:
                dead_names.add(name)
            continue
        if k in dead_nodes:
            continue
        outs = [o for o in graph.node[k].output if o]
        if any(readers.get(o, 0) > 0 or o in keep_alive for o in outs):
            continue
        dead_nodes.add(k)
        dead_names.update(outs)
        for r in node_reads[k]:
            readers[r] -= 1
            pending.append(r)
    if not dead_nodes and not dead_names:
        return
    keep = [n for k, n in enumerate(graph.node) if k not in dead_nodes]
    del graph.node[:]
    graph.node.extend(keep)
    for fld in (graph.initializer, graph.value_info):
        kept = [x for x in fld if x.name not in dead_names]
        if len(kept) != len(fld):
            del fld[:]
            fld.extend(kept)
