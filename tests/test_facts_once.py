"""Issue 10: each fact is computed once per model (shape inference, checker, trace), the
lazy readers answer exactly as the eager ones did, and `import onnxfix` stays light."""

from __future__ import annotations

import subprocess
import sys

import onnx
import pytest
from conftest import op_types, parse

import onnxfix
from onnxfix.errors import ModelError
from onnxfix.graph.datadep import trace
from onnxfix.graph.graph_edit import names_used, remove_dead_producers, unread
from onnxfix.graph.shapes import collect_facts
from onnxfix.options import RewriteOptions
from onnxfix.passes.validate import validate
from onnxfix.rewrite import plan_model

CHAIN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch, 4] x, int64[2] s) => (float[batch, 4] y, float[?, ?] z) {
  a = Relu(x)
  b = Add(a, a)
  r = RandomNormalLike(b)
  y = Mul(b, r)
  t = Reshape(x, s)
  u = RandomUniformLike(t)
  z = Add(t, u)
}
"""


SIMPLE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch, 4] x) => (float[batch, 4] y) {
  a = Relu(x)
  r = RandomNormalLike(a)
  y = Mul(a, r)
}
"""


def _counting(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_the_plan_runs_onnx_shape_inference_once(monkeypatch):
    calls = _counting(monkeypatch, onnx.shape_inference, "infer_shapes")
    model_plan = plan_model(parse(SIMPLE), RewriteOptions(mode="input-noise"))
    assert len(calls) == 1
    assert [(p.noise, p.declared) for p in model_plan.sites] == [("noise_r", ["batch", 4])]


def test_a_rewrite_runs_the_checker_once_on_an_output_that_passes(monkeypatch):
    model = parse(SIMPLE)
    calls = _counting(monkeypatch, onnx.checker, "check_model")
    new, _ = onnxfix.rewrite(model, check=False)
    # the API checks its input proto once (basic: its own copy of it, whose walk the passes
    # share), validate checks the output once (full)
    assert [c[0] == model and c[0] is not new for c in calls] == [True, False]
    assert op_types(new) == ["Relu", "Identity", "Mul"]


def _broken(model: onnx.ModelProto) -> onnx.ModelProto:
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    bad.graph.node[0].input[0] = "nowhere"  # reads a name nothing defines
    return bad


def test_validate_refuses_an_output_that_fails_where_the_input_passes():
    model = parse(CHAIN)
    with pytest.raises(ModelError, match=r"^internal error: the rewritten model fails the onnx "
                                         r"checker \(full check\): .*nowhere"):
        validate(model, _broken(model))


def test_validate_holds_the_output_only_to_the_level_the_input_passes():
    model = parse(CHAIN)
    broken = _broken(model)
    assert validate(broken, broken) is broken  # the input passes no check either


def test_the_sliced_trace_answers_as_the_full_one():
    model = parse(CHAIN)
    full = trace(model)
    wanted = {"b", "t", "z"}
    sliced = trace(model, wanted)
    for name in wanted:
        assert sliced.shape_origin(name) == full.shape_origin(name)
        assert sliced.value[name] == full.value[name]
    assert full.shape_origin("t") == "the values of 's' (the values of input 's')"
    assert "y" in full.value and "y" not in sliced.value  # nothing asked needs it


IF_MODEL = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x, bool c) => (float[2] y) {
      y = If(c) <then_branch = t () => (float[2] a) { a = Relu(x) },
                 else_branch = e () => (float[2] b) { b = Neg(x) }>
    }"""

def test_the_trace_walks_everything_when_a_subgraph_is_present():
    model = parse(IF_MODEL)
    assert set(trace(model, {"x"}).value) == set(trace(model).value)


def test_lazy_facts_read_like_the_eager_walk():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[batch, 4] x) => (float[batch, 4] y) {
      y = Relu(x)
    }""")
    seq = model.graph.value_info.add()
    seq.name = "x"  # a later, non-tensor declaration does not hide the tensor one
    seq.type.sequence_type.elem_type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    facts = collect_facts(model)
    assert facts["x"].shape == ["batch", 4] and facts["x"].elem_type == onnx.TensorProto.FLOAT
    assert facts.get("missing") is None and "missing" not in facts
    assert sorted(facts) == ["x", "y"] and len(facts) == 2


