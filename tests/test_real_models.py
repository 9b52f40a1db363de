"""Real third-party models from ../shared/real-models (skipped when that folder is absent)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import expose, full_check, input_dims, op_types, random_nodes, real_model_path, run

import onnxfix


def _ballhard() -> onnx.ModelProto:
    return onnx.load(real_model_path("mlagents_3DBallHard.onnx"))


def _two_draw_ballhard() -> onnx.ModelProto:
    """3DBallHard with its RandomNormalLike duplicated onto a second, identical chain."""
    model = _ballhard()
    g = model.graph
    rnd = next(n for n in g.node if n.op_type == "RandomNormalLike")
    twin = onnx.NodeProto()
    twin.CopyFrom(rnd)
    twin.name, twin.output[0] = rnd.name + "_twin", rnd.output[0] + "_twin"
    consumers = [n for n in g.node if rnd.output[0] in n.input]
    extra = [twin]
    for c in consumers:  # clone the chain from the draw down to action2
        dup = onnx.NodeProto()
        dup.CopyFrom(c)
        dup.name = c.name + "_twin"
        dup.input[:] = [i + "_twin" if i == rnd.output[0] else i for i in c.input]
        dup.output[0] = "action2_pre"
        extra.append(dup)
    extra.append(onnx.helper.make_node("Add", ["55", "action2_pre"], ["action2"], name="twin_add"))
    g.node.extend(extra)
    g.output.append(onnx.helper.make_tensor_value_info("action2", onnx.TensorProto.FLOAT,
                                                       ["batch", 2]))
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("mode", ["input-noise", "constant"])
def test_3dballhard_rewrites_and_keeps_opset(mode):
    model = _ballhard()
    dims = {"batch": 3} if mode == "constant" else {}
    new, report = onnxfix.rewrite(model, mode, dims=dims)
    full_check(new)
    assert new.ir_version == 6 and new.opset_import[0].version == 9
    assert random_nodes(new) == []
    assert report.parity.status == "passed"
    assert all(c.max_abs_err == 0.0 for c in report.parity.outputs)
    if mode == "input-noise":
        assert input_dims(new, report.nodes[0].replacement.name) == ["batch", 2]
        assert report.parity.sizes == [{"batch": 2}, {"batch": 3}]


def test_two_identical_draws_stay_two_independent_noise_inputs():
    model = _two_draw_ballhard()
    assert len(random_nodes(model)) == 2
    new, report = onnxfix.rewrite(model, "input-noise")
    full_check(new)
    names = [r.replacement.name for r in report.nodes]
    assert len(set(names)) == 2
    assert report.parity.status == "passed"
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((4, 45)).astype(np.float32)
    same = rng.standard_normal((4, 2)).astype(np.float32)
    a = run(new, {"vector_observation": obs, names[0]: same, names[1]: same})
    b = run(new, {"vector_observation": obs, names[0]: same, names[1]: -same})
    # The second noise input drives only the twin chain; the first chain ignores it.
    np.testing.assert_array_equal(a["continuous_actions"], b["continuous_actions"])
    assert not np.allclose(a["action2"], b["action2"])


def test_migraphx_float16_mean_10_scale_1_5_exact():
    path = real_model_path("migraphx_randomnormallike_test.onnx")
    model = onnx.load(path)
    new, report = onnxfix.rewrite(path, "input-noise")
    full_check(new)
    assert report.nodes[0].distribution["mean"] == 10.0
    assert report.nodes[0].distribution["scale"] == 1.5
    assert report.nodes[0].replacement.dtype == "float16"
    assert op_types(new) == ["Constant", "Mul", "Constant", "Add"]
    assert all(c.max_abs_err == 0.0 for c in report.parity.outputs)
    # independent: feed the original's own draw back, standardized in float64
    x = np.zeros((2, 3, 4), np.float16)
    draw = run(expose(model, []), {"input": x})["output"]
    eps = ((draw.astype(np.float64) - 10.0) / 1.5).astype(np.float16)
    got = run(new, {"input": x, report.nodes[0].replacement.name: eps})["output"]
    np.testing.assert_allclose(got.astype(np.float32), draw.astype(np.float32), atol=8e-3)
    const, rep = onnxfix.rewrite(path, "constant")
    value = onnx.numpy_helper.to_array(const.graph.initializer[0])
    assert value.dtype == np.float16 and rep.parity.status == "passed"


@pytest.mark.parametrize("mode", ["input-noise", "constant"])
def test_migraphx_random_uniform_double_without_graph_inputs(mode):
    path = real_model_path("migraphx_randomuniform_test.onnx")
    new, report = onnxfix.rewrite(path, mode)
    full_check(new)
    assert report.nodes[0].replacement.dtype == "double"
    assert report.parity.status == "passed"
    if mode == "input-noise":
        u = np.full((2, 3, 4), 0.25)
        got = run(new, {report.nodes[0].replacement.name: u})["output"]
        np.testing.assert_array_equal(got, u)  # low=0, high=1: the noise is the draw


REAL = ["migraphx_multinomial_autoseed_dyn_test.onnx", "migraphx_randomnormallike_test.onnx",
        "migraphx_randomuniform_test.onnx", "mlagents_3DBallHard.onnx",
        "mlagents_BigWallJump.onnx", "mlagents_hybrid0vis8vec_2c_2_3d_v2_0.onnx",
        "onnx_test_bernoulli_seed_expanded_op15.onnx", "onnx_test_bernoulli_seed_op15.onnx"]


def _dims_for(model: onnx.ModelProto) -> dict:
    names = {d.dim_param for i in model.graph.input for d in i.type.tensor_type.shape.dim
             if d.dim_param}
    dims = {n: 3 for n in names}
    if any(not d.dim_param and not d.HasField("dim_value")
           for i in model.graph.input for d in i.type.tensor_type.shape.dim):
        dims.update({f"{i.name}_dim{k}": 3 for i in model.graph.input
                     for k, d in enumerate(i.type.tensor_type.shape.dim)
                     if not d.dim_param and not d.HasField("dim_value")})
    return dims


@pytest.mark.parametrize("mode", ["input-noise", "constant", "deterministic"])
@pytest.mark.parametrize("name", REAL)
def test_every_real_model_rewrites_passes_parity_and_runs(name, mode):
    path = real_model_path(name)
    model = onnx.load(path)
    dims = _dims_for(model) if mode == "constant" else {}
    new, report = onnxfix.rewrite(path, mode, dims=dims)
    assert random_nodes(new) == []
    assert report.parity.status == "passed", report.parity.reason
    assert new.ir_version == model.ir_version
    assert list(new.opset_import) == list(model.opset_import)
    if mode == "input-noise":
        feeds = onnxfix.noise_feeds(new, dims={d: 2 for d in _dims_for(new)}, seed=0)
        assert sorted(feeds) == sorted(report.new_inputs)
    rng = np.random.default_rng(0)
    data = {}
    for i in new.graph.input:
        if i.name in report.new_inputs:
            continue
        t = i.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else 2 for d in t.shape.dim]
        data[i.name] = rng.random(shape).astype(onnx.helper.tensor_dtype_to_np_dtype(
            t.elem_type))
    if mode == "input-noise":
        data.update(feeds)
    first, second = run(new, data), run(new, data)
    for k in first:
        np.testing.assert_array_equal(first[k], second[k])


def test_float16_noise_on_a_multinomial_policy_is_refused(tmp_path):
    # float16 uniforms are too coarse for an inverse CDF over many classes (float32 is faithful)
    out = tmp_path / "fp16.onnx"
    with pytest.raises(onnxfix.UsageError, match=r"^Multinomial '[^']+': noise_dtype="
                                                 r"\"float16\" cannot represent its noise"):
        onnxfix.rewrite(real_model_path("mlagents_BigWallJump.onnx"), noise_dtype="float16",
                        output=out, load_weights=False)
    assert not out.exists()


def test_float16_noise_on_real_models_checks_the_graph_fed_its_own_draws(tmp_path):
    # The check cuts the random nodes out of the original (onnx-graphsurgeon) while the
    # weights stay external references into the input file. Its Multinomials stay random:
    # float16 noise is refused for them.
    out = tmp_path / "fp16.onnx"
    _, report = onnxfix.rewrite(real_model_path("mlagents_hybrid0vis8vec_2c_2_3d_v2_0.onnx"),
                                noise_dtype="float16", output=out, load_weights=False,
                                exclude=["Multinomial*"])
    assert report.parity.status == "passed", report.parity.reason
    assert [(d.op_type, d.against, d.passed) for d in report.parity.distributions] == [
        ("RandomNormalLike", "ideal", True), ("RandomNormalLike", "original", True)]
    narrowed = [c for c in report.parity.outputs if c.name.endswith("(narrowed noise)")]
    assert narrowed and all(c.passed for c in narrowed)
    model = onnx.load(out)
    assert {i.type.tensor_type.elem_type for i in model.graph.input
            if i.name in report.new_inputs} == {onnx.TensorProto.FLOAT16}
