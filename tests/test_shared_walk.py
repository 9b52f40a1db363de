"""The input's walk (graph.find.GraphWalk) is taken once per rewrite or inspect and shared by
validation, the search for random nodes and the report's op counts; a shared walk is never
read after its model changed shape (nodes added, removed or replaced, subgraphs moved)."""

from __future__ import annotations

import importlib

import onnx
from conftest import parse
from onnx import helper

import onnxfix
from onnxfix.graph.find import iter_graphs, iter_scoped, share_walk, shared_walks

find = importlib.import_module("onnxfix.graph.find")

NESTED = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch, 4] x, bool c) => (float[batch, 4] y) {
  a = Relu(x)
  y = If(c) <then_branch = t () => (float[batch, 4] r) { r = RandomNormalLike(a) },
             else_branch = e () => (float[batch, 4] s) { s = Identity(a) }>
  z = Relu(a)
}
"""


def _where(model: onnx.ModelProto) -> list[str]:
    return [where for _, where in iter_graphs(model)]


def _fresh(model: onnx.ModelProto) -> list[tuple]:
    """The walk as taken without sharing: (location, node count, scope owners)."""
    return [(w, len(c.node), [s.owner.name or s.owner.op_type for s in scopes])
            for c, w, scopes in find._walk_model(model)]


def _shared(model: onnx.ModelProto) -> list[tuple]:
    return [(w, len(c.node), [s.owner.name or s.owner.op_type for s in scopes])
            for c, w, scopes in iter_scoped(model)]


def _if_node(name: str) -> onnx.NodeProto:
    body = helper.make_graph([helper.make_node("Identity", ["a"], [f"{name}_o"])], f"{name}_b",
                             [], [helper.make_tensor_value_info(f"{name}_o", 1, None)])
    return helper.make_node("If", ["c"], [name], name=name, then_branch=body, else_branch=body)


def test_a_shared_walk_is_reused_while_the_model_is_unchanged(monkeypatch):
    model = parse(NESTED)
    expected = _fresh(model)
    calls = []
    real = find._walk_model
    monkeypatch.setattr(find, "_walk_model", lambda m: calls.append(m) or real(m))
    with shared_walks():
        share_walk(model)
        first, second = _shared(model), _shared(model)
    assert len(calls) == 1 and first == second == expected
    _shared(model)  # outside the block: walked afresh
    assert len(calls) == 2


def test_a_shared_walk_is_not_used_after_a_node_is_added():
    model = parse(NESTED)
    with shared_walks():
        share_walk(model)
        model.graph.node.append(_if_node("late"))
        assert _shared(model) == _fresh(model)
        assert any("late" in w for w in _where(model))


def test_a_shared_walk_is_not_used_after_the_last_node_is_replaced():
    """Same node count, a subgraph more: the last node is not the one walked."""
    model = parse(NESTED)
    with shared_walks():
        share_walk(model)
        del model.graph.node[-1]
        model.graph.node.append(_if_node("swapped"))
        assert _shared(model) == _fresh(model)
        assert any("swapped" in w for w in _where(model))


def test_a_shared_walk_is_not_used_after_a_subgraph_owner_is_replaced():
    """Same node count, same last node, the If in the middle gone (its body was walked)."""
    model = parse(NESTED)
    with shared_walks():
        share_walk(model)
        model.graph.node[1].CopyFrom(helper.make_node("Relu", ["a"], ["y"]))
        del model.graph.node[2]
        model.graph.node.append(helper.make_node("Relu", ["a"], ["z"]))
        assert _shared(model) == _fresh(model) == [("main", 3, [])]
    with shared_walks():  # the owner's position moves: its node there is another
        model = parse(NESTED)
        share_walk(model)
        del model.graph.node[0]
        model.graph.node.append(helper.make_node("Relu", ["x"], ["a2"]))
        before = model.graph.node[1]
        assert _shared(model) == _fresh(model)
        assert before.op_type == "Relu"


def test_a_shared_walk_is_not_used_after_a_function_is_added():
    model = parse(NESTED)
    with shared_walks():
        share_walk(model)
        model.functions.add(name="f", domain="local")
        assert _where(model)[-1] == "function local::f"


def test_a_rewrite_walks_its_input_once(monkeypatch):
    """Validation, the search for random nodes and the report's op counts share one walk of
    the input (a step per node each: ~30 ms apiece at 100k nodes)."""
    model = parse(NESTED.replace("z = Relu(a)", "z = Relu(a)\n  q = RandomUniformLike(x)"))
    walked = []
    real = find._walk

    def counted(container, location):
        if location == "main":
            walked.append(container)  # held: ids stay unique
        return real(container, location)

    monkeypatch.setattr(find, "_walk", counted)
    out, report = onnxfix.rewrite(model, check=False)
    monkeypatch.undo()
    # the first walk is the validation's, of the API's own copy of the input; the others
    # are of other models (inferred copies, the output)
    assert len(walked[0].node) == 4
    assert sum(graph is walked[0] for graph in walked) == 1
    expected, _ = onnxfix.rewrite(model, check=False)
    assert out.SerializeToString() == expected.SerializeToString()
    assert report.ops_before == {"Identity": 1, "If": 1, "RandomNormalLike": 1,
                                 "RandomUniformLike": 1, "Relu": 2}


def test_the_main_op_census_is_counted_once_and_never_stale(monkeypatch):
    """The plan's step-1 test (local_check) and the report's op counts read one census of
    the input's main graph; a census taken before the graph changed is not read after."""
    from onnxfix.graph.find import main_op_census  # noqa: PLC0415
    from onnxfix.report import op_counts  # noqa: PLC0415
    model = parse(NESTED)
    counted = []
    real = find._DOMAIN_OP
    monkeypatch.setattr(find, "_DOMAIN_OP", lambda n: counted.append(1) or real(n))
    with shared_walks():
        share_walk(model)
        first = main_op_census(model)
        first[("", "Relu")] = 99  # the caller's own copy
        assert main_op_census(model) == {("", "Relu"): 2, ("", "If"): 1}
        assert len(counted) == 3  # once: three main-graph nodes
        assert op_counts(model) == {"If": 1, "RandomNormalLike": 1, "Identity": 1, "Relu": 2}
        assert len(counted) == 3
        model.graph.node.append(helper.make_node("Abs", ["a"], ["late"], domain="custom"))
        assert main_op_census(model) == {("", "Relu"): 2, ("", "If"): 1, ("custom", "Abs"): 1}
        assert op_counts(model)["Abs"] == 1
    assert main_op_census(model)[("custom", "Abs")] == 1  # outside the block: counted afresh


def test_a_custom_domain_still_fails_step_one():
    """reads_no_propagated_data reads the census's domains as well as its op types."""
    from onnxfix.passes.local_check import reads_no_propagated_data  # noqa: PLC0415
    flat = parse("""
<ir_version: 8, opset_import: ["" : 17, "custom" : 1]>
g (float[2] x) => (float[2] y) {
  a = Relu(x)
  y = RandomNormalLike(a)
}
""")
    assert reads_no_propagated_data(flat)
    flat.graph.node[0].domain = "custom"
    assert not reads_no_propagated_data(flat)
    flat.graph.node[0].domain = ""
    flat.graph.node[0].op_type = "Reshape"
    assert not reads_no_propagated_data(flat)
    assert not reads_no_propagated_data(parse(NESTED))
