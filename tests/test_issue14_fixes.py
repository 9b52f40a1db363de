"""The numbered small fixes of issue 14, each pinned by the model that showed it."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import parse
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator
from typer.testing import CliRunner

import onnxfix
from onnxfix.check.compare import compare_arrays
from onnxfix.cli import app

SQRT_OF_DATA = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch,4] x) => (float[batch,4] y) {
  r = RandomNormalLike<mean=1.0>(x)
  s = Sqrt(x)
  y = Add(s, r)
}
"""


def test_nan_in_the_same_positions_matches_and_nan_against_a_number_does_not():
    want = np.array([1.0, np.nan, 3.0], np.float32)
    same = compare_arrays("y", want.copy(), want, None, None, {})
    assert same.passed and same.max_abs_err == 0.0 and same.max_rel_err == 0.0
    moved = compare_arrays("y", np.array([1.0, 2.0, np.nan], np.float32), want, None, None, {})
    assert not moved.passed and moved.note == "NaN/Inf positions differ"


@pytest.mark.parametrize("mode", ["input-noise", "constant", "deterministic"])
def test_sqrt_of_negative_synthetic_inputs_passes_parity(mode):
    # N(0, 1) inputs: about half of sqrt(x) is NaN, in the same places in both models
    _, report = onnxfix.rewrite(parse(SQRT_OF_DATA), mode, dims={"batch": 2})
    assert report.parity.status == "passed"
    assert all(c.max_rel_err == 0.0 for c in report.parity.outputs)


SCALAR_UNIFORM = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch,3] x) => (float[batch,3] y, float[batch,3] z) {
  u = RandomUniform<shape: ints = [], low=-1.0, high=1.0>()
  e = RandomNormal<shape: ints = []>()
  y = Mul(x, u)
  z = Add(x, e)
}
"""


def test_noise_feeds_gives_0d_arrays_that_onnxruntime_takes(tmp_path):
    # paddle2onnx exports paddle.uniform(shape=[]) as a RandomUniform with shape=[]
    path = tmp_path / "scalar_noise.onnx"
    onnxfix.rewrite(parse(SCALAR_UNIFORM), "input-noise", output=path)
    noise = onnxfix.noise_feeds(path, dims={"batch": 4}, seed=123)
    assert {k: (type(v), v.shape) for k, v in noise.items()} == {
        "noise_u": (np.ndarray, ()), "noise_e": (np.ndarray, ())}
    # the README's feeding example, verbatim in substance
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    y, z = sess.run(None, {"x": x, **noise})
    u = np.float32(-1.0) + np.float32(2.0) * noise["noise_u"]
    np.testing.assert_array_equal(y, x * u)
    np.testing.assert_array_equal(z, x + noise["noise_e"])
    zeros = {k: np.zeros_like(v) for k, v in noise.items()}
    y_low, z_mean = sess.run(None, {"x": x, **zeros})
    np.testing.assert_array_equal(y_low, -x)
    np.testing.assert_array_equal(z_mean, x)


DROPOUT_IN_LOOP = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2,4] x) => (float[2,4] acc) {
  trips = Constant<value=int64 {3}>()
  cond = Constant<value=bool {1}>()
  acc = Loop (trips, cond, x) <
    body = b (int64 i, bool c_in, float[2,4] a_in) => (bool c_out, float[2,4] a_out) {
      c_out = Identity(c_in)
      ratio = Constant<value=float {0.25}>()
      train = Constant<value=bool {1}>()
      d = Dropout(a_in, ratio, train)
      a_out = Add(d, a_in)
    }
  >
}
"""


@pytest.mark.parametrize("mode", ["input-noise", "constant"])
def test_training_dropout_inside_a_loop_is_checked(mode):
    # the ratio is captured once per iteration ([3]) and the mask per iteration ([3, 2, 4])
    _, report = onnxfix.rewrite(parse(DROPOUT_IN_LOOP), mode)
    assert report.parity.status == "passed"
    assert [(c.name, c.shape, c.passed) for c in report.parity.outputs][0] == (
        "acc", [2, 4], True)


