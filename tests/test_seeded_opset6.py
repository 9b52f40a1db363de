"""Seeded mode at opset 6 (issue 13): the generator is built from ops and attributes valid at
opset 6 (legacy broadcasting, no Cos), and checked on copies converted to opset 7, since
onnxruntime runs no opset-6 Mul; the verdict is a skip saying what was verified."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnx.version_converter
import pytest
from conftest import FIXTURES, expose, run
from onnx import TensorProto, helper

import onnxfix
from onnxfix.check.compare import CheckSkipped
from onnxfix.check.opset_bridge import to_bridge_opset
from onnxfix.errors import ModelError
from onnxfix.graph.builder import NodeBuilder
from onnxfix.graph.naming import NameAllocator
from onnxfix.seeded import algorithm as alg
from onnxfix.seeded import seeded_normal, seeded_uniform
from onnxfix.seeded.cosine import reference as cosine_reference
from onnxfix.seeded.metadata import seed_metadata

DROPOUT_6 = ("the original model does not load in onnxruntime: [ONNXRuntimeError] : 9 : "
             "NOT_IMPLEMENTED : Could not find an implementation for Dropout(6) node with "
             "name ''")
MUL_6 = ("onnxruntime has no kernel for Mul-6 (node 'onnxfix_d_mul_1', valid at the model's "
         "opset), so the rewritten model cannot run in it; check it on the target runtime")


def _reason(comparisons: int, twin: str) -> str:
    return (f"verified only on copies converted to opset 7: the seeded model equals its "
            f"input-noise twin fed the generator's reference noise ({comparisons} comparisons "
            f"passed); not verified: the models at their own opset 6, which onnxruntime cannot "
            f"run, and the input-noise twin against the original ({twin})")


# fixture -> (its outputs, the twin's own skip reason)
OPSET6 = {"old_random_normal_op6": (["y"], MUL_6),
          "old_dropout_op6_mask": (["y"], DROPOUT_6),
          "dropout_opset6_is_test0": (["y", "mask"], DROPOUT_6)}
LEGACY_BROADCAST_OPS = ("Add", "Sub", "Mul", "Div")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxfix", *args], capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("name", sorted(OPSET6))
def test_opset6_fixture_rewrites_seeded_and_skips_naming_what_was_verified(name, tmp_path):
    out = tmp_path / "seeded.onnx"
    done = _cli("rewrite", str(FIXTURES / "edge" / f"{name}.onnx"), str(out), "--mode", "seeded")
    assert done.returncode == 0, done.stderr
    outputs, twin = OPSET6[name]
    reason = _reason(2 * len(outputs), twin)
    lines = done.stdout.splitlines()
    assert f"SKIPPED | {reason}" in lines
    assert f"Parity: SKIPPED ({reason})" in lines
    compared = [line for line in lines if line.startswith("PASSED | ")]
    assert [line.split("'")[1] for line in compared] == \
        [f"{o} (seed {s})" for s in (0, 1) for o in outputs]
    assert all(line.endswith(" | on copies converted to opset 7") for line in compared)
    assert done.stderr == ("onnxfix: warning: parity check skipped: the output was written but "
                           "not verified (--fail-on-skip makes a skip fail)\n")
    assert onnx.load(out).opset_import[0].version == 6


def test_fail_on_skip_still_fails_an_opset6_seeded_rewrite(tmp_path):
    out = tmp_path / "seeded.onnx"
    done = _cli("rewrite", str(FIXTURES / "edge" / "old_dropout_op6_mask.onnx"), str(out),
                "--mode", "seeded", "--fail-on-skip")
    assert done.returncode == 1
    assert _reason(2, DROPOUT_6) in done.stderr
    assert not out.exists()


@pytest.mark.parametrize("name", sorted(OPSET6))
def test_opset6_comparison_numbers(name):
    """Uniform-based draws (the Dropout mask) are bit-identical; the normal's Log and Sqrt
    round as onnxruntime's do (its cosine is exact, see below), times the node's scale 2."""
    new, report = onnxfix.rewrite(str(FIXTURES / "edge" / f"{name}.onnx"), "seeded")
    outputs, twin = OPSET6[name]
    assert (report.parity.status, report.parity.reason) == ("skipped",
                                                            _reason(2 * len(outputs), twin))
    checks = report.parity.outputs
    assert [c.name for c in checks] == [f"{o} (seed {s})" for s in (0, 1) for o in outputs]
    assert all(c.passed and c.note == "on copies converted to opset 7" for c in checks)
    worst = max(c.max_abs_err for c in checks)
    if name == "old_random_normal_op6":
        assert 0 < worst <= 2 * 4.8e-7
    else:
        assert worst == 0


@pytest.mark.parametrize("name", sorted(OPSET6))
def test_opset6_seeded_output_uses_only_forms_valid_at_opset_6(name):
    """The onnx checker accepts the output at its own opset 6; and since it does not check
    legacy broadcasting (Add-6 types its output from A alone), every Add/Sub/Mul/Div is
    checked here on the shapes onnxruntime computes (on the opset-7 copy): the output has
    A's shape, and B is A's shape, or with broadcast=1 one element or a suffix of A's."""
    new, _ = onnxfix.rewrite(str(FIXTURES / "edge" / f"{name}.onnx"), "seeded", check=False)
    assert [(o.domain, o.version) for o in new.opset_import] == [("", 6)]
    onnx.checker.check_model(new, full_check=True)
    converted = onnx.version_converter.convert_version(new, 7)
    binary = [n for n in new.graph.node if n.op_type in LEGACY_BROADCAST_OPS]
    names = sorted({t for n in binary for t in [*n.input, n.output[0]]} -
                   {i.name for i in converted.graph.input})
    feeds = {i.name: np.ones([d.dim_value for d in i.type.tensor_type.shape.dim], np.float32)
             for i in converted.graph.input if i.name != "seed"}
    feeds["seed"] = np.array(3, dtype=np.int64)
    got = run(expose(converted, names), feeds)
    shape = {n: list(np.shape(v)) for n, v in {**got, **feeds}.items()}
    assert len(binary) > 100
    for node in binary:
        a, b, y = (shape[t] for t in [*node.input, node.output[0]])
        broadcast = any(x.name == "broadcast" and x.i == 1 for x in node.attribute)
        legal = b == a or broadcast and len(b) <= len(a) and (
            int(np.prod(b)) == 1 or a[len(a) - len(b):] == b)
        assert legal and y == a, (node.name, a, b, y)


