"""Portable forms: the added nodes come from the op set every common runtime shares.

ncnn has no Cast, Less or GreaterOrEqual and onnx2torch no GreaterOrEqual (issue 11), so
Bernoulli is `Ceil(p - u)` and the Dropout keep-mask `1 - Ceil(ratio - u)`. Each form is
proven equal, bit for bit in onnxruntime, to the compare-and-cast form it replaced, over the
edge values where a compare could differ from a subtraction: u = p, one ulp either side,
p = 0, p = 1, u = 0, ratio = 0, the largest u below 1.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import FIXTURES, full_check, parse, run
from onnx import TensorProto, helper

import onnxfix

# What the rewrite may add (Cast only where a dtype asks, Where/Not/Or only for a Dropout
# whose training flag is fed at run time).
PORTABLE = {"Constant", "Identity", "Clip", "Sub", "Neg", "Ceil", "Abs", "Mul", "Add", "Div",
            "Reciprocal", "Exp", "ReduceMax", "ReduceSum", "CumSum", "Unsqueeze", "MatMul",
            "Reshape", "Pad", "Cast", "Shape", "ConstantOfShape", "Softmax", "Slice", "ArgMax",
            "Gather"}
NOT_PORTABLE = {"Less", "Greater", "GreaterOrEqual", "LessOrEqual", "Equal", "Not", "Log"}


def _edges(p_values, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (p, u): u = p, one ulp below and above p, 0 and the largest value below 1."""
    dtype = np.dtype(dtype)
    below_one = np.nextafter(dtype.type(1), dtype.type(0))
    ps, us = [], []
    for p in np.asarray(p_values, dtype):
        for u in (p, np.nextafter(p, dtype.type(0)), np.nextafter(p, dtype.type(1)),
                  dtype.type(0), below_one, dtype.type(0.5)):
            if 0 <= u < 1:
                ps.append(p)
                us.append(u)
    return np.array(ps, dtype), np.array(us, dtype)


# p outside [0, 1] is not a probability, but must still draw 0 or 1 as u < p did
EDGE_P = [0.0, 1.0, 0.5, 0.3, 1e-7, 0.9999999, 2.0**-126, 0.25, -0.5, 1.5, 3.0]


def _old_bernoulli(p_type: int, noise_type: int, draw_type: int) -> onnx.ModelProto:
    """The form before: Cast(u < Cast(p))."""
    nodes = []
    p = "p"
    if p_type != noise_type:
        nodes.append(helper.make_node("Cast", ["p"], ["p_wide"], to=noise_type))
        p = "p_wide"
    nodes += [helper.make_node("Less", ["u", p], ["hit"]),
              helper.make_node("Cast", ["hit"], ["y"], to=draw_type)]
    graph = helper.make_graph(nodes, "old", [
        helper.make_tensor_value_info("p", p_type, [None]),
        helper.make_tensor_value_info("u", noise_type, [None])],
        [helper.make_tensor_value_info("y", draw_type, [None])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], ir_version=8)


def _new_bernoulli(p_type: int, draw_type: int) -> onnx.ModelProto:
    node = helper.make_node("Bernoulli", ["p"], ["y"], dtype=draw_type)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("p", p_type, [None])],
                              [helper.make_tensor_value_info("y", draw_type, [None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], ir_version=8)
    new, _ = onnxfix.rewrite(model, check=False)
    full_check(new)
    return new


CASES = [(TensorProto.FLOAT, TensorProto.FLOAT), (TensorProto.DOUBLE, TensorProto.DOUBLE),
         (TensorProto.FLOAT16, TensorProto.FLOAT16), (TensorProto.FLOAT, TensorProto.BOOL),
         (TensorProto.FLOAT, TensorProto.INT64), (TensorProto.FLOAT16, TensorProto.INT32),
         (TensorProto.DOUBLE, TensorProto.FLOAT)]


@pytest.mark.parametrize("p_type,draw_type", CASES)
def test_bernoulli_ceil_form_equals_the_compare_form_bit_for_bit(p_type, draw_type):
    new = _new_bernoulli(p_type, draw_type)
    ops = [n.op_type for n in new.graph.node]
    core = [op for op in ops if op not in ("Constant", "Cast")]
    # Abs turns Ceil's -0.0 into +0.0 where the draw is a float
    assert core == ["Clip", "Sub", "Ceil", "Abs"] if draw_type in (
        TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16) else ["Clip", "Sub", "Ceil"]
    # a Cast only where a dtype asks for one: float16 p up, the draw to a non-noise dtype
    noise_type = TensorProto.DOUBLE if p_type == TensorProto.DOUBLE else TensorProto.FLOAT
    assert ops.count("Cast") == (p_type != noise_type) + (draw_type != noise_type)
    np_noise = helper.tensor_dtype_to_np_dtype(noise_type)
    p, u = _edges(EDGE_P, np_noise)
    p = p.astype(helper.tensor_dtype_to_np_dtype(p_type))
    old = run(_old_bernoulli(p_type, noise_type, draw_type), {"p": p, "u": u})["y"]
    got = run(new, {"p": p, "noise_y": u})["y"]
    assert got.dtype == old.dtype
    assert got.tobytes() == old.tobytes()  # +0.0, never -0.0, where the draw is 0
    assert old.astype(bool).any() and not old.astype(bool).all()


def _dropout_model(opset: int, data_type: int, ratio: float | None, mask: bool):
    inputs = [helper.make_tensor_value_info("x", data_type, [None])]
    outputs = [helper.make_tensor_value_info("y", data_type, [None])]
    if mask:
        outputs.append(helper.make_tensor_value_info("m", TensorProto.BOOL, [None]))
    names = ["x"]
    nodes = []
    if ratio is not None:
        nodes += [helper.make_node("Constant", [], ["r"], value=helper.make_tensor(
                      "r", data_type, [], [ratio])),
                  helper.make_node("Constant", [], ["t"], value=helper.make_tensor(
                      "t", TensorProto.BOOL, [], [True]))]
        names += ["r", "t"]
    nodes.append(helper.make_node("Dropout", names, ["y", "m"] if mask else ["y"]))
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=8)


