"""The numbered small fixes of issue 14, each pinned by the model that showed it."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from conftest import parse

import onnxfix
from onnxfix.compare import compare_arrays

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
