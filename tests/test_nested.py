"""Random nodes inside If / Loop / Scan bodies and model-local functions."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import full_check, input_dims, parse, run

import onnxfix
from onnxfix import ModelError
from onnxfix.rewrite import rewrite_model

IF_MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (bool c, float[N] x) => (float[N] y) {
  y = If (c) <
    then_branch = t () => (float[N] ty) {
      r = RandomNormalLike<mean=1.0>(x)
      ty = Add(x, r)
    },
    else_branch = e () => (float[N] ey) {
      ey = Neg(x)
    }
  >
}
"""

LOOP_KNOWN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[3] x) => (float[3] acc, float[4,3] steps) {
  trips = Constant<value=int64 {4}>()
  cond = Constant<value=bool {1}>()
  acc, steps = Loop (trips, cond, x) <
    body = b (int64 i, bool c_in, float[3] a_in) => (bool c_out, float[3] a_out, float[3] s) {
      c_out = Identity(c_in)
      r = RandomUniformLike<low=0.0, high=1.0>(a_in)
      a_out = Add(a_in, r)
      s = Identity(r)
    }
  >
}
"""

LOOP_DYNAMIC = """
<ir_version: 8, opset_import: ["" : 17]>
g (int64 trips, float[3] x) => (float[3] acc) {
  cond = Constant<value=bool {1}>()
  acc = Loop (trips, cond, x) <
    body = b (int64 i, bool c_in, float[3] a_in) => (bool c_out, float[3] a_out) {
      c_out = Identity(c_in)
      r = RandomNormal<shape=[3]>()
      a_out = Add(a_in, r)
    }
  >
}
"""

SCAN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[T,2] xs) => (float[2] last, float[T,2] ys) {
  init = Constant<value=float[2] {0.0, 0.0}>()
  last, ys = Scan (init, xs) <
    num_scan_inputs = 1,
    body = b (float[2] s_in, float[2] x_t) => (float[2] s_out, float[2] y_t) {
      r = RandomNormalLike<scale=2.0>(x_t)
      y_t = Add(x_t, r)
      s_out = Add(s_in, y_t)
    }
  >
}
"""