def _old_keep(x, u, ratio, data_type):
    """The form before: mask = u >= ratio; y = x * (1 / (1 - ratio)) * Cast(mask)."""
    noise_type = TensorProto.FLOAT if data_type == TensorProto.FLOAT16 else data_type
    np_noise = helper.tensor_dtype_to_np_dtype(noise_type)
    scale = helper.make_node("Reciprocal", ["keep_prob"], ["scale_w"])
    held = float(np.asarray(ratio, helper.tensor_dtype_to_np_dtype(data_type)))  # as the model
    nodes = [helper.make_node("Constant", [], ["r"], value=helper.make_tensor(
                 "r", noise_type, [], [held])),
             helper.make_node("Constant", [], ["one"], value=helper.make_tensor(
                 "one", noise_type, [], [1.0])),
             helper.make_node("GreaterOrEqual", ["u", "r"], ["m"]),
             helper.make_node("Sub", ["one", "r"], ["keep_prob"]), scale,
             helper.make_node("Cast", ["scale_w"], ["scale"], to=data_type),
             helper.make_node("Mul", ["x", "scale"], ["scaled"]),
             helper.make_node("Cast", ["m"], ["mf"], to=data_type),
             helper.make_node("Mul", ["scaled", "mf"], ["y"])]
    graph = helper.make_graph(nodes, "old", [
        helper.make_tensor_value_info("x", data_type, [None]),
        helper.make_tensor_value_info("u", noise_type, [None])],
        [helper.make_tensor_value_info("y", data_type, [None]),
         helper.make_tensor_value_info("m", TensorProto.BOOL, [None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], ir_version=8)
    return run(model, {"x": x, "u": u.astype(np_noise)})


@pytest.mark.parametrize("data_type", [TensorProto.FLOAT, TensorProto.FLOAT16,
                                       TensorProto.DOUBLE])
@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.1, 0.3])
def test_dropout_keep_mask_form_equals_the_compare_form_bit_for_bit(data_type, ratio):
    new, _ = onnxfix.rewrite(_dropout_model(15, data_type, ratio, mask=True), check=False)
    full_check(new)
    ops = [n.op_type for n in new.graph.node]
    assert not set(ops) & NOT_PORTABLE
    # casts: the mask to bool; for float16 data also the ratio up, the scale and keep-mask down
    assert ops.count("Cast") == (4 if data_type == TensorProto.FLOAT16 else 1)
    noise_np = np.float64 if data_type == TensorProto.DOUBLE else np.float32
    ratio_np = np.asarray(ratio, noise_np)
    _, u = _edges([ratio_np, 0.0, 0.7], noise_np)
    x = np.linspace(-3, 3, u.size).astype(helper.tensor_dtype_to_np_dtype(data_type))
    got = run(new, {"x": x, "noise_y": u})
    old = _old_keep(x, u, ratio, data_type)
    assert got["y"].tobytes() == old["y"].tobytes()
    np.testing.assert_array_equal(got["m"], old["m"])
    if ratio == 0:
        assert got["m"].all()
    else:
        assert got["m"].any() and not got["m"].all()


def test_dropout_without_a_mask_output_adds_no_cast_and_no_compare():
    new, _ = onnxfix.rewrite(_dropout_model(13, TensorProto.FLOAT, 0.25, mask=False),
                             check=False)
    ops = [n.op_type for n in new.graph.node]
    assert "Cast" not in ops and not set(ops) & NOT_PORTABLE


