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
    seen = np.bincount(picks, minlength=probs.size)
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
        "faithfully: float16 has only 15,360 distinct values in [0, 1), so the inverse-CDF "
        "sample cannot tell classes apart whose probabilities are below 0.00049; use "
        "noise_dtype=\"float32\" or \"same\"")


def test_float16_multinomial_refusal_is_a_usage_error_on_the_cli(tmp_path):
    from test_cli import invoke

    src = tmp_path / "m.onnx"
    onnx.save(multinomial(10, TensorProto.FLOAT, 2), src)
    result = invoke("rewrite", src, tmp_path / "o.onnx", "--noise-dtype", "float16")
    assert result.exit_code == 2
    assert "noise_dtype=\"float16\" cannot represent its noise faithfully" in result.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_float16_noise_for_a_bernoulli_is_refused_naming_node_dtype_and_why():
    # its p is data: float16 uniforms round every p to a grid of steps up to 2^-11
    with pytest.raises(UsageError) as e:
        onnxfix.rewrite(bernoulli(TensorProto.FLOAT, [3]), noise_dtype="float16", check=False)
    assert str(e.value) == (
        "Bernoulli 'y': noise_dtype=\"float16\" cannot represent its noise faithfully: "
        "float16 uniforms step by up to 0.00049 below 1, so every p is rounded to that grid "
        "(p above 0.99951 always draws 1); use noise_dtype=\"float32\" or \"same\"")


def bernoulli(p_type: int, shape: list[int]) -> onnx.ModelProto:
    node = helper.make_node("Bernoulli", ["p"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("p", p_type, shape)],
                              [helper.make_tensor_value_info("y", p_type, shape)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], ir_version=8)


