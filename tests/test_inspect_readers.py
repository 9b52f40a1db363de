"""inspect's readers of a draw in a large graph are searched from the draw on, and no further
than the reads its serialized graph holds (inspection._reading): the same readers, in graph
order, as looking at every node - readers before the draw (an unsorted graph), a node
reading a draw twice, a subgraph reading it, a name's bytes elsewhere (an attribute so
named), two draws."""

from __future__ import annotations

import importlib

import onnx
import pytest
from onnx import helper

from onnxfix.graph.find import iter_scoped

inspection = importlib.import_module("onnxfix.inspection")


def _graph(n: int, *, before: bool, twice: bool, nested: bool, decoy: bool, two: bool):
    nodes = [helper.make_node("Relu", ["x"], ["a0"], name="n0")]
    for k in range(1, n):
        nodes.append(helper.make_node("Relu", [f"a{k - 1}"], [f"a{k}"], name=f"n{k}"))
    at = n // 2
    nodes.insert(at, helper.make_node("RandomNormalLike", ["a3"], ["r"], name="draw"))
    nodes.insert(at + 1, helper.make_node("Add", ["r", "r" if twice else "a4"], ["s"]))
    if two:
        nodes.insert(7, helper.make_node("RandomUniformLike", ["a3"], ["u"], name="draw2"))
        nodes.append(helper.make_node("Mul", ["u", "a5"], ["w"], name="late"))
    if before:
        nodes.insert(2, helper.make_node("Neg", ["r"], ["early"], name="early"))
    if nested:
        body = helper.make_graph([helper.make_node("Identity", ["r"], ["b"], name="inner")],
                                 "body", [], [helper.make_tensor_value_info("b", 1, None)])
        nodes.append(helper.make_node("If", ["c"], ["i"], name="if", then_branch=body,
                                      else_branch=body))
    if decoy:  # an attribute whose name is the draw's: the same bytes, no read
        nodes.append(helper.make_node("Relu", ["a1"], ["d"], name="decoy", r=1.0))
    return helper.make_graph(nodes, "g", [], [helper.make_tensor_value_info("s", 1, None)])


@pytest.mark.parametrize("before", [False, True])
@pytest.mark.parametrize("twice", [False, True])
@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("decoy", [False, True])
@pytest.mark.parametrize("two", [False, True])
def test_readers_searched_from_the_draw_are_every_reader_in_order(monkeypatch, before, twice,
                                                                  nested, decoy, two):
    monkeypatch.setattr(inspection, "SEARCH_FROM_DRAWS", 16)
    monkeypatch.setattr(inspection, "_CHUNK", 8)
    model = onnx.ModelProto(graph=_graph(200, before=before, twice=twice, nested=nested,
                                         decoy=decoy, two=two))
    wanted = {"r", "u"} if two else {"r"}
    g = model.graph
    start = min(k for k, node in enumerate(g.node) if node.output[0] in wanted)
    everything = [k for k, node in enumerate(g.node) if not wanted.isdisjoint(node.input)]
    assert inspection._reading(g, wanted, start) == everything
    assert inspection._reading(g, wanted, 0) == everything
    # the whole of _consumers against the plain per-node answer, nested readers too
    expected: dict[str, list[str]] = {}
    for container, _, _ in iter_scoped(model):
        for node in container.node:
            for name in set(node.input) & wanted:
                label = f"{node.op_type} '{node.name}'" if node.name else node.op_type
                expected.setdefault(name, []).append(label)
    expected.setdefault("s", [])
    got = inspection._consumers(model, wanted | {"s"}, [])
    assert got.pop("s") == ["graph output"] and expected.pop("s") == []
    assert got == expected


def test_the_search_stops_once_every_read_is_found(monkeypatch):
    """The reads the bytes hold are found right after the draw: the nodes after them, and
    those before the draw, are not looked at."""
    monkeypatch.setattr(inspection, "SEARCH_FROM_DRAWS", 16)
    monkeypatch.setattr(inspection, "_CHUNK", 8)
    g = _graph(400, before=False, twice=False, nested=False, decoy=False, two=False)
    seen = []
    real = inspection._readers_among

    def spy(nodes, wanted, first=0):
        seen.append((first, len(nodes)))
        return real(nodes, wanted, first)

    monkeypatch.setattr(inspection, "_readers_among", spy)
    start = next(k for k, node in enumerate(g.node) if node.name == "draw")
    assert inspection._reading(g, {"r"}, start) == [start + 1]
    assert seen == [(start, 8)]


def test_input_field_is_protobufs_encoding():
    for name in ["r", "x" * 127, "y" * 128, "z" * 20000, "é\n"]:
        node = onnx.NodeProto(input=[name])
        assert node.SerializeToString() == inspection._input_field(name)


def test_overlapping_matches_are_all_counted():
    assert inspection._occurrences(b"aaaa", b"aa") == 3
    assert inspection._occurrences(b"\x0a\x01\x0a\x01\x0a", b"\x0a\x01\x0a") == 2
    assert inspection._occurrences(b"xyz", b"q") == 0


def test_many_draws_are_looked_for_in_every_node(monkeypatch):
    """A search of the graph's bytes per draw would cost more than one look at every node."""
    monkeypatch.setattr(inspection, "SEARCH_FROM_DRAWS", 16)
    monkeypatch.setattr(inspection, "_occurrences", None)  # not called
    g = _graph(200, before=True, twice=False, nested=False, decoy=False, two=False)
    wanted = {"r"} | {f"none{k}" for k in range(inspection._FEW)}
    assert inspection._reading(g, wanted, 100) == [
        k for k, node in enumerate(g.node) if "r" in node.input]
