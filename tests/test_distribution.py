"""Sampling faithfulness: transforms in >= float32, refused noise dtypes, the shared sampler,
and the distribution test inside the parity check.

The statistics are seeded (noise from `noise_feeds(seed=...)`), and every threshold comes from
sampling error, so a faithful transform passes and a biased one fails, on every run.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from conftest import run, session
from onnx import TensorProto, helper

import onnxfix
from onnxfix.errors import UsageError


def multinomial(classes: int, logits_type: int, samples: int) -> onnx.ModelProto:
    node = helper.make_node("Multinomial", ["logits"], ["y"], sample_size=samples,
                            dtype=TensorProto.INT64)
    graph = helper.make_graph(
        [node], "head", [helper.make_tensor_value_info("logits", logits_type, [1, classes])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [1, samples])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _samples(model: onnx.ModelProto, logits: np.ndarray, runs: int) -> np.ndarray:
    sess = session(model)
    picks = [sess.run(None, {"logits": logits, **onnxfix.noise_feeds(model, seed=k)})[0]
             for k in range(runs)]
    return np.concatenate(picks, axis=1).reshape(-1)


def test_float16_logits_over_a_50k_vocabulary_sample_uniformly_when_the_logits_are_equal():
    classes = 50257
    new, report = onnxfix.rewrite(multinomial(classes, TensorProto.FLOAT16, 100), check=False)
    assert report.nodes[0].replacement.dtype == "float"  # uniforms in float32, not float16
    picks = _samples(new, np.zeros((1, classes), np.float16), runs=5)
    # Before: 97.9% of the samples fell below id 5000 (float16 Gumbel noise ties).
    expected = 5000 / classes
    sd = math.sqrt(expected * (1 - expected) / picks.size)
    assert abs((picks < 5000).mean() - expected) < 5 * sd


def _binned_tv(picks: np.ndarray, probs: np.ndarray, bins: int = 20) -> tuple[float, float]:
    """TV distance over probability-sorted bins of equal mass, and its sampling-error bound.

    Bound: E[TV] <= 1/2 sum sqrt(q(1-q)/n) (Jensen), plus McDiarmid's margin at 1e-3.
    """
    order = np.argsort(-probs, kind="stable")
    before = np.cumsum(probs[order]) - probs[order]
    which = np.minimum((before * bins).astype(int), bins - 1)
    q = np.bincount(which, weights=probs[order], minlength=bins)
    seen = np.bincount(np.argsort(order)[picks], minlength=probs.size)
    got = np.bincount(which, weights=seen[order], minlength=bins) / picks.size
    n = picks.size
    bound = 0.5 * np.sqrt(q * (1 - q) / n).sum() + math.sqrt(math.log(1e3) / (2 * n))
    return 0.5 * float(np.abs(got - q).sum()), float(bound)


def test_float16_logits_over_8000_uneven_classes_sample_within_sampling_error():
    classes = 8000
    new, _ = onnxfix.rewrite(multinomial(classes, TensorProto.FLOAT16, 500), check=False)
    logits = (np.random.default_rng(1).standard_normal((1, classes)) * 0.5).astype(np.float16)
    probs = np.exp(logits[0].astype(np.float64))
    probs /= probs.sum()
    tv, bound = _binned_tv(_samples(new, logits, runs=8), probs)
    assert tv < bound  # before: binned TV 0.39 against a bound of 0.064


def test_float16_noise_for_a_multinomial_is_refused_naming_node_dtype_and_why():
    model = multinomial(1000, TensorProto.FLOAT, 4)
    model.graph.node[0].name = "sampler"
    with pytest.raises(UsageError) as e:
        onnxfix.rewrite(model, noise_dtype="float16", check=False)
    assert str(e.value) == (
        "Multinomial 'sampler': noise_dtype=\"float16\" cannot represent its noise "
        "faithfully: float16 has only 15,360 distinct values in [0, 1), so the Gumbel-max "
        "sample ties and favours low class ids; use noise_dtype=\"float32\" or \"same\"")


def test_float16_multinomial_refusal_is_a_usage_error_on_the_cli(tmp_path):
    from test_cli import invoke

    src = tmp_path / "m.onnx"
    onnx.save(multinomial(10, TensorProto.FLOAT, 2), src)
    result = invoke("rewrite", src, tmp_path / "o.onnx", "--noise-dtype", "float16")
    assert result.exit_code == 2
    assert "noise_dtype=\"float16\" cannot represent its noise faithfully" in result.stderr
    assert not (tmp_path / "o.onnx").exists()


def bernoulli(p_type: int, shape: list[int]) -> onnx.ModelProto:
    node = helper.make_node("Bernoulli", ["p"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("p", p_type, shape)],
                              [helper.make_tensor_value_info("y", p_type, shape)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], ir_version=8)


def test_float16_bernoulli_compares_in_float32_and_its_noise_is_float32():
    new, report = onnxfix.rewrite(bernoulli(TensorProto.FLOAT16, [4]), check=False)
    assert report.nodes[0].replacement.dtype == "float"
    assert [n.op_type for n in new.graph.node] == ["Cast", "Less", "Cast"]
    p = np.array([0.0, 0.25, 0.5, 1.0], np.float16)
    # 0.2500305 is above float16 0.25 but rounds to it in float16: a float32 compare keeps it
    u = np.array([0.0, 0.2500305, 0.4999, 0.99999994], np.float32)
    y = run(new, {"p": p, "noise_y": u})["y"]
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y, [0, 0, 1, 1])


def test_constant_mode_bernoulli_with_p_1_is_always_1():
    # Before: the frozen float16 uniforms rounded to 1.0 about 270 times per million, so a
    # Bernoulli with p = 1 drew 233 zeros in 1M.
    new, _ = onnxfix.rewrite(bernoulli(TensorProto.FLOAT16, [1000, 1000]), "constant",
                             check=False, seed=3)
    y = run(new, {"p": np.ones((1000, 1000), np.float16)})["y"]
    assert int((y == 0).sum()) == 0


def test_constant_mode_float16_uniform_draw_stays_below_high():
    node = helper.make_node("RandomUniform", [], ["u"], shape=[1000, 1000],
                            dtype=TensorProto.FLOAT16)
    graph = helper.make_graph([node], "g", [],
                              [helper.make_tensor_value_info("u", TensorProto.FLOAT16, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    new, _ = onnxfix.rewrite(model, "constant", check=False, seed=3)
    u = onnx.numpy_helper.to_array(new.graph.initializer[0])
    assert u.dtype == np.float16 and u.min() >= 0 and u.max() < 1