def _opset6_dropout(with_mask: bool) -> onnx.ModelProto:
    """Dropout-6 with is_test=0 (training); its mask has the data's type, float."""
    outs = ["y", "m"] if with_mask else ["y"]
    node = helper.make_node("Dropout", ["x"], outs, is_test=0, ratio=0.25, name="drop")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, [2, 5]) for o in outs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)], ir_version=3)
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("with_mask", [True, False])
def test_opset6_training_dropout_writes_a_float_mask(with_mask, rng):
    out, report = onnxfix.rewrite(_opset6_dropout(with_mask), "input-noise")
    onnx.checker.check_model(out, full_check=True)
    # onnxruntime has no Dropout-6 kernel: the check says so instead of passing
    assert report.parity.status == "skipped"
    assert "Could not find an implementation for Dropout(6)" in report.parity.reason
    # portable keep-mask 1 - Ceil(ratio - u), spelled -Ceil(-(u - ratio)) + 1 at opset 6
    assert [n.op_type for n in out.graph.node] == [
        "Constant", "Constant", "Sub", "Neg", "Ceil", "Neg", "Add",
        *(["Identity"] if with_mask else []), "Sub", "Reciprocal", "Mul", "Mul"]
    if with_mask:
        assert out.graph.output[1].type.tensor_type.elem_type == TensorProto.FLOAT
    # onnxruntime cannot run opset-6 arithmetic either; onnx's reference evaluator can
    x = rng.standard_normal((2, 5)).astype(np.float32)
    u = rng.random((2, 5)).astype(np.float32)
    got = ReferenceEvaluator(out).run(None, {"x": x, "noise_y": u})
    keep = (u >= np.float32(0.25)).astype(np.float32)
    np.testing.assert_allclose(got[0], x * keep / np.float32(0.75), rtol=1e-6)
    if with_mask:
        assert got[1].dtype == np.float32
        np.testing.assert_array_equal(got[1], keep)


def _old_opset_draws(opset: int) -> onnx.ModelProto:
    return parse(f"""
    <ir_version: 3, opset_import: ["" : {opset}]>
    g (float[batch,3] x) => (float[batch,3] y, float[2,3] z) {{
      r = RandomNormalLike<mean=2.0, scale=3.0>(x)
      y = Add(x, r)
      z = RandomUniform<shape=[2, 3], low=1.0, high=3.0, dtype=1>()
    }}""")


