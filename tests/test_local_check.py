"""Issue 10: the output's full onnx check follows from the input's plus the replacement nodes
alone (passes.local_check), and where that is not proven the whole check runs as before."""

from __future__ import annotations

import importlib

import numpy as np
import onnx
import pytest
from conftest import parse, run

import onnxfix
from onnxfix.errors import ModelError
from onnxfix.options import RewriteOptions
from onnxfix.passes.local_check import local_proof, reads_no_propagated_data
from onnxfix.rewrite import apply_emitted, plan_model

rewrite_module = importlib.import_module("onnxfix.rewrite")  # onnxfix.rewrite: the API function

FLAT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch, 4] x) => (float[batch, 4] y) {
  a = Relu(x)
  r = RandomNormalLike<scale = 2.0>(a)
  y = Add(a, r)
}
"""
# the same, with a Reshape (its inference reads propagated data): not proven locally
RESHAPED = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch, 4] x) => (float[batch, 4] y) {
  s = Shape(x)
  a = Reshape(x, s)
  r = RandomNormalLike<scale = 2.0>(a)
  y = Add(a, r)
}
"""
# passes the basic check, fails strict inference ([2] + [3] does not broadcast)
STRICT_FAILS = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x, float[3] w) => (float[2] y) {
  r = RandomNormalLike(x)
  b = Add(x, w)
  y = Add(b, r)
}
"""


def _checker_calls(monkeypatch, nodes: list | None = None) -> list[bool]:
    """full_check of every onnx.checker.check_model call made on a proto (and, in `nodes`,
    the op types of the model it checked)."""
    calls = []
    real = onnx.checker.check_model

    def counted(model, full_check=False, *args, **kwargs):
        if isinstance(model, onnx.ModelProto):
            calls.append(bool(full_check))
            if nodes is not None:
                nodes.append([n.op_type for n in model.graph.node])
        return real(model, full_check, *args, **kwargs)

    monkeypatch.setattr(onnx.checker, "check_model", counted)
    return calls


def test_a_flat_graph_is_checked_at_the_basic_level_and_passes_the_full_check(monkeypatch):
    model = parse(FLAT)  # parse checks it in full
    checked = []
    calls = _checker_calls(monkeypatch, checked)
    new, report = onnxfix.rewrite(model, check=False)
    # the API checks its input (basic), then validate the replacement nodes alone (basic):
    # the output is not checked whole (local_check, steps 6-9)
    assert calls == [False, False]
    assert checked == [["Relu", "RandomNormalLike", "Add"], ["Constant", "Mul"]]
    onnx.checker.check_model(new, full_check=True)
    y = run(new, {"x": np.ones((2, 4), np.float32),
                  "noise_r": np.full((2, 4), 0.5, np.float32)})["y"]
    np.testing.assert_array_equal(y, np.full((2, 4), 2.0, np.float32))  # 1 + 2 * 0.5


@pytest.mark.parametrize("text, mode", [(RESHAPED, "input-noise"), (FLAT, "constant")])
def test_the_whole_check_runs_where_the_argument_does_not_hold(monkeypatch, text, mode):
    """Reshape reads propagated data; constant mode freezes the draw into an initializer."""
    model = parse(text)
    calls = _checker_calls(monkeypatch)
    onnxfix.rewrite(model, mode, check=False, dims={"batch": 2})
    assert calls == [False, True]


def test_which_graphs_read_no_propagated_data():
    assert reads_no_propagated_data(parse(FLAT))
    assert not reads_no_propagated_data(parse(RESHAPED))
    custom = parse(FLAT)
    custom.graph.node[0].domain = "com.example"
    assert not reads_no_propagated_data(custom)


def test_an_input_that_fails_strict_inference_is_held_to_the_basic_check(monkeypatch):
    model = onnx.parser.parse_model(STRICT_FAILS)
    onnx.checker.check_model(model)
    with pytest.raises(onnx.shape_inference.InferenceError):
        onnx.checker.check_model(model, full_check=True)
    model_plan = plan_model(model, RewriteOptions())
    assert model_plan.input_full is False
    new, _ = onnxfix.rewrite(model, check=False)  # the output is held to basic only
    onnx.checker.check_model(new)


def _spoiled_emit(monkeypatch, spoil):
    real = rewrite_module.emit

    def spoiled(*args, **kwargs):
        emitted = real(*args, **kwargs)
        for e in emitted.sites:
            spoil(e)
        return emitted

    monkeypatch.setattr(rewrite_module, "emit", spoiled)


def _bogus_attribute(e) -> None:
    mul = next(n for n in e.nodes if n.op_type == "Mul")
    mul.attribute.append(onnx.helper.make_attribute("bogus", 1))


def _double_scale(e) -> None:
    const = next(n for n in e.nodes if n.op_type == "Constant")
    const.attribute[0].t.CopyFrom(onnx.numpy_helper.from_array(
        np.array(2.0, np.float64), const.attribute[0].t.name))


def _name_taken(e) -> None:
    """The scale constant renamed to the graph input's name: not fresh (SSA broken)."""
    const = next(n for n in e.nodes if n.op_type == "Constant")
    old = const.output[0]
    const.output[0] = "x"
    for n in e.nodes:
        n.input[:] = ["x" if i == old else i for i in n.input]


