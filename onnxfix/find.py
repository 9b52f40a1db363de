"""Locate every random-sampling node, wherever it lives in the model."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import onnx

from .ops import OP_TABLE, is_random_node

Container = onnx.GraphProto | onnx.FunctionProto


@dataclass
class Site:
    """One random node and the graph (or function body) that holds it."""

    node: onnx.NodeProto
    container: Container
    location: str  # "main", "main/<node>.<attr>", "function <domain>::<name>"

    @property
    def op_type(self) -> str:
        return self.node.op_type

    @property
    def output(self) -> str:
        return self.node.output[0]

    @property
    def in_main_graph(self) -> bool:
        return self.location == "main"

    def describe(self) -> str:
        name = f" '{self.node.name}'" if self.node.name else ""
        return f"{self.op_type}{name} -> '{self.output}' ({self.location})"


def iter_graphs(model: onnx.ModelProto) -> Iterator[tuple[Container, str]]:
    """Yield every graph and function body with its location, outermost first."""
    yield from _walk_graph(model.graph, "main")
    for f in model.functions:
        yield from _walk_graph(f, f"function {f.domain}::{f.name}")


def _walk_graph(container: Container, location: str) -> Iterator[tuple[Container, str]]:
    # Iterative on purpose: a hostile model may nest subgraphs deeper than Python recursion.
    stack = [(container, location)]
    while stack:
        graph, where = stack.pop()
        yield graph, where
        children = []
        for i, node in enumerate(graph.node):
            label = node.name or f"{node.op_type}#{i}"
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    children.append((attr.g, f"{where}/{label}.{attr.name}"))
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for k, g in enumerate(attr.graphs):
                        children.append((g, f"{where}/{label}.{attr.name}[{k}]"))
        stack.extend(reversed(children))


def find_sites(model: onnx.ModelProto) -> list[Site]:
    """Every random node in the model, in graph order, main graph first."""
    sites = []
    for container, where in iter_graphs(model):
        for node in container.node:
            if is_random_node(node):
                sites.append(Site(node, container, where))
    return sites


__all__ = ["OP_TABLE", "Site", "find_sites", "iter_graphs"]
