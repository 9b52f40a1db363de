"""Locate every random-sampling node, wherever it lives in the model."""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from itertools import compress, count
from operator import attrgetter

import numpy as np
import onnx
from onnx import numpy_helper

from onnxfix.errors import ModelError, UsageError, param
from onnxfix.ops import RANDOM_OP_TYPES, is_random_op, spec_for

Container = onnx.GraphProto | onnx.FunctionProto

MAX_NESTING = 256  # deeper nesting is refused as hostile rather than walked
_ATTRIBUTES = attrgetter("attribute")
_OP_TYPE = attrgetter("op_type")
_DOMAIN_OP = attrgetter("domain", "op_type")
_RANDOM = frozenset(RANDOM_OP_TYPES)


@dataclass
class Scope:
    """One level of nesting: `body` is attribute `attr` of `owner`, a node of `parent`."""

    owner: onnx.NodeProto
    attr: str
    body: onnx.GraphProto
    parent: Container
    owner_index: int = -1  # position of `owner` in `parent.node` when found (-1: unknown)


@dataclass
class Site:
    """One random node, the graph (or function body) that holds it, and the way down to it."""

    node: onnx.NodeProto
    container: Container
    location: str  # "main", "main/<node>.<attr>", "function <domain>::<name>"
    scopes: list[Scope] = field(default_factory=list)
    index: int = -1  # position of `node` in `container.node` when found (-1: unknown)

    @property
    def op_type(self) -> str:
        return self.node.op_type

    @property
    def output(self) -> str:
        return self.node.output[0]

    @property
    def in_function(self) -> bool:
        return self.location.startswith("function ")

    def describe(self) -> str:
        name = f" '{self.node.name}'" if self.node.name else ""
        return f"{self.op_type}{name} -> '{self.output}' ({self.location})"


def iter_graphs(model: onnx.ModelProto) -> Iterator[tuple[Container, str]]:
    """Yield every graph and function body with its location, outermost first."""
    for container, where, _ in iter_scoped(model):
        yield container, where


def iter_scoped(model: onnx.ModelProto) -> Iterator[tuple[Container, str, list[Scope]]]:
    walk = _shared_walk(model)
    if walk is not None:
        yield from walk.entries
        return
    yield from _walk_model(model)


def _walk_model(model: onnx.ModelProto) -> Iterator[tuple[Container, str, list[Scope]]]:
    yield from _walk(model.graph, "main")
    for f in model.functions:
        yield from _walk(f, f"function {f.domain}::{f.name}")


class GraphWalk:
    """One model's walk (every container, its location and scopes), taken once.

    A rewrite reads its input's walk in several passes (validation, finding the random
    nodes, the report's op counts: each a step per node of a 100k-node graph); the input is
    not changed meanwhile, so one walk serves them all (`shared_walks`). Whether the model
    still has the walk's shape is checked at each use, in a step per container, not per
    node: the same containers, each with as many nodes, ending with the same node, and every
    subgraph's owner still at its place. A model changed in a way that keeps all of these
    (a node rewritten in place to hold a subgraph) is not caught: only a model no pass
    changes is shared (the input, see `share_walk`)."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.entries = list(_walk_model(model))
        self._stamp = self._take_stamp()
        self.census: dict[tuple[str, str], int] | None = None  # main_op_census, on first use

    def _take_stamp(self) -> tuple:
        m = self.model
        return (m.graph, tuple(m.functions),
                tuple((len(c.node), c.node[-1] if c.node else None) for c, _, _ in self.entries))

    def holds(self) -> bool:
        """The model still has the shape it was walked in (see the class doc)."""
        graph, functions, sizes = self._stamp
        m = self.model
        if m.graph is not graph or len(m.functions) != len(functions) or any(
                f is not g for f, g in zip(m.functions, functions, strict=True)):
            return False
        for (c, _, scopes), (n, last) in zip(self.entries, sizes, strict=True):
            if len(c.node) != n or (n and c.node[-1] is not last):
                return False
            if scopes:
                owner = scopes[-1]
                nodes = owner.parent.node
                if not owner.owner_index < len(nodes) or (
                        nodes[owner.owner_index] is not owner.owner):
                    return False
        return True


_SHARED: ContextVar[list[GraphWalk] | None] = ContextVar("onnxfix_shared_walks", default=None)


@contextmanager
def shared_walks() -> Iterator[None]:
    """Within this block, the walk `share_walk` took of a model serves every later walk of
    that same model while `GraphWalk.holds` (one rewrite or inspect: the API opens it)."""
    token = _SHARED.set([])
    try:
        yield
    finally:
        _SHARED.reset(token)


def stop_sharing() -> None:
    """Walk afresh from here to the end of the `shared_walks` block: after the passes that
    read the input as it is (the parity check takes copies of its own and edits them)."""
    shared = _SHARED.get()
    if shared is not None:
        shared.clear()


def share_walk(model: onnx.ModelProto) -> None:
    """Walk `model` once for the rest of the `shared_walks` block (no-op outside one). For
    a model the passes only read: an input, as it is validated."""
    shared = _SHARED.get()
    if shared is not None and _shared_walk(model) is None:
        shared.append(GraphWalk(model))


def _shared_walk(model: onnx.ModelProto) -> GraphWalk | None:
    shared = _SHARED.get()
    if not shared:
        return None
    for k, walk in enumerate(shared):
        if walk.model is model:
            if walk.holds():
                return walk
            del shared[k]  # changed since: walked afresh from now on
            return None
    return None


def main_op_census(model: onnx.ModelProto) -> dict[tuple[str, str], int]:
    """(domain, op type) -> node count over the main graph's nodes (not its subgraphs).

    The plan (passes.local_check) and the report's op counts both read a rewrite's input so;
    a shared walk's model is counted once for both (one step per node of a 100k-node graph
    each time, issue 10). The caller gets its own dict."""
    walk = _shared_walk(model)
    if walk is None:
        return dict(Counter(map(_DOMAIN_OP, model.graph.node)))
    if walk.census is None:
        walk.census = dict(Counter(map(_DOMAIN_OP, model.graph.node)))
    return dict(walk.census)


def walk_graph(container: Container) -> Iterator[Container]:
    """`container` and every subgraph inside it, outermost first."""
    for g, _, _ in _walk(container, ""):
        yield g


def _walk(container: Container, location: str) -> Iterator[tuple[Container, str, list[Scope]]]:
    # Iterative on purpose: a hostile model may nest subgraphs deeper than Python recursion.
    stack: list[tuple[Container, str, list[Scope]]] = [(container, location, [])]
    while stack:
        graph, where, scopes = stack.pop()
        yield graph, where, scopes
        children = []
        nodes = graph.node
        # most nodes have no attribute, so no subgraph: the ones with attributes are picked
        # out without a Python step per node (a 100k-node graph is walked many times)
        for i in compress(count(), map(_ATTRIBUTES, nodes)):
            node = nodes[i]
            label = node.name or f"{node.op_type}#{i}"
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    bodies = [(attr.g, f"{where}/{label}.{attr.name}")]
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    bodies = [(g, f"{where}/{label}.{attr.name}[{k}]")
                              for k, g in enumerate(attr.graphs)]
                else:
                    continue
                for body, body_where in bodies:
                    inner = [*scopes, Scope(node, attr.name, body, graph, i)]
                    if len(inner) > MAX_NESTING:
                        raise ModelError(f"subgraphs nested deeper than {MAX_NESTING} levels")
                    children.append((body, body_where, inner))
        stack.extend(reversed(children))


def constant_values(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Tensors whose value is fixed in the model: initializers and Constant(value=...) outputs."""
    values: dict[str, onnx.TensorProto] = {}
    for container, _ in iter_graphs(model):
        if isinstance(container, onnx.GraphProto):
            for t in container.initializer:
                values[t.name] = t
        for n in container.node:
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and n.output:
                for a in n.attribute:
                    if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                        values[n.output[0]] = a.t
    return values