@pytest.mark.parametrize("spoil, text", [
    (_bogus_attribute, "Unrecognized attribute: bogus for operator Mul"),
    # passes the basic check, fails strict inference: not proven alone, so checked whole
    (_double_scale, "B has inconsistent type tensor(double)"),
    # not fresh: the patch does not stand for the output, which is checked whole
    (_name_taken, "'x' has been used as output names multiple times"),
])
def test_an_invalid_replacement_is_refused_in_the_same_words(monkeypatch, spoil, text):
    """The words the whole check gives (the local argument switched off) are the refusal."""
    model = parse(FLAT)
    _spoiled_emit(monkeypatch, spoil)
    refusals = []
    for switched_off in (False, True):
        if switched_off:
            monkeypatch.setattr(rewrite_module, "local_proof", lambda *a: (False, None))
        with pytest.raises(ModelError) as info:
            onnxfix.rewrite(model, check=False)
        refusals.append(str(info.value))
    assert refusals[0] == refusals[1]
    assert refusals[0].startswith("internal error: the rewritten model fails the onnx "
                                  "checker (full check): ")
    assert text in refusals[0]


def test_a_new_name_declared_in_value_info_is_not_proven(monkeypatch):
    """A value_info entry naming what a replacement node computes would be checked against
    it in the output: the argument does not cover it."""
    model = parse(FLAT)
    model_plan = plan_model(model, RewriteOptions())
    out, emitted = apply_emitted(model, model_plan, "input-noise")
    assert local_proof(model_plan, emitted, out, model)[0]  # the full check follows
    scale = next(o for e in emitted.sites for n in e.nodes if n.op_type == "Constant"
                 for o in n.output)
    out.graph.value_info.append(onnx.helper.make_tensor_value_info(
        scale, onnx.TensorProto.FLOAT, [7]))
    assert not local_proof(model_plan, emitted, out, model)[0]


def _proof(model, out_edit=None):
    model_plan = plan_model(model, RewriteOptions())
    out, emitted = apply_emitted(model, model_plan, "input-noise")
    if out_edit is not None:
        out_edit(out)
    return local_proof(model_plan, emitted, out, model, input_checked=True)


def _draw_producer_last(out) -> None:
    nodes = list(out.graph.node)
    last = next(n for n in nodes if "r" in n.output)
    del out.graph.node[:]
    out.graph.node.extend([n for n in nodes if n is not last] + [last])


def _node_dropped(out) -> None:
    del out.graph.node[0]


def _input_added(out) -> None:
    out.graph.input.append(onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [1]))


def _metadata_doubled(out) -> None:
    out.metadata_props.extend([out.metadata_props[0]])


@pytest.mark.parametrize("edit, whole_check_error", [
    (_draw_producer_last, "Nodes in a graph must be topologically sorted"),
    (_node_dropped, "Nodes in a graph must be topologically sorted"),
    (_input_added, None),
])
def test_the_patch_stands_only_for_an_output_that_is_the_input_plus_the_patch(edit,
                                                                            whole_check_error):
    model = parse(FLAT)
    assert _proof(model)[1] is not None
    full_follows, patch = _proof(model, edit)
    assert full_follows and patch is None
    out = _edited_output(model, edit)
    if whole_check_error is None:
        onnx.checker.check_model(out)  # a change the argument does not cover: checked whole
    else:
        with pytest.raises(onnx.checker.ValidationError, match=whole_check_error):
            onnx.checker.check_model(out)


def _edited_output(model, edit):
    model_plan = plan_model(model, RewriteOptions())
    out, _ = apply_emitted(model, model_plan, "input-noise")
    edit(out)
    return out


def test_the_patch_carries_the_metadata_so_a_duplicate_key_is_refused(monkeypatch):
    model = parse(FLAT)
    full_follows, patch = _proof(model, _metadata_doubled)
    assert full_follows
    with pytest.raises(onnx.checker.ValidationError, match="duplicate keys in metadata_props"):
        onnx.checker.check_model(patch)


def test_an_input_not_known_to_pass_its_basic_check_gets_the_whole_output_checked(monkeypatch):
    """rewrite_model takes any proto, unchecked: the output's basic check runs whole."""
    model = parse(FLAT)
    checked = []
    calls = _checker_calls(monkeypatch, checked)
    rewrite_module.rewrite_model(model, "input-noise")
    assert calls == [False]
    assert checked == [["Relu", "Constant", "Mul", "Add"]]


# flat graphs proven in place, in every mode that proves it, and a mix of draws and dtypes
MANY = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch, 4] x, double[3] d) => (float[batch, 4] y, double[3] z, float[2, 3] u) {
  a = Relu(x)
  r = RandomNormalLike<scale = 2.0>(a)
  b = Add(a, r)
  q = RandomUniformLike<low = -1.0, high = 1.0>(b)
  y = Mul(b, q)
  e = RandomNormalLike(d)
  z = Add(d, e)
  u = RandomUniform<shape = [2, 3]>()
}
"""


@pytest.mark.parametrize("text", [FLAT, MANY])
@pytest.mark.parametrize("mode", ["input-noise", "seeded", "deterministic", "constant"])
def test_op_counts_derived_in_place_are_the_outputs_counted(text, mode):
    """The report's ops_after for an output proven to be the input plus the patch in place
    comes from the input's counts: it must equal a count of the output's nodes."""
    from onnxfix.report import op_counts, op_counts_in_place

    model = parse(text)
    options = RewriteOptions(mode=mode, dims={"batch": 2} if mode == "constant" else {})
    out, emitted = apply_emitted(model, plan_model(model, options), mode, input_checked=True)
    if mode == "input-noise":  # proven there (the other modes may not be)
        assert emitted.in_place
    if emitted.in_place:
        assert op_counts_in_place(op_counts(model), emitted) == op_counts(out)
    _, report = onnxfix.rewrite(model, mode, dims=options.dims, check=False)
    assert report.ops_after == op_counts(out)
