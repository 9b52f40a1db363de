"""Issue 10, the cost per random node: the shortcuts the rewrite and the check take per draw
give exactly what the long way gave (same bytes, same facts, same verdicts, same refusals)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import parse
from onnx import TensorProto, helper, numpy_helper

import onnxfix
from onnxfix.check import draw_noise
from onnxfix.check.compare import CheckSkipped
from onnxfix.check.tolerance import _least_precise, narrowest_float_on_paths
from onnxfix.graph.builder import NodeBuilder
from onnxfix.graph.find import iter_graphs
from onnxfix.graph.graph_edit import names_read
from onnxfix.graph.naming import NameAllocator, sanitize
from onnxfix.graph.shapes import _facts_from_type, infer_facts
from onnxfix.passes import output_shapes

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _empty_names() -> NameAllocator:
    return NameAllocator(helper.make_model(helper.make_graph([], "g", [], [])))


@pytest.mark.parametrize("value", [
    np.array(0.01, np.float32), np.array(1.5, np.float16), np.array(2.0, np.float64),
    np.array([3, 4], np.int64), np.array(True), np.arange(40, dtype=np.float32)])
def test_constant_nodes_are_the_bytes_make_node_writes(value):
    b = NodeBuilder(_empty_names(), 17, "p")
    first, second = b.constant(value, "scale"), b.constant(value, "scale")
    assert (first, second) == ("p_scale", "p_scale_1")
    for node, out in zip(b.nodes, (first, second), strict=True):
        want = helper.make_node("Constant", [], [out], name=f"{out}_node",
                                value=numpy_helper.from_array(value, name=out))
        assert node.SerializeToString() == want.SerializeToString()


def test_ops_without_attributes_are_the_bytes_make_node_writes():
    b = NodeBuilder(_empty_names(), 17, "p")
    b.op("Mul", ["a", "b"], "mul")
    b.op("Cast", ["a"], "cast", to=TensorProto.FLOAT16)
    assert [n.SerializeToString() for n in b.nodes] == [
        helper.make_node("Mul", ["a", "b"], ["p_mul"], name="p_mul_1").SerializeToString(),
        helper.make_node("Cast", ["a"], ["p_cast"], name="p_cast_1",
                         to=TensorProto.FLOAT16).SerializeToString()]


@pytest.mark.parametrize(("text", "clean"), [
    ("a-b c", "a_b_c"), ("a__b", "a_b"), ("a_-_b", "a_b"), ("__x__", "x"), ("1a", "t1a"),
    ("", "t"), ("--", "t"), ("onnxfix_eps12_scale", "onnxfix_eps12_scale")])
def test_sanitize(text, clean):
    assert sanitize(text) == clean


@pytest.mark.parametrize("text", ["noise_y", "_a__b_", "é_x", "xé", "a\u00b7b", "Ⅻ", "a1",
                                  "a\u0660", "ﬁ", "onnxfix_noise_eps3_cast", "__"])
def test_sanitize_skips_the_regex_only_where_it_would_replace_nothing(text):
    """The ASCII-identifier fast path gives what the regex gives, also for the Unicode
    identifiers it leaves to the regex (str.isidentifier accepts them)."""
    slow = re.sub(r"_+", "_", re.sub(r"[^0-9A-Za-z_]+", "_", text).strip("_")) or "t"
    assert sanitize(text) == ("t" + slow if slow[0].isdigit() else slow)


def test_each_lookup_of_a_declared_type_gets_its_own_shape():
    tp = helper.make_tensor_type_proto(TensorProto.FLOAT, ["batch", 16, None])
    first = _facts_from_type(tp)
    first.shape.append(99)
    again = _facts_from_type(tp)
    assert (again.elem_type, again.shape) == (TensorProto.FLOAT, ["batch", 16, None])
    assert _facts_from_type(onnx.TypeProto()) is None


def _narrowest_by_sweeps(model, draws, facts):
    """The definition: sweep every node until nothing changes."""
    def own(name):
        f = facts.get(name)
        return f.elem_type if f is not None and f.elem_type in (1, 10, 11, 16) else None

    narrow = {d: own(d) for d in draws}
    nodes = [(n, names_read(n)) for g, _ in iter_graphs(model) if isinstance(g, onnx.GraphProto)
             for n in g.node]
    changed = True
    while changed:
        changed = False
        for node, reads in nodes:
            hit = [narrow[r] for r in reads if r in narrow]
            if hit:
                for out in (o for o in node.output if o):
                    best = _least_precise([*hit, own(out), narrow.get(out)])
                    if out not in narrow or best != narrow[out]:
                        narrow[out] = best
                        changed = True
    return narrow


@pytest.mark.parametrize("name", ["fp16_draw_to_fp32_ts.onnx", "ref3_dynamic_dynamo.onnx",
                                  "dropout_in_loop.onnx", "if_in_scan.onnx",
                                  "function_randn_like.onnx"])
def test_the_narrowest_float_on_the_paths_is_the_sweeps_fixed_point(name):
    found = sorted(FIXTURES.rglob(name))
    if not found:
        pytest.skip(f"no fixture {name}")
    model = onnx.load(str(found[0]))
    facts = infer_facts(model)
    draws = [n.output[0] for g, _ in iter_graphs(model) for n in g.node
             if n.op_type.startswith("Random") or n.op_type in ("Dropout", "Bernoulli")]
    assert draws
    assert narrowest_float_on_paths(model, draws, facts) == _narrowest_by_sweeps(
        model, draws, facts)


def test_a_float16_draw_narrows_what_it_reaches_and_nothing_else():
    model = parse("""