def test_float16_bernoulli_compares_in_float32_and_its_noise_is_float32():
    new, report = onnxfix.rewrite(bernoulli(TensorProto.FLOAT16, [4]), check=False)
    assert report.nodes[0].replacement.dtype == "float"
    assert [n.op_type for n in new.graph.node] == ["Cast", "Constant", "Constant", "Clip",
                                                   "Sub", "Ceil", "Abs", "Cast"]
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
    out = helper.make_tensor_value_info("u", TensorProto.FLOAT16, [1000, 1000])
    graph = helper.make_graph([node], "g", [], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    new, _ = onnxfix.rewrite(model, "constant", check=False, seed=3)
    u = onnx.numpy_helper.to_array(new.graph.initializer[0])
    assert u.dtype == np.float16 and u.min() >= 0 and u.max() < 1


# -- the distribution test inside the parity check ---------------------------------------

def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def stochastic_head(with_multinomial: bool = True, with_bernoulli: bool = True
                    ) -> onnx.ModelProto:
    """Bernoulli(p), Multinomial(logits), Dropout(x, 0.3, True) and RandomNormalLike(x)."""
    consts = [
        helper.make_node("Constant", [], ["ratio"],
                         value=helper.make_tensor("r", TensorProto.FLOAT, [], [0.3])),
        helper.make_node("Constant", [], ["training"],
                         value=helper.make_tensor("t", TensorProto.BOOL, [], [True])),
    ]
    nodes = [*consts,
             helper.make_node("Dropout", ["x", "ratio", "training"], ["dropped"]),
             helper.make_node("RandomNormalLike", ["x"], ["eps"], mean=1.0, scale=2.0)]
    inputs = [_vi("x", TensorProto.FLOAT, ["batch", 6])]
    outputs = [_vi("dropped", TensorProto.FLOAT, ["batch", 6]),
               _vi("eps", TensorProto.FLOAT, ["batch", 6])]
    if with_bernoulli:
        nodes.insert(2, helper.make_node("Bernoulli", ["p"], ["coin"], name="coin_flip"))
        inputs.append(_vi("p", TensorProto.FLOAT, ["batch", 6]))
        outputs.append(_vi("coin", TensorProto.FLOAT, ["batch", 6]))
    if with_multinomial:
        nodes.append(helper.make_node("Multinomial", ["logits"], ["token"], sample_size=2))
        inputs.append(_vi("logits", TensorProto.FLOAT, ["batch", 300]))
        outputs.append(_vi("token", TensorProto.INT32, ["batch", 2]))
    graph = helper.make_graph(nodes, "head", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _tested(report) -> list[tuple[str, str, bool]]:
    return [(d.op_type, d.against, d.passed) for d in report.parity.distributions]


def test_the_check_tests_the_distribution_of_every_discrete_draw():
    lines = []
    _, report = onnxfix.rewrite(stochastic_head(), on_line=lines.append)
    assert report.parity.status == "passed"
    # the normal draw's transform is the identity on its noise (up to mean and scale): no test;
    # onnxruntime's Bernoulli is 1 with probability 1 - p: compared with the ideal only
    assert _tested(report) == [("Bernoulli", "ideal", True), ("Dropout", "ideal", True),
                               ("Dropout", "original", True), ("Multinomial", "ideal", True),
                               ("Multinomial", "ideal, class order", True),
                               ("Multinomial", "original", True)]
    assert all(d.statistic <= d.threshold and d.samples >= 8000
               for d in report.parity.distributions)
    assert any(line.startswith("NOTE | distribution | Bernoulli 'coin': not compared with "
                               "onnxruntime's own draws: they are 1 with probability 1 - p")
               for line in lines)


def test_narrowed_noise_is_tested_for_continuous_draws_too():
    model = stochastic_head(with_multinomial=False, with_bernoulli=False)
    _, report = onnxfix.rewrite(model, noise_dtype="float16")
    assert report.parity.status == "passed"
    assert _tested(report) == [("Dropout", "ideal", True), ("Dropout", "original", True),
                               ("RandomNormalLike", "ideal", True),
                               ("RandomNormalLike", "original", True)]


def test_constant_mode_checks_the_distribution_of_its_input_noise_twin():
    _, report = onnxfix.rewrite(stochastic_head(), "constant", dims={"batch": 2})
    assert report.parity.status == "passed"
    assert [d.op_type for d in report.parity.distributions] == [
        "Bernoulli", "Dropout", "Dropout", "Multinomial", "Multinomial", "Multinomial"]


def _inverted_bernoulli(self, b, noise, node, attrs, dt):
    """1 with probability 1 - p: the function body's reading, what onnxruntime does."""
    hit = b.op("Greater", [noise, node.input[0]], "greater")
    b.op("Cast", [hit], "cast", output=node.output[0], to=dt.draw)


def test_a_biased_bernoulli_fails_the_check_naming_statistic_threshold_and_node(
        monkeypatch, tmp_path):
    from test_cli import invoke

    from onnxfix.ops import BernoulliOp

    monkeypatch.setattr(BernoulliOp, "transform", _inverted_bernoulli)
    src = tmp_path / "head.onnx"
    onnx.save(stochastic_head(with_multinomial=False), src)
    result = invoke("rewrite", src, tmp_path / "out.onnx")
    assert result.exit_code == 1
    assert not (tmp_path / "out.onnx").exists()
    failed = [line for line in result.stdout.splitlines() + result.stderr.splitlines()
              if line.startswith("FAILED | distribution | Bernoulli 'coin' vs ideal | chi2 ")]
    assert failed, result.stdout + result.stderr
    stat, threshold = failed[0].split("| chi2 ")[1].split(" (df")[0].split(" > ")
    assert float(stat) > 100 * float(threshold)
    assert "parity check failed: distribution test failed: Bernoulli 'coin' vs ideal" in \
        result.stderr


def _squared_noise(transform):
    """Multinomial on u * u: an inverse CDF that favours low class ids (a biased transform)."""
    def biased(self, b, noise, node, attrs, dt):
        transform(self, b, b.op("Mul", [noise, noise], "squared"), node, attrs, dt)
    return biased


def test_a_biased_multinomial_transform_fails_the_distribution_test(monkeypatch):
    from onnxfix.errors import ParityError
    from onnxfix.ops import MultinomialOp

    monkeypatch.setattr(MultinomialOp, "transform", _squared_noise(MultinomialOp.transform))
    with pytest.raises(ParityError) as e:
        onnxfix.rewrite(multinomial(8000, TensorProto.FLOAT, 4))
    checks = e.value.report.parity.distributions
    # a positional bias: invisible in cells by probability rank, not in cells in class order
    assert [(d.against, d.passed) for d in checks] == [
        ("ideal", True), ("ideal, class order", False), ("original", True)]
    failed = checks[1]
    assert failed.statistic > 10 * failed.threshold


def test_the_50k_vocabulary_check_runs_the_distribution_test_in_one_run():
    _, report = onnxfix.rewrite(multinomial(50257, TensorProto.FLOAT16, 4))
    assert report.parity.status == "passed"
    assert _tested(report) == [("Multinomial", "ideal", True),
                               ("Multinomial", "ideal, class order", True),
                               ("Multinomial", "original", True)]


def test_chi2_threshold_is_at_least_the_exact_quantile():
    from onnxfix.stats import chi2_quantile

    # exact 1 - 1e-6 quantiles of chi-square (scipy.stats.chi2.isf(1e-6, df))
    exact = {1: 23.928127, 2: 27.631021, 3: 30.664850, 5: 35.888187, 20: 65.420681,
             100: 182.126777}
    for df, quantile in exact.items():
        assert quantile - 1e-4 <= chi2_quantile(df) <= quantile * 1.07


def test_float16_noise_for_a_dropout_whose_mask_is_an_output_passes_the_check():
    # The narrowed-noise check cuts the draws out of the original and feeds it the rewritten
    # model's draws: the mask is one of them (before: onnxruntime refused the cut model,
    # "Graph output (mask) does not exist", as a traceback).
    nodes = [helper.make_node("Constant", [], ["ratio"],
                              value=helper.make_tensor("r", TensorProto.FLOAT, [], [0.25])),
             helper.make_node("Constant", [], ["training"],
                              value=helper.make_tensor("t", TensorProto.BOOL, [], [True])),
             helper.make_node("Dropout", ["x", "ratio", "training"], ["y", "mask"])]
    graph = helper.make_graph(nodes, "g", [_vi("x", TensorProto.FLOAT, ["batch", 8])],
                              [_vi("y", TensorProto.FLOAT, ["batch", 8]),
                               _vi("mask", TensorProto.BOOL, ["batch", 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    _, report = onnxfix.rewrite(model, noise_dtype="float16")
    assert report.parity.status == "passed"
    compared = {c.name for c in report.parity.outputs}
    assert {"y", "mask", "y (narrowed noise)", "mask (narrowed noise)"} <= compared


def test_a_sample_of_probability_zero_fails_the_fit_whatever_its_count():
    from onnxfix.stats import bernoulli_fit, goodness_of_fit, merge_cells

    probs = np.array([0.5, 0.5, 0.0])
    cells = merge_cells(probs, 1000)
    assert cells.tolist() == [0, 1, 2]  # the impossible class keeps a cell of its own
    assert not goodness_of_fit(np.array([500, 499, 1]), probs).passed
    assert goodness_of_fit(np.array([510, 490, 0]), probs).passed
    assert not bernoulli_fit(np.array([1, 500]), np.array([0.0, 0.5]), trials=1000).passed
    assert not bernoulli_fit(np.array([999, 500]), np.array([1.0, 0.5]), trials=1000).passed


def test_noise_feeds_and_metadata_follow_the_float32_noise_of_a_float16_bernoulli():
    import json

    new, _ = onnxfix.rewrite(bernoulli(TensorProto.FLOAT16, [2, 3]), check=False)
    meta = next(json.loads(p.value) for p in new.metadata_props
                if p.key == "onnxfix.noise_inputs")
    assert [(e["name"], e["dtype"], e["family"]) for e in meta] == [("noise_y", "float",
                                                                      "uniform")]
    feeds = onnxfix.noise_feeds(new, seed=0)
    assert feeds["noise_y"].dtype == np.float32 and feeds["noise_y"].shape == (2, 3)
    y = run(new, {"p": np.full((2, 3), 0.5, np.float16), **feeds})["y"]
    np.testing.assert_array_equal(y, (feeds["noise_y"] < 0.5).astype(np.float16))


def test_the_shared_sampler_clamps_below_one_in_the_target_dtype():
    from onnxfix.ops.noise import UNIFORM, standard_noise

    rng = np.random.default_rng(0)
    for dtype in (np.float16, np.float32):
        u = standard_noise(rng, UNIFORM, [1_000_000], dtype)
        assert u.dtype == dtype and u.min() >= 0 and u.max() < 1
    # float16 rounding alone reaches 1.0 (about 270 per million): the clamp is what holds
    raw = np.random.default_rng(0).random(1_000_000).astype(np.float16)
    assert int((raw == 1).sum()) > 100
    scalar = standard_noise(rng, UNIFORM, [], np.float32)
    assert isinstance(scalar, np.ndarray) and scalar.shape == ()


def test_a_draw_in_an_if_branch_that_did_not_run_is_noted_not_tested():
    then = helper.make_graph([helper.make_node("Bernoulli", ["p"], ["coin"])], "then", [],
                             [_vi("coin", TensorProto.FLOAT, [3])])
    other = helper.make_graph([helper.make_node("Identity", ["p"], ["same"])], "else", [],
                              [_vi("same", TensorProto.FLOAT, [3])])
    nodes = [helper.make_node("Constant", [], ["cond"],
                              value=helper.make_tensor("c", TensorProto.BOOL, [], [False])),
             helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)]
    graph = helper.make_graph(nodes, "g", [_vi("p", TensorProto.FLOAT, [3])],
                              [_vi("y", TensorProto.FLOAT, [3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    lines = []
    _, report = onnxfix.rewrite(model, on_line=lines.append)
    assert report.parity.status == "passed" and report.parity.distributions == []
    assert "NOTE | distribution | Bernoulli 'coin': not tested, its If branch did not run on " \
           "the check's inputs" in lines


def test_the_cli_summary_counts_the_distribution_tests(tmp_path):
    from test_cli import invoke

    src = tmp_path / "head.onnx"
    onnx.save(stochastic_head(), src)
    result = invoke("rewrite", src, tmp_path / "out.onnx")
    assert result.exit_code == 0, result.stderr
    summary = [ln for ln in result.stdout.splitlines() if ln.startswith("Parity: ")]
    assert summary == ["Parity: PASSED (8/8 comparisons at batch=2; batch=3; "
                       "6/6 distribution tests)"]
