"""Bernoulli, Multinomial and Dropout: known noise in, the exact draw out; both modes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import full_check, input_dims, op_types, parse, random_nodes, run

import onnxfix
from onnxfix.rewrite import rewrite_model


def bernoulli(p_type: str = "float", attrs: str = "", out_type: str = "") -> onnx.ModelProto:
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 15]>
    g ({p_type}[batch,4] p) => ({out_type or p_type}[batch,4] y) {{
      y = Bernoulli{attrs}(p)
    }}""")


@pytest.mark.parametrize("p_type,np_type", [("float", np.float32), ("double", np.float64),
                                            ("float16", np.float16)])
def test_bernoulli_is_noise_below_p_and_keeps_the_input_type(p_type, np_type):
    new, report = onnxfix.rewrite(bernoulli(p_type), "input-noise")
    full_check(new)
    # float16 p is cast up: Ceil(p - u) runs in float32, on float32 noise; no compare
    body = ["Constant", "Constant", "Clip", "Sub", "Ceil", "Abs"]
    assert op_types(new) == (["Cast", *body, "Cast"] if p_type == "float16" else body)
    noise_type = {"float": "float", "double": "double", "float16": "float"}[p_type]
    assert report.nodes[0].replacement.dtype == noise_type
    assert input_dims(new, "noise_y") == ["batch", 4]
    p = np.array([[0.0, 0.25, 0.5, 1.0]], np_type)
    u = np.array([[0.0, 0.25, 0.49, 0.999]], np.float64 if p_type == "double" else np.float32)
    y = run(new, {"p": p, "noise_y": u})["y"]
    assert y.dtype == np_type
    np.testing.assert_array_equal(y, [[0, 0, 1, 1]])  # 1 exactly where u < p


@pytest.mark.parametrize("dtype,np_type,name", [(7, np.int64, "int64"), (9, np.bool_, "bool"),
                                                (6, np.int32, "int32")])
def test_bernoulli_dtype_attribute(dtype, np_type, name):
    new, _ = onnxfix.rewrite(bernoulli(attrs=f"<dtype={dtype}>", out_type=name), "input-noise")
    full_check(new)
    y = run(new, {"p": np.full((2, 4), 0.5, np.float32),
                  "noise_y": np.tile(np.array([0.1, 0.6, 0.4, 0.9], np.float32), (2, 1))})["y"]
    assert y.dtype == np_type
    np.testing.assert_array_equal(y.astype(int), np.tile([1, 0, 1, 0], (2, 1)))


def test_bernoulli_constant_mode_freezes_uniform_noise_and_keeps_the_comparison():
    new, report = onnxfix.rewrite(bernoulli(), "constant", dims={"batch": 3}, seed=5)
    full_check(new)
    assert report.nodes[0].replacement.kind == "initializer"
    assert report.nodes[0].replacement.name == "noise_y"
    u = onnx.numpy_helper.to_array(new.graph.initializer[0])
    assert u.shape == (3, 4) and u.min() >= 0 and u.max() < 1
    p = np.full((3, 4), 0.5, np.float32)
    np.testing.assert_array_equal(run(new, {"p": p})["y"], (u < 0.5).astype(np.float32))
    assert report.parity.status == "passed"


def multinomial(opset: int, attrs: str = "", batch: str = "batch", out: str = "int32",
                samples: int = 1) -> onnx.ModelProto:
    return parse(f"""
    <ir_version: 7, opset_import: ["" : {opset}]>
    g (float[{batch},3] logits) => ({out}[{batch},{samples}] y) {{
      y = Multinomial{attrs}(logits)
    }}""")


@pytest.mark.parametrize("opset", [9, 13, 17, 18])
def test_multinomial_inverse_cdf_picks_the_class_whose_interval_holds_the_noise(opset):
    new, report = onnxfix.rewrite(multinomial(opset, "<sample_size=3>", samples=3), "input-noise")
    full_check(new)
    assert new.opset_import[0].version == opset
    assert input_dims(new, "noise_y") == ["batch", 3]  # one uniform per sample
    assert random_nodes(new) == []
    # 3 classes: the cumulative sum is one MatMul by a triangle at every opset (ncnn has no
    # CumSum); larger vocabularies use CumSum from opset 11 (tests/test_portable.py)
    assert "CumSum" not in op_types(new) and "MatMul" in op_types(new)
    logits = np.array([[np.log(0.25), np.log(0.25), np.log(0.5)], [0.0, -np.inf, 0.0]],
                      np.float32)
    # row 0: [0, .25) -> 0, [.25, .5) -> 1, [.5, 1) -> 2; row 1: class 1 has probability 0
    u = np.array([[0.0, 0.25, 0.5], [0.4999, 0.5, 0.99999994]], np.float32)
    y = run(new, {"logits": logits, "noise_y": u})["y"]
    assert y.dtype == np.int32  # the op's default dtype
    np.testing.assert_array_equal(y, [[0, 1, 2], [0, 2, 2]])


def test_multinomial_int64_and_huge_logits_do_not_overflow():
    new, _ = onnxfix.rewrite(multinomial(15, "<dtype=7>", out="int64"), "input-noise")
    full_check(new)
    # exp(1000) overflows float32: the max is subtracted first
    logits = np.array([[1000.0, 1000.0, -np.inf], [9.0, 0.0, 0.0]], np.float32)
    y = run(new, {"logits": logits, "noise_y": np.array([[0.75], [0.5]], np.float32)})["y"]
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, [[1], [0]])