def test_opset_6_dropout_mask_keeps_the_data_type():
    model = parse("""
    <ir_version: 3, opset_import: ["" : 6]>
    g (float[2,4] x) => (float[2,4] y, float[2,4] m) {
      y, m = Dropout<is_test=0, ratio=0.5>(x)
    }""")
    new, _ = onnxfix.rewrite(model, check=False)
    onnx.checker.check_model(new, full_check=True)
    ops = [n.op_type for n in new.graph.node]
    assert "Cast" not in ops and not set(ops) & NOT_PORTABLE
    inferred = onnx.shape_inference.infer_shapes(new, strict_mode=True)
    assert inferred.graph.output[1].type.tensor_type.elem_type == TensorProto.FLOAT


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.onnx")), ids=lambda p: p.stem)
def test_every_fixture_rewrite_adds_only_portable_ops(path):
    model = onnx.load(path)
    before = {n.op_type for n in model.graph.node}
    new, _ = onnxfix.rewrite(model, check=False)
    added = {n.op_type for n in new.graph.node} - before
    assert added <= PORTABLE, added - PORTABLE


# -- Multinomial by inverse CDF ------------------------------------------------------------

def _multinomial(opset: int, classes: int | str, samples: int) -> onnx.ModelProto:
    node = helper.make_node("Multinomial", ["logits"], ["y"], sample_size=samples,
                            dtype=TensorProto.INT64)
    graph = helper.make_graph(
        [node], "head", [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                       ["batch", classes])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, ["batch", samples])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=7)


@pytest.mark.parametrize("classes", [129, 130, 169, 1000])
def test_multinomial_before_opset_11_equals_the_cumsum_form(classes):
    # opset 10 has no CumSum: above 128 classes a two-level MatMul prefix sum stands in
    # (memory O(classes))
    old, _ = onnxfix.rewrite(_multinomial(10, classes, 64), check=False)
    new, _ = onnxfix.rewrite(_multinomial(11, classes, 64), check=False)
    full_check(old)
    assert "CumSum" not in [n.op_type for n in old.graph.node]
    largest = max(onnx.numpy_helper.to_array(n.attribute[0].t).size
                  for n in old.graph.node if n.op_type == "Constant")
    assert largest <= 2 * classes + 4 * int(np.sqrt(classes)) + 4  # no classes x classes
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((3, classes)) * 2).astype(np.float32)
    u = rng.random((3, 64)).astype(np.float32)
    a = run(old, {"logits": logits, "noise_y": u})["y"]
    b = run(new, {"logits": logits, "noise_y": u})["y"]
    np.testing.assert_array_equal(a, b)  # the sums may round apart; not on these logits
    assert a.max() < classes and a.min() >= 0


def _cumsum_form(classes: int, samples: int, elem: int) -> onnx.ModelProto:
    """The form the rewrite emitted for every class count before (CumSum, Slice, Div...)."""
    ints = {n: onnx.numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (
        ("axis", 1), ("last", [-1]), ("end", [2**62]), ("one", [1]), ("two", [2]))}
    nodes = [helper.make_node("Softmax", ["logits"], ["p"], axis=1),
             helper.make_node("CumSum", ["p", "axis"], ["c"], exclusive=0, reverse=0),
             helper.make_node("Slice", ["c", "last", "end", "one"], ["t"]),
             helper.make_node("Div", ["c", "t"], ["cdf"]),
             helper.make_node("Unsqueeze", ["cdf", "one"], ["cdf3"]),
             helper.make_node("Unsqueeze", ["u", "two"], ["u3"]),
             helper.make_node("Sub", ["cdf3", "u3"], ["d"]),
             helper.make_node("Ceil", ["d"], ["above"]),
             helper.make_node("ArgMax", ["above"], ["y"], axis=2, keepdims=0)]
    graph = helper.make_graph(
        nodes, "old", [helper.make_tensor_value_info("logits", elem, [None, classes]),
                       helper.make_tensor_value_info("u", elem, [None, samples])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [None, samples])],
        initializer=list(ints.values()))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("elem", [TensorProto.FLOAT, TensorProto.DOUBLE])