<ir_version: 8, opset_import: ["" : 17]>
g (float16[2] x, float[2] w) => (float[2] y, float[2] z) {
  e = RandomNormalLike (x)
  c = Cast <to = 1> (e)
  y = Add(c, w)
  z = Mul(w, w)
}
""")
    facts = infer_facts(model)
    got = narrowest_float_on_paths(model, ["e"], facts)
    assert got == _narrowest_by_sweeps(model, ["e"], facts)
    assert got["y"] == TensorProto.FLOAT16 and "z" not in got


def test_the_replacements_alone_model_is_built_once_for_the_two_passes_that_ask(monkeypatch):
    built = []
    real = output_shapes._alone
    monkeypatch.setattr(output_shapes, "_alone",
                        lambda *a: built.append(1) or real(*a))
    model = parse("""
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch, 4] x) => (float[batch, 4] y) {
  e = RandomNormalLike <scale = 0.5> (x)
  y = Add(x, e)
}
""")
    new, report = onnxfix.rewrite(model, check=False)
    assert len(built) == 1  # the validate pass built it, the re-declaration reused it
    assert [n.op_type for n in new.graph.node] == ["Constant", "Mul", "Add"]
    assert report.redeclared_outputs == []
    # one per emit: the next rewrite builds its own (nothing is carried over or held
    # between rewrites)
    onnxfix.rewrite(model, check=False)
    assert len(built) == 2


def test_a_noise_too_large_to_feed_is_refused_even_when_nothing_is_padded(monkeypatch):
    class Meta:
        shape = [2, 8]

    monkeypatch.setattr(draw_noise, "input_meta", lambda sess, name: Meta)
    noise = np.zeros((2, 8), np.float32)
    assert draw_noise._fit(noise, None, "noise_e") is noise
    monkeypatch.setattr(draw_noise, "CHECK_INPUT_BYTES", noise.nbytes - 1)
    with pytest.raises(CheckSkipped, match="noise input 'noise_e' declares"):
        draw_noise._fit(noise, None, "noise_e")


def _three_draws():
    return parse("""
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch, 4] x) => (float[batch, 4] y) {
  e0 = RandomNormalLike <scale = 0.5> (x)
  h0 = Add(x, e0)
  e1 = RandomUniformLike <low = -1.0, high = 1.0> (h0)
  h1 = Mul(h0, e1)
  e2 = RandomNormalLike <mean = 2.0> (h1)
  y = Add(h1, e2)
}
""")


def test_the_forked_check_prints_the_lines_the_check_makes_in_process():
    from onnxfix.check.check_guard import make_limits
    from onnxfix.check.check_run import CheckOptions, run_check

    model = _three_draws()
    new, report = onnxfix.rewrite(model, check=False)
    seen = {}
    for where, limits in (("here", None), ("forked", make_limits(None, 60.0))):
        lines = []
        parity = run_check(model, new, report.nodes, "input-noise",
                           CheckOptions(limits=limits), reporter=lines.append)
        seen[where] = (parity.status, lines)
    assert seen["here"] == seen["forked"]
    status, lines = seen["forked"]
    assert status == "passed"
    # per size (batch 2, then 3): the output y, then the draws e0, e1, e2, in that order
    compared = [line.split(" | ")[:3] for line in lines if line.startswith("PASSED")]
    assert compared == [["PASSED", f"batch={n}", f"Output: '{name}' [{n}, 4]"]
                        for n in (2, 3) for name in ("y", "e0", "e1", "e2")]


def test_a_reporter_hands_a_batch_to_a_sink_that_takes_batches_and_line_by_line_otherwise():
    from onnxfix.reporter import Reporter

    class Batches:
        def __init__(self):
            self.got = []

        def __call__(self, line):
            self.got.append(("line", line))

        def lines(self, lines):
            self.got.append(("lines", list(lines)))

    sink, plain = Batches(), []
    Reporter(sink).lines(["a", "b"])
    Reporter(plain.append).lines(["a", "b"])
    Reporter().lines(["a"])  # no sink: dropped
    assert sink.got == [("lines", ["a", "b"])]
    assert plain == ["a", "b"]


def test_the_cli_printer_writes_a_batch_of_lines_as_it_writes_them_one_by_one(capsys):
    from onnxfix.cli import _Printer

    lines = ["PASSED | y | batch=2", "", "  new inputs: a, b"]
    one_by_one = _Printer(quiet=False, verbose=False)
    for line in lines:
        one_by_one(line)
    expected = capsys.readouterr().out
    _Printer(quiet=False, verbose=False).lines(lines)
    assert capsys.readouterr().out == expected == "PASSED | y | batch=2\n\n  new inputs: a, b\n"
    _Printer(quiet=False, verbose=False).lines([])
    _Printer(quiet=True, verbose=False).lines(lines)
    assert capsys.readouterr().out == ""