@pytest.mark.parametrize("searched", [0, 1, 64])
def test_searched_and_indexed_facts_answer_alike(monkeypatch, searched):
    """Lookups searched among the names, then indexed: the last declaration wins either way
    (a value_info over an initializer, a body's over the main graph's), in one order."""
    from onnxfix.graph import shapes

    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (bool c, float[batch, 4] x) => (float[batch, 4] y) {
      y = If(c) <then_branch = t () => (float[batch, 4] o) { o = Relu(x) },
                 else_branch = e () => (float[batch, 4] o2) { o2 = Neg(x) }>
    }""")
    model.graph.initializer.append(onnx.helper.make_tensor("w", onnx.TensorProto.FLOAT,
                                                           [3], [1, 2, 3]))
    for graph, shape in ((model.graph, [5]), (model.graph, [6]),
                         (model.graph.node[0].attribute[0].g, [7])):
        graph.value_info.append(onnx.helper.make_tensor_value_info(
            "w", onnx.TensorProto.FLOAT, shape))
    model.graph.value_info.append(onnx.helper.make_tensor_value_info(
        "o", onnx.TensorProto.FLOAT, [9]))
    monkeypatch.setattr(shapes, "SEARCHED_LOOKUPS", searched)
    facts = collect_facts(model)
    answers = [facts.get(n) for n in ("w", "o", "x", "missing", "o2", "y", "c")]
    assert answers[0].shape == [7] and answers[1].shape == ["batch", 4]
    assert answers[2].shape == ["batch", 4] and answers[3] is None and answers[4].shape == [
        "batch", 4]
    assert list(facts) == ["w", "c", "x", "y", "o", "o2"]


def test_names_used_skips_empty_names_and_sees_into_bodies():
    model = parse(IF_MODEL)
    node = model.graph.node.add()
    node.op_type, node.input[:] = "Clip", ["x", "", ""]
    assert names_used(model.graph) == {"c", "x", "y", "a", "b"}


def test_unread_answers_as_the_names_used():
    """The reader search stops early and skips nodes in C: it must still see every reader,
    in bodies too, and a name read twice."""
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x, bool c, float[2] w) => (float[2] y) {
      p = Relu(x)
      q = Neg(p)
      z = If(c) <then_branch = t () => (float[2] a) { a = Relu(q) },
                 else_branch = e () => (float[2] b) { b = Neg(x) }>
      r = Add(p, z)
      y = Mul(r, q)
      u = Relu(w)
    }""")
    used = names_used(model.graph)
    everything = {"x", "c", "w", "p", "q", "z", "r", "y", "u", "a", "b", "nowhere"}
    for names in ({"q"}, {"u"}, {"p", "u"}, {"z", "nowhere"}, {"y", "b"}, everything, set()):
        assert unread(model.graph, names) == names - used, names


def test_a_freed_name_still_read_leaves_the_graph_as_it_was():
    model = parse(CHAIN)
    before = model.SerializeToString()
    remove_dead_producers(model.graph, ["b", "x"])
    assert model.SerializeToString() == before


def test_dead_producers_of_an_unread_name_go():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y) {
      s = Shape(x)
      y = Relu(x)
    }""")
    remove_dead_producers(model.graph, ["s"])
    assert op_types(model) == ["Relu"]


def test_importing_onnxfix_and_its_cli_does_not_load_onnxruntime():
    probe = "import sys, onnxfix.cli; print('onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=120).stdout.strip()
    assert out == "False"