@pytest.mark.parametrize("classes", [1, 2, 5, 33, 127, 128])
def test_multinomial_up_to_128_classes_is_one_matmul_bit_equal_to_the_cumsum_form(classes,
                                                                                  elem):
    # ncnn (through pnnx) has no CumSum and no Pad: a triangle of ones stands in, at any opset
    dtype = helper.tensor_dtype_to_np_dtype(elem).type
    rng = np.random.default_rng(classes)
    logits = (rng.standard_normal((4, classes)) * 3).astype(dtype)
    logits[1, : classes // 2] = -np.inf if classes > 1 else 0.0  # zero-probability classes
    # u at every cdf boundary of the old form's own cdf, one ulp either side, 0, below 1
    old = _cumsum_form(classes, 1, elem)
    old.graph.output.append(helper.make_tensor_value_info("cdf", elem, [None, classes]))
    cdf = run(old, {"logits": logits, "u": np.zeros((4, 1), dtype)})["cdf"]
    u = np.concatenate([cdf, np.nextafter(cdf, 0), np.nextafter(cdf, 1),
                        np.zeros((4, 1), dtype), np.full((4, 1), np.nextafter(dtype(1), 0))],
                       axis=1)
    u = np.clip(u, 0, np.nextafter(dtype(1), 0))
    samples = u.shape[1]
    model = _multinomial(17, classes, samples)
    model.graph.input[0].type.tensor_type.elem_type = elem
    for opset in (17, 10):
        model.opset_import[0].version = opset
        new, _ = onnxfix.rewrite(model, check=False)
        ops = [n.op_type for n in new.graph.node]
        assert "MatMul" in ops and "CumSum" not in ops and "Pad" not in ops, ops
        got = run(new, {"logits": logits, "noise_y": u})["y"]
        want = run(_cumsum_form(classes, samples, elem), {"logits": logits, "u": u})["y"]
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("classes", [5, 300])
def test_multinomial_total_is_a_gather_of_the_last_column_not_a_slice(classes):
    # onnx2tf sliced the wrong axis of Slice(cumsum, [-1], [2^62], axes=[1]) where inference
    # left the rank unknown (LiteRT, an SB3 categorical head); Gather(cumsum, [-1], axis=1)
    # picks the same element, bit-equal (the matmul and CumSum forms above compare values)
    new, _ = onnxfix.rewrite(_multinomial(17, classes, 4), check=False)
    gathers = [n for n in new.graph.node if n.op_type == "Gather"]
    assert "Slice" not in [n.op_type for n in new.graph.node]
    assert [(helper.get_attribute_value(n.attribute[0])) for n in gathers] == [1]
    full_check(new)


def test_multinomial_before_opset_11_with_dynamic_classes_is_refused_naming_the_fix():
    from onnxfix.errors import ModelError

    with pytest.raises(ModelError) as e:
        onnxfix.rewrite(_multinomial(10, "vocab", 4), check=False)
    assert str(e.value) == (
        "Multinomial 'y': opset 10 has no CumSum and the class count of input 'logits' is "
        "not static: fix it (dims=... / --dim) or convert the model to opset 11")
    new, _ = onnxfix.rewrite(_multinomial(10, "vocab", 4), check=False, dims={"vocab": 5})
    assert "MatMul" in [n.op_type for n in new.graph.node]


def test_multinomial_noise_is_one_uniform_per_sample_for_a_50k_vocabulary():
    new, report = onnxfix.rewrite(_multinomial(17, 50257, 8), check=False)
    shape = [d.dim_param or d.dim_value
             for d in new.graph.input[1].type.tensor_type.shape.dim]
    assert shape == ["batch", 8]
    assert report.nodes[0].distribution["noise"] == \
        "standard uniform U[0, 1) [batch, sample_size]"


def test_multinomial_standardize_gives_noise_that_reproduces_every_captured_sample():
    from onnxfix.ops import OP_TABLE, Inconsistent

    spec = OP_TABLE["Multinomial"]
    rng = np.random.default_rng(4)
    logits = (rng.standard_normal((4, 1000)) * 3).astype(np.float32)
    logits[0, 5] = -np.inf  # probability 0: never reproduced, never drawn
    model, _ = onnxfix.rewrite(_multinomial(17, 1000, 500), check=False)
    picks = run(model, {"logits": logits,
                        "noise_y": rng.random((4, 500)).astype(np.float32)})["y"]
    u = spec.standardize({0: picks}, {}, {0: logits}, np.float32)
    assert u.dtype == np.float32 and u.min() >= 0 and u.max() < 1
    np.testing.assert_array_equal(run(model, {"logits": logits, "noise_y": u})["y"], picks)
    impossible = picks.copy()
    impossible[0, 0] = 5
    with pytest.raises(Inconsistent):
        spec.standardize({0: impossible}, {}, {0: logits}, np.float32)


def test_multinomial_never_draws_past_the_last_class_or_a_zero_probability_class():
    model, _ = onnxfix.rewrite(_multinomial(17, 4, 6), check=False)
    logits = np.array([[-np.inf, 0.0, -np.inf, -np.inf],
                       [0.0, 0.0, 0.0, -np.inf]], np.float32)
    u = np.array([[0.0, 0.5, 0.99999994, 0.25, 1e-30, 0.75],
                  [0.0, 0.3333333, 0.33333334, 0.6666666, 0.6666667, 0.99999994]], np.float32)
    y = run(model, {"logits": logits, "noise_y": u})["y"]
    assert (y[0] == 1).all()
    assert y[1].max() == 2 and y[1, 0] == 0