def _normal_model(opset: int, shape: list[int]) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("RandomNormal", [], ["d"], shape=shape),
         helper.make_node("Relu", ["d"], ["y"])], "g", [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=3)


def test_opset6_float32_normal_takes_the_polynomial_cosine_and_noise_feeds_reproduces_it():
    """No Cos before opset 7: the float32 normal's cosine is the float64 polynomial rounded to
    float32, bit for bit as `algorithm.normal(..., opset=6)` makes it, so the draws are within
    Log and Sqrt rounding (4.8e-7) of that reference, which `noise_feeds` uses for an opset-6
    input-noise model; the opset-7 reference (np.cos of a float32 angle) is 1.4e-6 away."""
    shape = [200, 1000]
    original = _normal_model(6, shape)
    seeded, _ = onnxfix.rewrite(original, "seeded", check=False)
    assert "Cos" not in {n.op_type for n in seeded.graph.node}
    (draw,) = seed_metadata(seeded)["draws"]
    # the cosine and its angle's two 12-bit words (cast to float64), as the graph names them
    words, cos = ["onnxfix_d_cos_high", "onnxfix_d_cos_low"], "onnxfix_d_cos_float"
    converted = onnx.version_converter.convert_version(seeded, 7)
    got = run(expose(converted, [draw["noise"], cos, *words]),
              {"seed": np.array(11, dtype=np.int64)})
    turns = (got[words[0]] * alg.WORD + got[words[1]]).astype(np.int64)
    np.testing.assert_array_equal(got[cos], cosine_reference(turns).astype(np.float32))
    noisy, _ = onnxfix.rewrite(original, "input-noise", check=False)
    (fed,) = onnxfix.noise_feeds(noisy, seed=11, generator="seeded").values()
    assert np.abs(got[draw["noise"]] - fed).max() <= 4.8e-7
    at_opset7 = alg.normal(11, draw["key"], shape)
    assert np.abs(got[draw["noise"]] - at_opset7).max() > 1e-6