@pytest.mark.parametrize("opset", [7, 8])
def test_deterministic_mode_works_below_opset_9(opset, rng):
    out, report = onnxfix.rewrite(_old_opset_draws(opset), "deterministic")
    onnx.checker.check_model(out, full_check=True)
    assert report.parity.status == "passed"
    assert "ConstantOfShape" not in {n.op_type for n in out.graph.node}
    x = rng.standard_normal((4, 3)).astype(np.float32)
    x[0, 0], x[1, 1] = np.nan, np.inf  # the fill must not inherit them
    y, z = ort.InferenceSession(out.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_array_equal(y, x + np.float32(2.0))
    np.testing.assert_array_equal(z, np.full((2, 3), 2.0, np.float32))


def test_deterministic_opset6_dropout_keeps_the_data_and_a_float_all_ones_mask(rng):
    out, _ = onnxfix.rewrite(_opset6_dropout(True), "deterministic", check=False)
    onnx.checker.check_model(out, full_check=True)
    x = rng.standard_normal((2, 5)).astype(np.float32)
    x[0, 0] = np.nan
    y, m = ReferenceEvaluator(out).run(None, {"x": x})
    np.testing.assert_array_equal(y, x)
    assert m.dtype == np.float32
    np.testing.assert_array_equal(m, np.ones((2, 5), np.float32))


def test_deterministic_mode_below_opset_6_is_refused_with_the_reason():
    model = _old_opset_draws(7)
    model.opset_import[0].version = 5
    with pytest.raises(onnxfix.ModelError, match=r"^deterministic mode needs opset 6 or later "
                       r"\(Cast and Tile take their current form there\); the model uses "
                       r"opset 5$"):
        onnxfix.rewrite(model, "deterministic", check=False)


FUNCTION_DRAWS = """
<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
g (float[N] x) => (float[N] y) {
  a = local.noisy<s=2.0>(x)
  y = local.fixed(a)
}
<domain: "local", opset_import: ["" : 17]>
noisy <s> (x) => (y) {
  r = RandomNormalLike<scale: float = @s>(x)
  y = Add(x, r)
}
<domain: "local", opset_import: ["" : 17]>
fixed (x) => (y) {
  r = RandomUniformLike<dtype=1>(x)
  b = Bernoulli(r)
  y = Add(x, b)
}
"""


def test_inspect_reads_draws_inside_local_functions_without_calling_them_invalid():
    rep = onnxfix.inspect(parse(FUNCTION_DRAWS))
    got = [(n.graph, n.op_type, n.dtype, n.attributes) for n in rep.nodes]
    assert got == [
        ("function local::noisy", "RandomNormalLike", "per call (the type of input 'x')",
         {"scale": "@s"}),
        ("function local::fixed", "RandomUniformLike", "float", {"dtype": 1}),
        ("function local::fixed", "Bernoulli", "per call (the type of input 'r')", {}),
    ]


def test_never_called_functions_with_per_call_parameters_are_kept_and_reported():
    model = parse(FUNCTION_DRAWS.replace("  a = local.noisy<s=2.0>(x)\n  y = local.fixed(a)\n",
                                         "  y = Relu(x)\n"))
    out, report = onnxfix.rewrite(model, "input-noise")
    kept = [(n.op_type, n.status, n.note, n.distribution.get("scale")) for n in report.nodes]
    never = "in a model-local function that is never called"
    assert kept == [("RandomNormalLike", "kept", never, "@s"),
                    ("RandomUniformLike", "kept", never, None),
                    ("Bernoulli", "kept", never, None)]
    assert out.SerializeToString() == model.SerializeToString()


DEAD_DRAW = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch,4] x) => (float[batch,4] y) {
  s = Shape(x)
  c = ConstantOfShape(s)
  unused = RandomNormalLike(c)
  r = RandomUniformLike(x)
  y = Add(x, r)
}
"""


def test_a_dead_draw_is_removed_not_given_a_noise_input(tmp_path):
    out, report = onnxfix.rewrite(parse(DEAD_DRAW), "input-noise")
    # the dead draw and the Shape -> ConstantOfShape chain that only fed it are gone
    assert [n.op_type for n in out.graph.node] == ["Identity", "Add"]
    assert [i.name for i in out.graph.input] == ["x", "noise_r"]
    assert [(n.output, n.status, n.note) for n in report.nodes] == [
        ("unused", "removed", "its draw is read by nothing, so the node was removed"),
        ("r", "rewritten", "")]
    assert report.new_inputs == ["noise_r"] and report.parity.status == "passed"
    result = CliRunner().invoke(app, ["rewrite", str(_saved(tmp_path, DEAD_DRAW)),
                                      str(tmp_path / "o.onnx")])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    at = lines.index("1 random node(s) rewritten (input-noise), 1 removed:")
    assert lines[at + 1] == ("  RandomNormalLike -> 'unused'  removed (its draw is read by "
                             "nothing, so the node was removed)")


def test_a_model_whose_only_draw_is_dead_loses_it_in_every_mode():
    only_dead = DEAD_DRAW.replace("  r = RandomUniformLike(x)\n  y = Add(x, r)\n",
                                  "  y = Relu(x)\n")
    for mode in ("input-noise", "constant", "deterministic"):
        out, report = onnxfix.rewrite(parse(only_dead), mode)
        assert [n.op_type for n in out.graph.node] == ["Relu"]
        assert [i.name for i in out.graph.input] == ["x"]
        assert report.parity.reason == "no random node was rewritten (1 removed as dead)"


def _saved(folder, text: str):
    path = folder / "model.onnx"
    onnx.save(parse(text), path)
    return path


def test_the_cli_refuses_deterministic_mode_below_opset_6_with_exit_3(tmp_path):
    model = _old_opset_draws(7)
    model.opset_import[0].version = 5
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(model, src)
    result = CliRunner().invoke(app, ["rewrite", str(src), str(out), "--mode", "deterministic"])
    assert result.exit_code == 3
    assert result.stderr == ("onnxfix: error: deterministic mode needs opset 6 or later (Cast "
                             "and Tile take their current form there); the model uses opset 5\n")
    assert not out.exists()
