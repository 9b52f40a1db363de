"""Conditional parity: captured draws, standardized, must reproduce the original exactly."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import parse

import onnxfix
from onnxfix import ParityError
from onnxfix.check.parity import check_parity
from onnxfix.ops import OP_TABLE
from onnxfix.rewrite import rewrite_model

DYNAMIC = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch,10] x) => (float[batch,10] y) {
  s = Shape(x)
  c = ConstantOfShape(s)
  r = RandomNormalLike<mean=2.0, scale=0.5>(c)
  u = RandomUniformLike<low=-3.0, high=5.0>(x)
  t = Mul(u, r)
  y = Add(x, t)
}
"""

FP16 = """
<ir_version: 7, opset_import: ["" : 14]>
g (float16[2,3,4] input) => (float16[2,3,4] output) {
  output = RandomNormalLike<mean=10.0, scale=1.5, seed=0.0>(input)
}
"""


def test_input_noise_parity_is_exact_at_two_sizes():
    _, report = onnxfix.rewrite(parse(DYNAMIC), "input-noise")
    p = report.parity
    assert p.status == "passed"
    assert p.sizes == [{"batch": 2}, {"batch": 3}]
    # y plus both draws, at each size
    assert [(c.name, c.dims["batch"]) for c in p.outputs] == [
        ("y", 2), ("r", 2), ("u", 2), ("y", 3), ("r", 3), ("u", 3)]
    assert all(c.passed and c.max_abs_err == 0.0 for c in p.outputs)


def test_float16_draws_with_mean_and_scale_are_reproduced_bit_for_bit():
    _, report = onnxfix.rewrite(parse(FP16), "input-noise")
    checks = {c.name: c for c in report.parity.outputs}
    assert checks["output"].passed and checks["output"].max_abs_err == 0.0


def test_standardize_inverts_the_transform_exactly_in_float16():
    spec = OP_TABLE["RandomNormalLike"]
    attrs = {"mean": 10.0, "scale": 1.5}
    draws = (10 + 1.5 * np.random.default_rng(0).standard_normal(5000)).astype(np.float16)
    noise = spec.standardize({0: draws}, attrs)
    np.testing.assert_array_equal(spec.forward(noise, attrs)[0], draws)


def test_constant_mode_parity_chains_the_conditional_check_and_the_frozen_noise():
    _, report = onnxfix.rewrite(parse(DYNAMIC), "constant", dims={"batch": 4})
    p = report.parity
    assert p.status == "passed" and p.sizes == [{}]
    # the input-noise twin against the original's draws, then the constant model against
    # that twin fed the frozen noise
    assert [c.name for c in p.outputs] == ["y", "r", "u", "y (constant)"]
    # onnxruntime's own draws are reachable through the in-graph ops: exact.
    assert all(c.max_abs_err == 0.0 for c in p.outputs[:3])
    # numpy's float64 draw, rounded to float32, may sit between two reachable values.
    assert p.outputs[3].passed and p.outputs[3].max_abs_err < 1e-6


def test_a_wrong_transform_fails_the_check_and_writes_nothing(monkeypatch, tmp_path):
    spec = OP_TABLE["RandomNormalLike"]
    real = type(spec).transform

    def off_by_one(self, b, noise, output, attrs, dtype):
        real(self, b, noise, output, {**attrs, "mean": attrs.get("mean", 0.0) + 1.0}, dtype)

    monkeypatch.setattr(type(spec), "transform", off_by_one)
    out = tmp_path / "out.onnx"
    with pytest.raises(ParityError, match="parity check failed") as info:
        onnxfix.rewrite(parse(DYNAMIC), "input-noise", output=out)
    assert not out.exists()
    p = info.value.report.parity
    assert p.status == "failed"
    bad = {c.name for c in p.outputs if not c.passed}
    assert bad == {"y", "r"}
    assert max(c.max_abs_err for c in p.outputs if c.name == "r") == pytest.approx(1.0)


def test_tolerances_are_applied_as_given():
    model = parse(DYNAMIC)
    new, records = rewrite_model(model, "input-noise")
    # Shift the rewritten mean by 1e-3: passes with atol=1e-2, fails with the defaults.
    for n in new.graph.node:
        if n.op_type == "Constant" and n.output[0].endswith("mean"):
            t = onnx.numpy_helper.to_array(n.attribute[0].t) + np.float32(1e-3)
            n.attribute[0].t.CopyFrom(onnx.numpy_helper.from_array(t, n.attribute[0].t.name))
    assert check_parity(model, new, records, "input-noise").status == "failed"
    loose = check_parity(model, new, records, "input-noise", atol=1e-2, rtol=0)
    assert loose.status == "passed" and loose.atol == 1e-2


def test_parity_is_skipped_with_a_reason_when_the_original_cannot_run():
    # onnxruntime 1.32 has no kernel for RandomUniformLike at opset 22.
    model = parse("""
    <ir_version: 10, opset_import: ["" : 22]>
    g (float[4] x) => (float[4] y) {
      r = RandomUniformLike(x)
      y = Add(x, r)
    }""")
    _, report = onnxfix.rewrite(model, "input-noise")
    assert report.parity.status == "skipped"
    assert "original model does not load in onnxruntime" in report.parity.reason


def test_no_check_reports_skipped():
    _, report = onnxfix.rewrite(parse(DYNAMIC), "input-noise", check=False)
    assert report.parity.status == "skipped" and report.parity.reason == "--no-check"