def _two_dropouts() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Dropout", ["x"], ["y"], name="first", is_test=0, ratio=0.5),
         helper.make_node("Dropout", ["x"], ["z"], name="second", is_test=0, ratio=0.5)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, [2, 3]) for o in ("y", "z")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)], ir_version=3)


def test_a_training_dropout_left_in_place_is_not_converted_to_opset_7():
    """Dropout-7 has no is_test: converting the Dropout left in place (--exclude) would turn
    a training Dropout into an inference one, so the comparison is not run at all (`y`
    would be compared: only `z` depends on the Dropout left in place)."""
    _, report = onnxfix.rewrite(_two_dropouts(), "seeded", exclude=["z"])
    assert [(r.output, r.status) for r in report.nodes] == [("y", "rewritten"), ("z", "kept")]
    assert (report.parity.status, report.parity.outputs) == ("skipped", [])
    assert report.parity.reason == (
        "the seeded model holds Dropout (node 'second'), whose opset-7 form means something "
        "else (onnx.version_converter would change it), so it is not converted to opset 7 to "
        "run in onnxruntime")


def _add(a_shape: list[int], b_shape: list[int], **attrs) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"], name="add", **attrs)], "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, a_shape),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, b_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)], ir_version=3)


@pytest.mark.parametrize("a_shape, b_shape, attrs", [
    ([2, 3], [2, 3], {}), ([2, 3], [], {"broadcast": 1}), ([2, 3], [3], {"broadcast": 1}),
    ([2, 3], [1, 1], {"broadcast": 1}), ([3, 3], [3], {"broadcast": 1, "axis": 0}),
    ([2, 3, 4], [3, 4], {"broadcast": 1, "axis": 1})])
def test_legacy_broadcasting_converts_where_numpy_computes_the_same(a_shape, b_shape, attrs):
    """With `axis`, B's dims line up with A's from that axis on (the converter unsqueezes B
    where numpy would align it elsewhere)."""
    converted = to_bridge_opset(_add(a_shape, b_shape, **attrs), "the model")
    rng = np.random.default_rng(0)
    a = rng.standard_normal(a_shape).astype(np.float32)
    b = rng.standard_normal(b_shape).astype(np.float32)
    after = len(a_shape) - attrs["axis"] - len(b_shape) if "axis" in attrs else 0
    legacy = b.reshape(b.shape + (1,) * after)
    np.testing.assert_array_equal(run(converted, {"a": a, "b": b})["y"], a + legacy)


@pytest.mark.parametrize("a_shape, b_shape, attrs, why", [
    ([2, 3], [2, 1], {"broadcast": 1}, "broadcasts shape [2, 1] onto [2, 3], which legacy "
                                       "broadcasting (broadcast=1) does not allow"),
    ([2, 3], [3], {}, "has operands of shapes [2, 3] and [3] without broadcast=1")])
def test_legacy_broadcasting_that_numpy_would_read_otherwise_is_refused(a_shape, b_shape, attrs,
                                                                       why):
    """numpy would broadcast these at opset 7 (and onnx.version_converter converts them),
    but opset 6 did not: a silently different model, so no comparison runs on it."""
    with pytest.raises(CheckSkipped) as err:
        to_bridge_opset(_add(a_shape, b_shape, **attrs), "the model")
    assert str(err.value) == (f"the model: Add (node 'add') {why}, so its opset-7 copy may "
                              f"compute something else; not converted")


@pytest.mark.parametrize("a_shape, b_shape", [([], [2, 3]), (["n", 3], [3])])
def test_what_the_converter_refuses_is_a_skip(a_shape, b_shape):
    """A scalar A with a tensor B (only B was stretched before opset 7) and symbolic dims
    (the converter's broadcasting adapter needs numbers) are refused by the converter."""
    with pytest.raises(CheckSkipped) as err:
        to_bridge_opset(_add(a_shape, b_shape, broadcast=1), "the model")
    assert str(err.value).startswith("onnx.version_converter cannot convert the model from "
                                     "opset 6 to 7: ")