def test_multinomial_constant_mode_samples_follow_the_probabilities():
    new, report = onnxfix.rewrite(multinomial(15, "<sample_size=2000>", batch="1", samples=2000),
                                  "constant", seed=3)
    full_check(new)
    probs = np.array([[0.1, 0.6, 0.3]], np.float32)
    y = run(new, {"logits": np.log(probs)})["y"]
    freq = np.bincount(y.reshape(-1), minlength=3) / y.size
    np.testing.assert_allclose(freq, probs[0], atol=0.04)
    assert report.parity.status == "passed"


def dropout(opset: int, inputs: str, sig: str, outputs: str = "y, m",
            out_sig: str = "float[batch,4] y, bool[batch,4] m") -> onnx.ModelProto:
    return parse(f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g ({sig}) => ({out_sig}) {{
      {outputs} = Dropout({inputs})
    }}""")


def test_training_dropout_masks_where_noise_is_below_the_ratio_and_rescales():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[batch,4] x) => (float[batch,4] y, bool[batch,4] m) {
      r = Constant<value=float {0.25}>()
      t = Constant<value=bool {1}>()
      y, m = Dropout(x, r, t)
    }""")
    new, report = onnxfix.rewrite(model, "input-noise")
    full_check(new)
    assert random_nodes(new) == [] and report.parity.status == "passed"
    x = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
    u = np.array([[0.1, 0.25, 0.9, 0.2]], np.float32)
    res = run(new, {"x": x, "noise_y": u})
    np.testing.assert_array_equal(res["m"], [[False, True, True, False]])
    np.testing.assert_allclose(res["y"], [[0, 2 / 0.75, 3 / 0.75, 0]], rtol=1e-6)


def test_dropout_without_training_flag_is_not_random():
    model = dropout(13, "x", "float[batch,4] x")
    new, records = rewrite_model(model, "input-noise")
    assert records == [] and op_types(new) == ["Dropout"]


def test_dropout_with_a_runtime_training_flag_keeps_inference_behaviour():
    model = dropout(13, "x, r, t", "float[batch,4] x, float r, bool t")
    new, _ = onnxfix.rewrite(model, "input-noise", check=False)
    full_check(new)
    x = np.ones((1, 4), np.float32)
    u = np.array([[0.1, 0.9, 0.1, 0.9]], np.float32)
    ratio = np.array(0.5, np.float32)
    on = run(new, {"x": x, "r": ratio, "t": np.array(True), "noise_y": u})
    np.testing.assert_array_equal(on["y"], [[0, 2, 0, 2]])
    np.testing.assert_array_equal(on["m"], [[False, True, False, True]])
    off = run(new, {"x": x, "r": ratio, "t": np.array(False), "noise_y": u})
    np.testing.assert_array_equal(off["y"], x)
    assert off["m"].all()


def test_old_opset_dropout_in_training_mode_uses_the_ratio_attribute():
    model = parse("""
    <ir_version: 3, opset_import: ["" : 6]>
    g (float[2,4] x) => (float[2,4] y) {
      y = Dropout<is_test=0, ratio=0.5>(x)
    }""")
    new, records = rewrite_model(model, "input-noise")
    onnx.checker.check_model(new, full_check=True)
    assert records[0].op_type == "Dropout"
    # onnxruntime implements no opset-6 comparison kernels: check the graph itself
    # opset-6 broadcasting stretches only the second operand: 1 - Ceil(ratio - u) is written
    # as -Ceil(-(u - ratio)) + 1
    assert op_types(new) == ["Constant", "Constant", "Sub", "Neg", "Ceil", "Neg", "Add", "Sub",
                             "Reciprocal", "Mul", "Mul"]
    subs = [n for n in new.graph.node if n.op_type in ("Sub", "Mul", "Add")]
    assert all([(a.name, a.i) for a in n.attribute] == [("broadcast", 1)] for n in subs)
    inference = parse("""
    <ir_version: 3, opset_import: ["" : 6]>
    g (float[2,4] x) => (float[2,4] y) { y = Dropout<is_test=1>(x) }""")
    assert rewrite_model(inference, "input-noise")[1] == []


@pytest.mark.parametrize("seeded", ["", "<seed=3.0>"])
def test_seed_attribute_does_not_change_the_rewrite(seeded):
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g () => (double[2,3] y) {{ y = RandomUniform{seeded[:-1] + ', ' if seeded else '<'}dtype=11,
                                                   shape=[2,3], low=-1.0, high=1.0>() }}""")
    new, report = onnxfix.rewrite(model, "constant", seed=1)
    y = onnx.numpy_helper.to_array(new.graph.initializer[0])
    assert y.dtype == np.float64 and (y >= -1).all() and (y < 1).all()
    assert report.parity.status == "passed"


def test_standardize_takes_a_0d_draw_and_gives_0d_noise():
    # paddle2onnx's RandomUniform(shape=[]) draws a 0-d tensor; numpy arithmetic on 0-d arrays
    # gives scalars, which the ulp refinement could not assign into (a constant-mode traceback)
    from onnxfix.ops import OP_TABLE

    spec = OP_TABLE["RandomUniform"]
    attrs = {"low": -1.0, "high": 1.0}
    draw = np.asarray(spec.forward(np.asarray(np.float32(0.65)), attrs)[0])
    noise = spec.standardize({0: draw}, attrs)
    assert isinstance(noise, np.ndarray) and noise.shape == () and noise.dtype == np.float32
    assert spec.forward(noise, attrs)[0] == draw