def constant_lookup(model: onnx.ModelProto):
    """A function name -> numpy value (or None) over the model's fixed tensors.

    The tensors are indexed on the first call (most lookups are never made: a graph without
    Dropout or Loop asks nothing), so the model must not change between the first call and
    the last."""
    cache: list = []

    def lookup(name: str):
        if not cache:
            # Graph inputs shadow initializers of the same name (overridable defaults).
            cache.extend([constant_values(model), {i.name for i in model.graph.input}])
        values, overridable = cache
        t = values.get(name)
        if t is None or name in overridable:
            return None
        try:
            return numpy_helper.to_array(t)
        except Exception:  # noqa: BLE001 - external or malformed data: not a known constant
            return None

    return lookup


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def find_sites(model: onnx.ModelProto) -> list[Site]:
    """Every random node in the model, in graph order, main graph first."""
    opset = default_opset(model)
    lookup = constant_lookup(model)
    sites = []
    for container, where, scopes in iter_scoped(model):
        nodes = container.node
        # the nodes of a random op type are picked out in C (no Python step per node)
        for k in compress(count(), map(_RANDOM.__contains__, map(_OP_TYPE, nodes))):
            node = nodes[k]
            if is_random_op(node) and spec_for(node).applies(node, opset, lookup):
                sites.append(Site(node, container, where, scopes, k))
    return sites


def as_int(value) -> int | None:
    """A scalar constant as an int, or None."""
    if value is None:
        return None
    arr = np.asarray(value).reshape(-1)
    return int(arr[0]) if arr.size == 1 else None


class Selector:
    """--only / --exclude globs over node names and output names."""

    def __init__(self, only: list[str], exclude: list[str]):
        self.only, self.exclude = only, exclude

    @staticmethod
    def _hit(site: Site, glob: str) -> bool:
        return fnmatch.fnmatchcase(site.node.name, glob) or fnmatch.fnmatchcase(site.output, glob)

    def __call__(self, site: Site) -> bool:
        return ((not self.only or any(self._hit(site, g) for g in self.only))
                and not any(self._hit(site, g) for g in self.exclude))

    def check_matches(self, sites: list[Site]) -> None:
        """A glob that matches no random node is a typo that would silently pass CI."""
        if not sites:
            return  # nothing random (e.g. already rewritten): an unchanged copy, as always
        globs = [("only", g) for g in self.only] + [("exclude", g) for g in self.exclude]
        missed = [param(name, glob) for name, glob in globs
                  if not any(self._hit(s, glob) for s in sites)]
        if not missed:
            return
        shown = [f"{s.node.name!r} -> {s.output!r}" if s.node.name else repr(s.output)
                 for s in sites[:20]]
        more = f" and {len(sites) - 20} more" if len(sites) > 20 else ""
        raise UsageError(f"{', '.join(missed)} matches no random node (globs match node or "
                         f"output names); the random nodes are: {', '.join(shown)}{more}")


def make_selector(only: list[str] | None, exclude: list[str] | None) -> Selector | None:
    """A predicate over sites from --only / --exclude globs (node name or output name)."""
    only = [g for g in (only or []) if g]
    exclude = [g for g in (exclude or []) if g]
    if not only and not exclude:
        return None
    return Selector(only, exclude)