def _generator_model(draw, dtype: int, shape: list[int]) -> onnx.ModelProto:
    """A model at opset 6 whose output `y` is one seeded draw, driven by `seed` and the Loop
    iteration number `iteration`."""
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, []) for n in ("seed",
                                                                              "iteration")]
    graph = helper.make_graph([], "g", inputs, [helper.make_tensor_value_info("y", dtype, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)], ir_version=3)
    b = NodeBuilder(NameAllocator(model), 6, "seeded")
    draw(b, "seed", KEY, shape, "iteration", dtype, output="y")
    model.graph.node.extend(b.nodes)
    onnx.checker.check_model(model, full_check=True)
    return model


KEY = alg.node_key("opset6")


@pytest.mark.parametrize("draw, dtype, atol", [
    (seeded_uniform, TensorProto.FLOAT, 0), (seeded_uniform, TensorProto.DOUBLE, 0),
    (seeded_normal, TensorProto.FLOAT, 4.8e-7), (seeded_normal, TensorProto.DOUBLE, 4e-15)])
def test_opset6_generator_equals_the_reference(draw, dtype, atol):
    """Uniforms bit for bit, normals within Log/Sqrt rounding, on 4,200 elements (the
    counter's middle word too) of iteration 4099 (the iteration's high word too)."""
    shape = [3, 1400]
    converted = to_bridge_opset(_generator_model(draw, dtype, shape), "the generator")
    family = "uniform" if draw is seeded_uniform else "normal"
    np_type = np.float32 if dtype == TensorProto.FLOAT else np.float64
    for seed in (0, 2026):
        got = run(converted, {"seed": np.array(seed), "iteration": np.array(4099)})["y"]
        want = alg.family_draw(family, 6)(seed, KEY, shape, np_type, iteration=4099)
        assert got.dtype == np_type and np.abs(got - want).max() <= atol


def test_opset5_is_refused_by_the_generator():
    with pytest.raises(ModelError) as err:
        onnxfix.rewrite(_normal_model(5, [2, 3]), "seeded")
    assert str(err.value) == ("RandomNormal -> 'd' (main): the seeded generator needs opset 6 "
                              "or later (integer Add, Sub, Mul and Div); the model uses opset 5: "
                              "use mode='input-noise'")


def test_opset6_draw_of_runtime_shape_is_refused_until_its_dims_are_fixed():
    """Before opset 9 there is no NonZero or Range to count a runtime shape with."""
    graph = helper.make_graph(
        [helper.make_node("RandomUniformLike", ["x"], ["u"]),
         helper.make_node("Add", ["x", "u"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)], ir_version=3)
    with pytest.raises(ModelError) as err:
        onnxfix.rewrite(model, "seeded")
    assert str(err.value) == ("RandomUniformLike -> 'u' (main): a seeded draw of runtime shape "
                              "needs opset 9 or later (NonZero; Range from 11), the model uses "
                              "opset 6: use mode='input-noise', or fix the shape with dims")
    _, report = onnxfix.rewrite(model, "seeded", dims={"batch": 2})
    assert report.parity.status == "skipped"
    assert [(c.name, c.max_abs_err) for c in report.parity.outputs] == [("y (seed 0)", 0.0),
                                                                       ("y (seed 1)", 0.0)]


def test_where_the_twin_runs_at_opset_6_only_the_seeded_model_is_left_unverified():
    """A plain RandomUniform becomes an Identity of the noise in input-noise mode, which
    onnxruntime runs at opset 6: that twin is checked against the original as usual."""
    graph = helper.make_graph([helper.make_node("RandomUniform", [], ["y"], shape=[2, 3])], "g",
                              [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)], ir_version=3)
    _, report = onnxfix.rewrite(model, "seeded")
    assert [(c.name, c.note) for c in report.parity.outputs] == [
        ("y", ""), ("y (seed 0)", "on copies converted to opset 7"),
        ("y (seed 1)", "on copies converted to opset 7")]
    assert report.parity.reason == (
        "verified only on copies converted to opset 7: the seeded model equals its input-noise "
        "twin fed the generator's reference noise (2 comparisons passed); not verified: the "
        "seeded model at its own opset 6, which onnxruntime cannot run")