NESTED_LOOPS = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x) => (float[2] acc) {
  outer_n = Constant<value=int64 {3}>()
  cond = Constant<value=bool {1}>()
  acc = Loop (outer_n, cond, x) <
    body = ob (int64 i, bool c_in, float[2] a_in) => (bool c_out, float[2] a_out) {
      c_out = Identity(c_in)
      inner_n = Constant<value=int64 {2}>()
      a_out = Loop (inner_n, c_in, a_in) <
        body = ib (int64 j, bool d_in, float[2] b_in) => (bool d_out, float[2] b_out) {
          d_out = Identity(d_in)
          r = RandomNormalLike(b_in)
          b_out = Add(b_in, r)
        }
      >
    }
  >
}
"""

FUNCTION = """
<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
g (float[N] x) => (float[N] y) {
  a = local.noisy<s=2.0>(x)
  y = local.plain(a)
}
<domain: "local", opset_import: ["" : 17]>
noisy <s> (x) => (y) {
  r = RandomNormalLike<scale: float = @s>(x)
  y = Add(x, r)
}
<domain: "local", opset_import: ["" : 17]>
plain (x) => (y) {
  y = Relu(x)
}
"""


def test_if_branch_reads_a_main_graph_noise_input():
    model = parse(IF_MODEL)
    new, report = onnxfix.rewrite(model, "input-noise")
    full_check(new)
    rec = report.nodes[0]
    assert rec.graph.startswith("main/") and rec.graph.endswith(".then_branch")
    assert input_dims(new, "noise_r") == ["N"]
    assert report.parity.status == "passed"
    x = np.array([1.0, 2.0], np.float32)
    eps = np.array([0.5, -0.5], np.float32)
    y = run(new, {"c": np.array(True), "x": x, "noise_r": eps})["y"]
    np.testing.assert_array_equal(y, x + (eps + 1.0))
    y = run(new, {"c": np.array(False), "x": x, "noise_r": eps})["y"]
    np.testing.assert_array_equal(y, -x)


def test_loop_with_known_trip_count_reads_slice_i_in_iteration_i():
    model = parse(LOOP_KNOWN)
    new, report = onnxfix.rewrite(model, "input-noise")
    full_check(new)
    assert input_dims(new, "noise_r") == [4, 3]
    assert report.parity.status == "passed"
    # noise of value i in slice i: the per-step outputs show which slice each step read
    u = np.repeat(np.arange(4, dtype=np.float32)[:, None] / 10, 3, axis=1)
    res = run(new, {"x": np.zeros(3, np.float32), "noise_r": u})
    np.testing.assert_allclose(res["steps"], u)
    np.testing.assert_allclose(res["acc"], np.full(3, 0.6, np.float32), rtol=1e-6)


def test_loop_with_a_trip_count_from_an_input_value_gets_a_bounded_iteration_axis():
    # the trip count is input `trips`' value, no input dim: the iteration axis takes a bound
    model = parse(LOOP_DYNAMIC)
    new, report = onnxfix.rewrite(model, "input-noise", noise_bounds={"noise_r:0": 8})
    full_check(new)
    dims = input_dims(new, "noise_r")
    assert dims == [8, 3]
    assert report.parity.status == "passed"
    eps = np.arange(24, dtype=np.float32).reshape(8, 3)
    acc = run(new, {"trips": np.array(5), "x": np.zeros(3, np.float32), "noise_r": eps})["acc"]
    np.testing.assert_array_equal(acc, eps[:5].sum(axis=0))


def test_constant_mode_needs_the_trip_count_and_takes_it_from_dim():
    model = parse(LOOP_DYNAMIC)
    with pytest.raises(ModelError, match=r"axis 0 of its noise 'noise_r' is data-dependent "
                                         r"\(the iterations of Loop -> 'acc' come from the "
                                         r"values of input 'trips'\).*"
                                         r"noise_bounds=\{'noise_r:0': N\}"):
        rewrite_model(model, "constant")
    bounded, _ = onnxfix.rewrite(model, "constant", noise_bounds={"noise_r:0": 5}, check=False)
    assert onnx.numpy_helper.to_array(next(
        t for t in bounded.graph.initializer if t.name == "noise_r")).shape == (5, 3)
    # fixing the iteration count itself (the name a Loop's axis gets) still works
    new, report = onnxfix.rewrite(model, "constant", dims={"loop_iterations": 5})
    full_check(new)
    assert report.nodes[0].replacement.shape == [5, 3]
    assert report.parity.status == "passed"
    feeds = {"trips": np.array(5), "x": np.zeros(3, np.float32)}
    assert np.array_equal(run(new, feeds)["acc"], run(new, feeds)["acc"])


def test_scan_gets_the_noise_as_an_extra_scan_input():
    model = parse(SCAN)
    new, report = onnxfix.rewrite(model, "input-noise")
    full_check(new)
    assert input_dims(new, "noise_r") == ["T", 2]
    scan = next(n for n in new.graph.node if n.op_type == "Scan")
    assert list(scan.input) == ["init", "xs", "noise_r"]
    assert next(a.i for a in scan.attribute if a.name == "num_scan_inputs") == 2
    assert report.parity.status == "passed"
    assert report.parity.sizes == [{"T": 2}, {"T": 3}]
    xs = np.zeros((3, 2), np.float32)
    eps = np.array([[0, 1], [2, 3], [4, 5]], np.float32)
    res = run(new, {"xs": xs, "noise_r": eps})
    np.testing.assert_array_equal(res["ys"], 2 * eps)


def test_nested_loops_take_one_leading_axis_each():
    model = parse(NESTED_LOOPS)
    new, report = onnxfix.rewrite(model, "input-noise")
    full_check(new)
    assert input_dims(new, "noise_r") == [3, 2, 2]
    assert report.parity.status == "passed"
    eps = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    acc = run(new, {"x": np.zeros(2, np.float32), "noise_r": eps})["acc"]
    np.testing.assert_array_equal(acc, eps.sum(axis=(0, 1)))


def test_function_holding_a_random_node_is_inlined_and_others_kept():
    model = onnx.parser.parse_model(FUNCTION)
    new, report = onnxfix.rewrite(model, "input-noise")
    onnx.checker.check_model(new, full_check=True)
    assert [f.name for f in new.functions] == ["plain"]
    rec = report.nodes[0]
    assert rec.graph == "main (inlined from function local::noisy)"
    assert rec.distribution["scale"] == 2.0
    assert report.parity.status == "passed"
    x = np.array([-1.0, 1.0], np.float32)
    eps = np.array([1.0, 1.0], np.float32)
    y = run(new, {"x": x, rec.replacement.name: eps})["y"]
    np.testing.assert_array_equal(y, np.maximum(x + 2 * eps, 0))


@pytest.mark.parametrize("text", [IF_MODEL, LOOP_KNOWN, SCAN, NESTED_LOOPS])
def test_constant_mode_in_bodies(text):
    model = parse(text)
    dims = {"N": 2} if "float[N]" in text else {"T": 3} if "T," in text else {}
    new, report = onnxfix.rewrite(model, "constant", dims=dims)
    full_check(new)
    assert report.parity.status == "passed"
    assert report.nodes[0].replacement.kind == "initializer"
